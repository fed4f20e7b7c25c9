"""Server bootstrap shared by every hevlayer service.

:class:`ServiceApp` runs one ``grpc.aio`` server (with health, reflection and
the common interceptors) and one small HTTP server (``/metrics``,
``/healthz``, ``/readyz`` and any routes the service adds), and shuts down
gracefully on SIGTERM/SIGINT: health turns NOT_SERVING, the server stops
accepting calls, streams are told to finish (:attr:`ServiceApp.stopping`),
in-flight calls get ``HEVLAYER_SHUTDOWN_GRACE_SECONDS`` to drain, then the
shutdown hooks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hevlayer.common import encoded, metrics, stream_status, tls
from hevlayer.common.config import ConfigError, setting, split_address
from hevlayer.common.interceptors import Admission, ServerInterceptor
from hevlayer.common.limits import MAX_MESSAGE_BYTES
from hevlayer.common.logging import configure_logging
from hevlayer.common.readiness import DependencyMonitor, Probe
from hevlayer.common.settings import ReadinessSettings
from hevlayer.common.telemetry import configure_tracing

stream_status.install()  # grpc/grpc#36066: keep a refused stream's status

log = logging.getLogger("hevlayer.server")

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class ServerSettings:
    """Settings every service shares."""

    grpc_address: str = setting(
        "HEVLAYER_GRPC_ADDRESS", "host:port the gRPC server listens on.", "127.0.0.1:50051"
    )
    http_address: str = setting(
        "HEVLAYER_HTTP_ADDRESS",
        "host:port of the HTTP server (/metrics, /healthz, /readyz; the gateway's REST routes). "
        "Empty disables it.",
        "127.0.0.1:9090",
    )
    log_level: str = setting("HEVLAYER_LOG_LEVEL", "Log level: debug, info, warning, error.", "info")
    log_format: str = setting("HEVLAYER_LOG_FORMAT", "Log format: json or text.", "json")
    traces_exporter: str = setting(
        "HEVLAYER_TRACES_EXPORTER",
        "Where spans go: none, console, otlp (standard OTEL_EXPORTER_OTLP_* variables) "
        "or file:PATH (JSON lines).",
        "none",
    )
    grpc_max_message_bytes: int = setting(
        "HEVLAYER_GRPC_MAX_MESSAGE_BYTES",
        "Largest gRPC message the server receives or sends; a larger one fails with "
        "RESOURCE_EXHAUSTED before any handler sees it.",
        MAX_MESSAGE_BYTES,
    )
    grpc_max_concurrent_rpcs: int = setting(
        "HEVLAYER_GRPC_MAX_CONCURRENT_RPCS",
        "Most gRPC calls handled at once (open streams count; health and reflection do not); "
        "one more is answered RESOURCE_EXHAUSTED with a RetryInfo delay. 0: no limit.",
        1024,
    )
    http_max_body_bytes: int = setting(
        "HEVLAYER_HTTP_MAX_BODY_BYTES",
        "Largest HTTP request body accepted (REST); larger ones get 413.",
        64 * 1024 * 1024,
    )
    shutdown_grace_seconds: float = setting(
        "HEVLAYER_SHUTDOWN_GRACE_SECONDS",
        "Time in-flight calls get to finish after SIGTERM.",
        10.0,
    )
    event_loop: str = setting(
        "HEVLAYER_EVENT_LOOP",
        "The asyncio event loop: uvloop (libuv; less CPU per PostgreSQL round trip and gRPC "
        "call) or asyncio (the standard library's).",
        "uvloop",
    )
    tls_cert: str = setting(
        "HEVLAYER_TLS_CERT",
        "PEM file of the gRPC server's certificate chain; with HEVLAYER_TLS_KEY the gRPC server speaks TLS "
        "only. Empty: plaintext. The HTTP server (/metrics, health, REST) stays plaintext.",
        "",
    )
    tls_key: str = setting("HEVLAYER_TLS_KEY", "PEM file of the private key of HEVLAYER_TLS_CERT.", "")
    tls_client_ca: str = setting(
        "HEVLAYER_TLS_CLIENT_CA",
        "PEM file of the CA(s) whose client certificates the gRPC server accepts; set: mutual TLS, a client "
        "without such a certificate is refused in the handshake. Needs HEVLAYER_TLS_CERT.",
        "",
    )
    tls_allowed_clients: tuple[str, ...] = setting(
        "HEVLAYER_TLS_ALLOWED_CLIENTS",
        "With HEVLAYER_TLS_CLIENT_CA: the client identities accepted (a certificate's subject CN or a "
        "SAN), comma-separated; other clients get PERMISSION_DENIED (health checks excepted). Unset: any "
        "certificate of the CA, except on the claimer, where it defaults to gateway (set it empty there to "
        "accept any).",
        (),
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        split_address(self.grpc_address, "HEVLAYER_GRPC_ADDRESS")
        if self.http_address:
            split_address(self.http_address, "HEVLAYER_HTTP_ADDRESS")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"HEVLAYER_LOG_FORMAT: expected json or text, got {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"HEVLAYER_LOG_LEVEL: unknown level {self.log_level!r}")
        if not 4096 <= self.grpc_max_message_bytes <= 2**31 - 1:
            raise ConfigError("HEVLAYER_GRPC_MAX_MESSAGE_BYTES: must be between 4096 and 2147483647")
        if self.grpc_max_concurrent_rpcs < 0:
            raise ConfigError("HEVLAYER_GRPC_MAX_CONCURRENT_RPCS: must be >= 0 (0: no limit)")
        if self.http_max_body_bytes < 1024:
            raise ConfigError("HEVLAYER_HTTP_MAX_BODY_BYTES: must be >= 1024")
        if self.shutdown_grace_seconds < 0:
            raise ConfigError("HEVLAYER_SHUTDOWN_GRACE_SECONDS: must be >= 0")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"HEVLAYER_EVENT_LOOP: expected uvloop or asyncio, got {self.event_loop!r}")
        self._validate_tls()

    def _validate_tls(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            missing, given = ("HEVLAYER_TLS_KEY", "HEVLAYER_TLS_CERT")
            if self.tls_key:
                missing, given = given, missing
            raise ConfigError(f"{missing}: required with {given}")
        if self.tls_cert:
            tls.check_key_pair(self.tls_cert, self.tls_key, "HEVLAYER_TLS_CERT", "HEVLAYER_TLS_KEY")
        if self.tls_client_ca:
            if not self.tls_cert:
                raise ConfigError("HEVLAYER_TLS_CLIENT_CA: needs HEVLAYER_TLS_CERT and HEVLAYER_TLS_KEY")
            tls.check_ca_file(self.tls_client_ca, "HEVLAYER_TLS_CLIENT_CA")
        if self.tls_allowed_clients and not self.tls_client_ca:
            raise ConfigError(
                "HEVLAYER_TLS_ALLOWED_CLIENTS: needs HEVLAYER_TLS_CLIENT_CA (client identities come from "
                "certificates verified against it)"
            )


class ServiceApp:
    """One service process: gRPC server, HTTP server, lifecycle hooks."""

    def __init__(
        self,
        name: str,
        settings: ServerSettings,
        *,
        serving_on_start: bool = True,
        interceptors: Sequence[aio.ServerInterceptor] = (),
    ) -> None:
        self.name = name
        self._serving_on_start = serving_on_start
        self.settings = settings
        self.stopping = asyncio.Event()
        self.health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._routes: list[web.RouteDef] = []
        self._middlewares: list[Any] = []
        self._readiness: list[Callable[[], Awaitable[bool]]] = []
        self._readiness_reports: list[Callable[[], dict[str, Any]]] = []
        self._monitors: list[DependencyMonitor] = []
        self.grpc_port = 0
        self.http_port = 0
        self._interceptor = ServerInterceptor(settings.grpc_max_concurrent_rpcs)
        # The common interceptor first: calls a later one refuses (peer identity, authentication)
        # still get their span, metrics and access log line.
        chain: list[aio.ServerInterceptor] = [self._interceptor]
        if settings.tls_allowed_clients:
            chain.append(tls.PeerIdentityInterceptor(settings.tls_allowed_clients, name))
        chain.extend(interceptors)
        self.server = aio.server(
            interceptors=chain,
            options=[
                ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
                ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Clients (hevlayer.client) ping every 30 s even when
                # idle; accept that instead of answering GOAWAY too_many_pings.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )

    def add_service(self, full_name: str, register: Callable[[Any, aio.Server], None], servicer: Any) -> None:
        """Register ``servicer`` (``register`` is the generated
        ``add_XServicer_to_server``) under ``full_name`` for health and reflection."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    def add_servicer(self, service: ServiceDescriptor, servicer: object) -> None:
        """Register ``servicer`` for every method of ``service``; its methods may answer
        with :class:`~hevlayer.common.encoded.Encoded` wire bytes instead of messages."""
        encoded.add_servicer(self.server, service, servicer)
        self._service_names.append(service.full_name)

    def add_admission(self, admission: Admission) -> None:
        """Check every gRPC call (health and reflection excepted) with ``admission`` before
        its handler runs, after the concurrency limit (per-token rate limits, for instance)."""
        self._interceptor.admissions.append(admission)

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        """Serve extra HTTP routes on the HTTP address."""
        self._routes.extend(routes)

    def add_middleware(self, middleware: Any) -> None:
        """Run an aiohttp middleware around every HTTP route (the gateway's authentication)."""
        self._middlewares.append(middleware)

    def on_startup(self, hook: Hook) -> None:
        """Run ``hook`` before the servers accept calls."""
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run ``hook`` after the servers have drained (in reverse order)."""
        self._shutdown.append(hook)

    def add_readiness_check(
        self, check: Callable[[], Awaitable[bool]], report: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        """``/readyz`` answers 503 while any check returns False; ``report`` adds to its body
        (e.g. :meth:`hevlayer.common.readiness.DependencyMonitor.report`: what is down)."""
        self._readiness.append(check)
        if report is not None:
            self._readiness_reports.append(report)

    def watch_dependencies(
        self, probes: Mapping[str, Probe], settings: ReadinessSettings
    ) -> DependencyMonitor:
        """Readiness from ``probes`` (what this service depends on): a
        :class:`~hevlayer.common.readiness.DependencyMonitor` that turns gRPC health SERVING or
        NOT_SERVING with its results, adds them to ``/readyz``, starts probing once the startup
        hooks have run and stops before the shutdown hooks run (they may close what it probes).
        The monitor is returned for :meth:`~DependencyMonitor.probe_once` (SERVING at once, once
        the service has connected)."""
        monitor = DependencyMonitor(self.name, probes, settings, self.set_serving)
        self._monitors.append(monitor)
        self.add_readiness_check(monitor.check, monitor.report)
        return monitor

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self.name})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        ready = all([await check() for check in self._readiness])
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        for report in self._readiness_reports:
            body.update(report())
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def start(self) -> None:
        """Start hooks, then the gRPC and HTTP servers; mark every service SERVING."""
        names = [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        await self.set_serving(self._serving_on_start)
        for hook in self._startup:
            await hook()
        for monitor in self._monitors:
            monitor.start()
        host, port = split_address(self.settings.grpc_address, "HEVLAYER_GRPC_ADDRESS")
        if self.settings.tls_cert:
            credentials = tls.server_credentials(
                self.settings.tls_cert, self.settings.tls_key, self.settings.tls_client_ca
            )
            self.grpc_port = self.server.add_secure_port(f"{host}:{port}", credentials)
        else:
            self.grpc_port = self.server.add_insecure_port(f"{host}:{port}")
        if self.grpc_port == 0:
            raise ConfigError(f"HEVLAYER_GRPC_ADDRESS: cannot listen on {host}:{port}")
        await self.server.start()
        if self.settings.http_address:
            await self._start_http()
        log.info(
            "%s serving",
            self.name,
            extra={
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
                "services": self._service_names,
                "tls": "mutual"
                if self.settings.tls_client_ca
                else ("on" if self.settings.tls_cert else "off"),
            },
        )

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING (or NOT_SERVING) for the server and every service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def _start_http(self) -> None:
        app = web.Application(
            client_max_size=self.settings.http_max_body_bytes, middlewares=self._middlewares
        )
        app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                *self._routes,
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_address(self.settings.http_address, "HEVLAYER_HTTP_ADDRESS")
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING, stop accepting, drain, run hooks."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        log.info("%s stopping", self.name, extra={"grace_seconds": self.settings.shutdown_grace_seconds})
        await self.server.stop(self.settings.shutdown_grace_seconds)
        runner = getattr(self, "_runner", None)
        if runner is not None:
            await runner.cleanup()
        for monitor in self._monitors:
            await monitor.stop()
        for hook in reversed(self._shutdown):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        log.info("%s stopped", self.name)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled.set)
        try:
            await self.start()
            # What exists now (modules, descriptors, pools, servers) lives as long as the
            # process: take it out of the collector's generations, so that the collections
            # request garbage triggers do not traverse it again and again.
            gc.collect()
            gc.freeze()
            await signalled.wait()
        finally:
            await self.stop()


def run_service(
    name: str,
    settings: ServerSettings,
    build: Callable[[ServiceApp], Awaitable[None]],
    *,
    serving_on_start: bool = True,
    interceptors: Sequence[aio.ServerInterceptor] = (),
) -> None:
    """Entry point helper: configure logs and traces, build the app, run it."""
    configure_logging(name, settings.log_level, settings.log_format)
    configure_tracing(name, settings.traces_exporter)

    async def main() -> None:
        app = ServiceApp(name, settings, serving_on_start=serving_on_start, interceptors=interceptors)
        await build(app)
        await app.run()

    with contextlib.suppress(KeyboardInterrupt):
        if settings.event_loop == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
