"""Entry point of the extract worker (``hevlayer-extractor``).

One process works the ``extract`` stage of the pipelines ``EXTRACTOR_PIPELINES`` names (every
pipeline by default): per pipeline, ``EXTRACTOR_CONCURRENCY`` extract loops
(:class:`hevlayer.ingest.extract_loop.ExtractLoop`) claim document ids through the gateway, read
each object from its source (a local path, ``s3://bucket/key``, an ``http(s)://`` URL), convert
it with the producer of its kind (or take the chunks from the Artifact Cache) and stage the chunks
under their leases. Scale it out by running more processes: the leases keep them apart, and a
killed process's documents return to ``extract`` when its leases expire.

The process serves gRPC health (SERVING while the gateway answers), ``/healthz``, ``/readyz`` and
``/metrics`` (:mod:`hevlayer.extractor.metrics`). On SIGTERM it stops claiming, gives claimed
documents ``EXTRACTOR_DRAIN_SECONDS`` to be staged and hands the rest back to ``extract``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from contextlib import AsyncExitStack

from hevlayer.client import Client
from hevlayer.client.errors import NotFound, ServiceError
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.config import load_or_exit
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.common.settings import ReadinessSettings
from hevlayer.extractor.metrics import MetricsObserver, cache_event
from hevlayer.extractor.settings import GRPC_DEFAULTS, ExtractorS3Settings, ExtractorSettings
from hevlayer.ingest.artifacts import ArtifactCache, open_artifact_cache
from hevlayer.ingest.extract_loop import ExtractLoop, LoopOptions
from hevlayer.ingest.sources import ObjectSource, open_sources

log = logging.getLogger("hevlayer.extractor")


class _Pipeline:
    """The extract loops of one pipeline."""

    def __init__(self, loop: ExtractLoop, count: int, restart_seconds: float) -> None:
        self.loop = loop
        self.stop = asyncio.Event()
        self.restart_seconds = restart_seconds
        self.tasks = [
            asyncio.create_task(self._guarded(n), name=f"extract-{loop.pipeline_id}-{n}")
            for n in range(count)
        ]

    async def _guarded(self, number: int) -> None:
        """One worker; an error it stops on is logged and the worker starts again after a pause (the
        documents it held return to extract when their leases expire). A deleted pipeline ends it."""
        while not self.stop.is_set():
            try:
                await self.loop.worker(number, self.stop)
            except NotFound as exc:
                log.info("pipeline gone", extra={"pipeline": self.loop.pipeline_id, "error": exc.message})
                return
            except Exception as exc:
                log.warning(
                    "extract worker stopped on an error; restarting",
                    extra={"pipeline": self.loop.pipeline_id, "worker": number, "error": repr(exc)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=self.restart_seconds)

    @property
    def ended(self) -> bool:
        return all(task.done() for task in self.tasks)


class Extractor:
    """Keeps extract loops running for the configured pipelines."""

    def __init__(
        self,
        settings: ExtractorSettings,
        gateway: Client,
        sources: ObjectSource,
        cache: ArtifactCache | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.sources = sources
        self.cache = cache
        self.observer = MetricsObserver()
        self.prefix = settings.worker_id or f"extractor-{socket.gethostname()[:64]}-{os.getpid()}"
        self.pipelines: dict[str, _Pipeline] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def options(self, pipeline_id: str) -> LoopOptions:
        return LoopOptions(
            claim_limit=self.settings.claim_limit,
            lease_seconds=self.settings.lease_seconds,
            poll_seconds=self.settings.poll_seconds,
            budget=self.settings.budget(),
            max_bytes=self.settings.max_object_bytes,
            interrupted_reason="the extract worker stopped",
            worker_prefix=f"{self.prefix}-{pipeline_id}",
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="extractor-supervise")

    async def wanted(self) -> list[str]:
        """The pipelines to work now."""
        if not self.settings.all_pipelines:
            return list(self.settings.pipeline_ids)
        return [p.id for p in await self.gateway.pipelines.list() if self.settings.works(p.id)]

    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                wanted = set(await self.wanted())
            except ServiceError as exc:
                log.warning("cannot list pipelines", extra={"error": exc.message})
                wanted = set(self.pipelines)
            for pipeline_id, running in list(self.pipelines.items()):
                if running.ended:
                    del self.pipelines[pipeline_id]
                elif pipeline_id not in wanted:
                    running.stop.set()
            for pipeline_id in sorted(wanted - set(self.pipelines)):
                loop = ExtractLoop(
                    self.gateway,
                    pipeline_id,
                    self.sources,
                    self.options(pipeline_id),
                    cache=self.cache,
                    observer=self.observer,
                )
                self.pipelines[pipeline_id] = _Pipeline(
                    loop, self.settings.concurrency, self.settings.refresh_seconds
                )
                log.info("working pipeline", extra={"pipeline": pipeline_id})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.refresh_seconds)

    async def drain(self, seconds: float) -> None:
        """Stop claiming; let claimed documents be staged for ``seconds``; hand the rest back."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for running in self.pipelines.values():
            running.stop.set()
        tasks = [task for running in self.pipelines.values() for task in running.tasks]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()  # the loop hands the task's documents back to extract
        await asyncio.gather(*tasks, return_exceptions=True)


async def build(
    app: ServiceApp,
    settings: ExtractorSettings,
    s3: ExtractorS3Settings | None = None,
    client_tls: ClientTLSSettings | None = None,
    readiness: ReadinessSettings | None = None,
) -> None:
    """Wire the gateway client, the sources, the Artifact Cache and the extract loops into ``app``."""
    s3 = s3 or ExtractorS3Settings()
    client_tls = client_tls or ClientTLSSettings()
    stack = AsyncExitStack()
    gateway = Client.connect(settings.gateway, client_tls.options())
    sources = await open_sources(
        stack, s3=s3.connection(), http_timeout_seconds=settings.http_timeout_seconds
    )
    cache = None
    if settings.artifact_cache:
        cache = await open_artifact_cache(
            settings.artifact_cache, settings.artifact_cache_bytes, s3.connection(), stack, cache_event
        )
    extractor = Extractor(settings, gateway, sources, cache)

    async def gateway_probe() -> None:
        await gateway.pipelines.list(timeout=5)

    app.watch_dependencies({"gateway": gateway_probe}, readiness or ReadinessSettings())

    async def startup() -> None:
        extractor.start()

    async def shutdown() -> None:
        try:
            await extractor.drain(settings.drain_seconds)
        finally:
            await stack.aclose()
            await gateway.close()

    app.on_startup(startup)
    app.on_shutdown(shutdown)


def main() -> None:
    """Run the extract worker until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = load_or_exit(ExtractorSettings)
    s3 = load_or_exit(ExtractorS3Settings)
    client_tls = load_or_exit(ClientTLSSettings)
    readiness = load_or_exit(ReadinessSettings)

    async def wire(app: ServiceApp) -> None:
        await build(app, settings, s3, client_tls, readiness)

    run_service("extractor", server, wire, serving_on_start=False)


if __name__ == "__main__":
    main()
