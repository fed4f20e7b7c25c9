"""Entry point of the embedder (``hevlayer-embedder``).

One process serves EmbeddingService (query embeddings for the gateway) from
the Triton model and, when ``EMBEDDER_WORKER_PIPELINES`` (or the operator's
``HEVLAYER_PIPELINE_ID``) names pipelines, runs the worker loop
(:mod:`hevlayer.embedder.worker`) that embeds their pending documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.client import TLS, Client
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.config import ConfigError, load_or_exit
from hevlayer.common.errors import ServiceError, Unavailable
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.common.settings import ReadinessSettings
from hevlayer.embedder.embedding import Embedder
from hevlayer.embedder.grpc_embedding import EmbeddingServicer
from hevlayer.embedder.settings import GRPC_DEFAULTS, EmbedderSettings, WorkerSettings
from hevlayer.embedder.triton_client import RetryPolicy, TritonEmbeddingClient
from hevlayer.embedder.worker import Worker

log = logging.getLogger("hevlayer.embedder")


def triton_tls(settings: EmbedderSettings, client_tls: ClientTLSSettings) -> TLS | None:
    """TLS of the channel to Triton: the client TLS settings when EMBEDDER_TRITON_TLS is on."""
    if not settings.triton_tls:
        return None
    tls = client_tls.tls()
    if tls is None:
        raise ConfigError("EMBEDDER_TRITON_TLS: needs HEVLAYER_CLIENT_TLS_CA (or HEVLAYER_CLIENT_TLS_CERT)")
    return tls


def make_client(
    settings: EmbedderSettings, *, reserved_slots: int = 0, client_tls: ClientTLSSettings | None = None
) -> TritonEmbeddingClient:
    """The Triton client the settings describe (``reserved_slots`` more requests in flight:
    the worker's flushes use EMBEDDER_MAX_IN_FLIGHT, query embeddings never wait for them
    to get a slot); TLS with ``client_tls`` when EMBEDDER_TRITON_TLS is on."""
    tls = triton_tls(settings, client_tls or ClientTLSSettings())
    return TritonEmbeddingClient(
        settings.triton_url,
        settings.model_name,
        model_version=settings.model_version,
        dimension=settings.dimension,
        max_batch_size=settings.max_batch_size,
        input_name=settings.input_name,
        output_name=settings.output_name,
        max_in_flight=settings.max_in_flight + reserved_slots,
        timeout=settings.triton_timeout_seconds,
        retry=RetryPolicy(
            attempts=settings.retry_attempts,
            initial_backoff=settings.retry_initial_backoff_seconds,
            max_backoff=settings.retry_max_backoff_seconds,
        ),
        credentials=tls.credentials() if tls is not None else None,
    )


async def build(
    app: ServiceApp,
    settings: EmbedderSettings,
    worker_settings: WorkerSettings | None = None,
    client_tls: ClientTLSSettings | None = None,
    readiness: ReadinessSettings | None = None,
) -> None:
    """Wire the Triton client, EmbeddingService and the worker loop into ``app``.

    The server starts NOT_SERVING and turns SERVING once the Triton model has
    been described (retried with backoff until Triton answers); until then,
    and whenever Triton is down, calls fail UNAVAILABLE with RetryInfo. The
    worker starts then too (its batch size may come from the model), and on
    SIGTERM it drains (:meth:`Worker.drain`) while the server stops. ``client_tls``: TLS of
    the channels to the gateway and (with EMBEDDER_TRITON_TLS) to Triton.
    """
    worker_settings = worker_settings or WorkerSettings()
    client_tls = client_tls or ClientTLSSettings()
    client = make_client(settings, reserved_slots=1 if worker_settings.enabled else 0, client_tls=client_tls)
    embedder = Embedder(
        client,
        max_request_texts=settings.max_request_texts,
        normalized=settings.normalized,
        query_prefix=settings.query_prefix,
        document_prefix=settings.document_prefix,
    )
    app.add_service(
        embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
        EmbeddingServicer(embedder, app.stopping, window=settings.stream_window),
    )

    async def connect() -> None:
        delay = settings.retry_initial_backoff_seconds
        while not app.stopping.is_set():
            try:
                info = await client.model_info()
            except ServiceError as exc:
                log.warning("Triton model not available yet", extra={"error": exc.message})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(app.stopping.wait(), timeout=max(delay, 0.05))
                delay = min(max(delay, 0.05) * 2, settings.retry_max_backoff_seconds)
                continue
            await monitor.probe_once()  # SERVING now, not at the next round
            log.info("Triton model ready; serving", extra={"model": info.name, "dimension": info.dimension})
            if worker_settings.enabled:
                start_worker(info.batch_size)
            return

    tasks: list[asyncio.Task[None]] = []
    drained: list[asyncio.Task[None]] = []

    def start_worker(request_size: int) -> None:
        batch_size = min(worker_settings.batch_size or request_size, settings.max_request_texts)
        worker = Worker(
            worker_settings,
            Client.connect(worker_settings.gateway, client_tls.options()),
            embedder.embed_documents,
            batch_size=batch_size,
            max_in_flight=settings.max_in_flight,
        )
        worker.start()
        drained.append(asyncio.create_task(drain_on_stop(worker), name="worker-drain"))

    async def drain_on_stop(worker: Worker) -> None:
        await app.stopping.wait()
        try:
            await worker.drain()
        finally:
            await worker.gateway.close()

    async def triton() -> None:
        if client.info is None:
            raise Unavailable("the Triton model has not been described yet")
        if not await client.ready():
            raise Unavailable(f"Triton does not report model {client.model_name!r} ready")

    # After the model is described: NOT_SERVING / 503 while Triton does not answer, SERVING once it does.
    monitor = app.watch_dependencies({"triton": triton}, readiness or ReadinessSettings())

    async def startup() -> None:
        tasks.append(asyncio.create_task(connect(), name="triton-connect"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        for task in drained:
            with contextlib.suppress(Exception):
                await task
        await client.close()

    app.on_startup(startup)
    app.on_shutdown(shutdown)


def main() -> None:
    """Run the embedder until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = load_or_exit(EmbedderSettings)
    worker_settings = load_or_exit(WorkerSettings)
    client_tls = load_or_exit(ClientTLSSettings)
    readiness = load_or_exit(ReadinessSettings)
    try:
        triton_tls(settings, client_tls)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def wire(app: ServiceApp) -> None:
        await build(app, settings, worker_settings, client_tls, readiness)

    run_service("embedder", server, wire, serving_on_start=False)


if __name__ == "__main__":
    main()
