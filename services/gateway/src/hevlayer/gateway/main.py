"""Entry point of the gateway (``hevlayer-gateway``)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import grpc
from grpc import aio

from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.claimer.v1 import document_state_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client import EmbeddingClient
from hevlayer.client.channel import open_channel
from hevlayer.client.naming import pipeline_prefix
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.auth import INTERNAL_TOKEN_KEY
from hevlayer.common.config import ConfigError, load_or_exit
from hevlayer.common.errors import FailedPrecondition, NotFound, ServiceError
from hevlayer.common.guard import GuardInterceptor
from hevlayer.common.readiness import Probe
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.common.settings import ReadinessSettings
from hevlayer.gateway.auth import GatewayGuard, TokenCache, rest_middleware
from hevlayer.gateway.cache import open_cache
from hevlayer.gateway.chunkstore import ChunkStore, SegmentCodec, open_s3_client
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.forwarding import Forwarder
from hevlayer.gateway.grpc_index import IndexServicer, WriteLimits, index_handler
from hevlayer.gateway.grpc_staging import StagingServicer
from hevlayer.gateway.indexing import Searcher, VectorWriter, sink_kind
from hevlayer.gateway.ratelimit import RateLimiter, parse_rates
from hevlayer.gateway.readiness import CLAIMER, S3, SINK, SinkProbe, claimer_probe, s3_probe
from hevlayer.gateway.rest import RestApi, error_response
from hevlayer.gateway.settings import (
    GRPC_DEFAULTS,
    CacheSettings,
    GatewaySettings,
    S3Settings,
    StagingSettings,
)
from hevlayer.gateway.sinks import SinkKind, SinkPool, SinkSettings
from hevlayer.gateway.staging import ChunkReader, Stager

log = logging.getLogger("hevlayer.gateway")

PIPELINE_SERVICE = pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"]
LEASE_SERVICE = lease_pb2.DESCRIPTOR.services_by_name["LeaseService"]
STAGING_SERVICE = staging_pb2.DESCRIPTOR.services_by_name["StagingService"]
INDEX_SERVICE = index_pb2.DESCRIPTOR.services_by_name["IndexService"]
DOCUMENT_STATE_SERVICE = document_state_pb2.DESCRIPTOR.services_by_name["DocumentStateService"]
TOKEN_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["TokenService"]

# Public services whose state the claimer owns; the gateway relays them
# (PipelineService.DeletePipeline also drops the pipeline's namespace and its chunk packs).
FORWARDED_SERVICES = (PIPELINE_SERVICE, LEASE_SERVICE, TOKEN_SERVICE)


class Settings:
    """Every settings group of the gateway, loaded from the environment."""

    def __init__(
        self,
        gateway: GatewaySettings,
        s3: S3Settings,
        staging: StagingSettings,
        cache: CacheSettings,
        sinks: SinkSettings,
        client_tls: ClientTLSSettings | None = None,
    ) -> None:
        self.gateway = gateway
        self.s3 = s3
        self.staging = staging
        self.cache = cache
        self.sinks = sinks
        self.client_tls = client_tls or ClientTLSSettings()
        """TLS of the channels to the claimer and the embedder."""

    readiness: ReadinessSettings = ReadinessSettings()
    """Probes of the claimer, S3 and the default sink (``main`` loads them from the environment)."""

    @classmethod
    def load_or_exit(cls) -> Settings:
        """Load every group; print the error and exit 2 on a bad variable."""
        return cls(
            load_or_exit(GatewaySettings),
            load_or_exit(S3Settings),
            load_or_exit(StagingSettings),
            load_or_exit(CacheSettings),
            load_or_exit(SinkSettings),
            load_or_exit(ClientTLSSettings),
        )


def _pipeline_handler(
    forwarder: Forwarder, claimer: ClaimerClient, store: ChunkStore, writer: VectorWriter
) -> grpc.GenericRpcHandler:
    """PipelineService: every method forwarded; DeletePipeline also drops the pipeline's
    namespace in its sink and deletes its chunk packs.

    Order of DeletePipeline (docs/operations.md, "Isolation of pipelines"): the namespace is
    dropped first, while the pipeline still exists and so still owns it (no other pipeline can
    be created on it meanwhile). A failed drop fails the call with UNAVAILABLE before anything
    is deleted; a failure after it leaves the pipeline with an empty namespace, and the same
    call, retried, finishes the deletion. Once the claimer has deleted the pipeline, the
    namespace is dropped once more (unless a new pipeline already owns it), for the rows of a
    write that was in flight across the first drop; the chunk packs go last (the orphan sweep
    would also find them)."""

    async def sharing(info: PipelineInfo) -> list[str]:
        """Ids of the other pipelines of the same sink whose namespace is ``info``'s (only
        pipelines created before namespaces were unique can share one)."""
        kind = writer.sinks.resolve(sink_kind(info))
        return [
            other.id
            for other in map(PipelineInfo.from_proto, await claimer.list_pipelines())
            if other.id != info.id
            and other.target_namespace == info.target_namespace
            and writer.sinks.resolve(sink_kind(other)) is kind
        ]

    async def drop_namespace(info: PipelineInfo) -> bool:
        """Drop the pipeline's namespace; False if this gateway has no settings for its sink
        (then no write through it ever reached that sink: there is nothing of it to drop)."""
        try:
            sink = await writer.sink_for(info)
        except ConfigError as error:
            log.warning("namespace %r of pipeline %s not dropped: %s", info.target_namespace, info.id, error)
            return False
        try:
            await sink.drop_namespace(info.target_namespace)
        except ServiceError as error:
            raise writer.sink_failure(info, "drop", error) from None
        return True

    async def delete_pipeline(
        request: pipeline_pb2.DeletePipelineRequest, context: aio.ServicerContext
    ) -> pipeline_pb2.DeletePipelineResponse:
        info: PipelineInfo | None
        try:
            info = await claimer.pipeline(request.pipeline_id, fresh=True)
        except NotFound:
            info = None
        dropped = False
        if info is not None:
            others = await sharing(info)
            if others:
                log.warning(
                    "kept namespace %r of pipeline %s: pipelines %s use it too",
                    info.target_namespace,
                    info.id,
                    ", ".join(others),
                )
            elif await drop_namespace(info):
                dropped = True
                log.info("dropped namespace %r of pipeline %s", info.target_namespace, info.id)
        response = await claimer.delete_pipeline(request)
        claimer.forget_pipeline(request.pipeline_id)
        if info is not None:
            try:
                if dropped and not await sharing(info):
                    await drop_namespace(info)
            except ServiceError as error:
                log.warning(
                    "could not drop namespace %r of deleted pipeline %s again: %s",
                    info.target_namespace,
                    info.id,
                    error.message,
                )
            try:
                removed = await store.delete_prefix(pipeline_prefix(info.id, info.incarnation))
                log.info("deleted %d chunk packs of pipeline %s", removed, info.id)
            except ServiceError as error:
                log.warning("could not delete the chunk packs of pipeline %s: %s", info.id, error.message)
        return response

    handlers: dict[str, grpc.RpcMethodHandler] = {
        method.name: forwarder.handler(
            f"/{PIPELINE_SERVICE.full_name}/{method.name}", method.client_streaming, method.server_streaming
        )
        for method in PIPELINE_SERVICE.methods
    }
    handlers["DeletePipeline"] = grpc.unary_unary_rpc_method_handler(
        delete_pipeline,
        request_deserializer=pipeline_pb2.DeletePipelineRequest.FromString,
        response_serializer=pipeline_pb2.DeletePipelineResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(PIPELINE_SERVICE.full_name, handlers)


def _register_generic(app: ServiceApp, full_name: str, handler: grpc.GenericRpcHandler) -> None:
    def register(_servicer: Any, server: aio.Server, handler: Any = handler) -> None:
        server.add_generic_rpc_handlers((handler,))

    app.add_service(full_name, register, None)


async def _own_milvus_lite(sinks: SinkPool) -> None:
    """Open the default Milvus Lite sink at start-up: its file has one owner, so a second gateway
    (a replica) on the same file exits here with the reason instead of serving and failing every
    write (replicas share the Milvus server or Turbopuffer; docs/reliability.md, Replicas)."""
    try:
        await sinks.get(SinkKind.MILVUS_LITE)
    except FailedPrecondition as exc:
        log.error("gateway cannot start: %s", exc.message)
        raise SystemExit(f"gateway cannot start: {exc.message}") from None
    except (ServiceError, OSError) as exc:
        # Any other failure to open is the readiness probe's to report (and retry).
        log.warning("the default sink did not open at start-up: %s", exc)


async def build(app: ServiceApp, settings: Settings, guard: GatewayGuard | None = None) -> None:
    """Wire the gateway: staging, chunk reads, vector writes and queries over gRPC
    and REST; pipeline, lease and token calls forwarded to the claimer; with ``guard``
    (GATEWAY_AUTH=on) every call is authenticated and authorized."""
    stack = AsyncExitStack()
    internal = (
        [(INTERNAL_TOKEN_KEY, settings.gateway.internal_token)] if settings.gateway.internal_token else []
    )
    channel = open_channel(
        settings.gateway.claimer_address, settings.client_tls.options(api_token=False), metadata=internal
    )
    claimer = ClaimerClient(channel, timeout=settings.gateway.forward_timeout_seconds)
    s3_client = await open_s3_client(settings.s3, stack)
    store = ChunkStore(s3_client, settings.s3.bucket)
    cache = open_cache(settings.cache)
    stager = Stager(claimer, store, cache, settings.staging)
    reader = ChunkReader(claimer, store, cache, SegmentCodec(settings.staging.pack_compression))
    sinks = SinkPool(settings.sinks)
    if sinks.resolve() is SinkKind.MILVUS_LITE:
        await _own_milvus_lite(sinks)
    writer = VectorWriter(claimer, sinks, reader)
    embedder_channel: aio.Channel | None = None
    embedder: EmbeddingClient | None = None
    if settings.gateway.embedder_address:
        embedder_channel = open_channel(
            settings.gateway.embedder_address, settings.client_tls.options(api_token=False)
        )
        embedder = EmbeddingClient(embedder_channel)
    searcher = Searcher(claimer, writer, embedder, timeout=settings.gateway.forward_timeout_seconds)

    # Forwarded calls are retried as the client library retries them (idempotent
    # methods only); the forwarder starts its CLIENT spans itself.
    forward_channel = open_channel(
        settings.gateway.claimer_address, settings.client_tls.options(api_token=False, traced=False)
    )
    forwarder = Forwarder(forward_channel, settings.gateway.forward_timeout_seconds, internal)
    _register_generic(app, PIPELINE_SERVICE.full_name, _pipeline_handler(forwarder, claimer, store, writer))
    _register_generic(app, LEASE_SERVICE.full_name, forwarder.service_handler(LEASE_SERVICE))
    _register_generic(app, TOKEN_SERVICE.full_name, forwarder.service_handler(TOKEN_SERVICE))
    app.add_service(
        STAGING_SERVICE.full_name,
        staging_pb2_grpc.add_StagingServiceServicer_to_server,
        StagingServicer(claimer, stager, reader, store, cache, writer),
    )
    limits = WriteLimits(settings.gateway.write_max_document_bytes, settings.gateway.write_buffer_bytes)
    _register_generic(
        app, INDEX_SERVICE.full_name, index_handler(IndexServicer(claimer, writer, searcher, limits))
    )
    app.add_routes(RestApi(claimer, stager, reader, writer, searcher).routes())
    if guard is not None:
        guard.cache.bind(claimer.verify_token)
        app.add_middleware(
            rest_middleware(guard, RestApi.access_routes(), RestApi.PIPELINE_IN_BODY, error_response)
        )

    # Ready (gRPC health SERVING, /readyz 200) while the claimer, S3 and the default sink answer.
    timeout = settings.readiness.timeout_seconds
    sink_probe = SinkProbe(sinks, timeout)
    probes: dict[str, Probe] = {
        CLAIMER: claimer_probe(forward_channel, timeout),
        S3: s3_probe(s3_client, settings.s3.bucket),
        SINK: sink_probe,
    }
    app.watch_dependencies(probes, settings.readiness)

    async def startup() -> None:
        await cache.start()
        stager.start()

    async def shutdown() -> None:
        await sink_probe.close()
        await stager.close()
        await cache.close()
        await sinks.close()
        await stack.aclose()
        await channel.close()
        await forward_channel.close()
        if embedder_channel is not None:
            await embedder_channel.close()

    app.on_startup(startup)
    app.on_shutdown(shutdown)


def main() -> None:
    """Run the gateway until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = Settings.load_or_exit()
    settings.readiness = load_or_exit(ReadinessSettings)
    guard: GatewayGuard | None = None
    if settings.gateway.auth == "on":
        guard = GatewayGuard(
            TokenCache(settings.gateway.auth_cache_seconds),
            limiter=RateLimiter(parse_rates(settings.gateway.rate_limits)),
        )
    else:
        log.warning("GATEWAY_AUTH=off: every caller may make every call (unsafe; docs/security.md)")

    async def wire(app: ServiceApp) -> None:
        await build(app, settings, guard)

    interceptors = [GuardInterceptor(guard)] if guard is not None else []
    run_service("gateway", server, wire, serving_on_start=False, interceptors=interceptors)


if __name__ == "__main__":
    main()
