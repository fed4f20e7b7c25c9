"""Entry point of the claimer (``hevlayer-claimer``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.api.claimer.v1 import (
    document_state_pb2,
    document_state_pb2_grpc,
    token_verification_pb2,
    token_verification_pb2_grpc,
)
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.claimer import changes
from hevlayer.claimer.condemned import Condemnations
from hevlayer.claimer.database import Database
from hevlayer.claimer.documents import DocumentStore
from hevlayer.claimer.grpc_documents import DocumentStateServicer
from hevlayer.claimer.grpc_leases import LeaseServicer
from hevlayer.claimer.grpc_pipelines import PipelineServicer
from hevlayer.claimer.grpc_tokens import TokenServicer, TokenVerificationServicer
from hevlayer.claimer.leases import LeaseStore
from hevlayer.claimer.manifests import ManifestCache, ObjectStore
from hevlayer.claimer.metrics import StageCountRefresher
from hevlayer.claimer.pipelines import PipelineDefaults, PipelineStore
from hevlayer.claimer.segments import SegmentQueue
from hevlayer.claimer.settings import ClaimerSettings, check_caller_identity, server_defaults
from hevlayer.claimer.sink_bindings import SinkBindings
from hevlayer.claimer.status_watch import StatusNotifier
from hevlayer.claimer.tokens import TokenStore
from hevlayer.common.auth import INTERNAL_TOKEN_KEY, SeedToken, read_seed_file
from hevlayer.common.config import ConfigError, load_or_exit
from hevlayer.common.guard import GuardInterceptor, SharedSecretGuard
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.common.settings import ReadinessSettings

log = logging.getLogger("hevlayer.claimer")


async def build(
    app: ServiceApp, settings: ClaimerSettings, readiness: ReadinessSettings | None = None
) -> None:
    """Wire the claimer's stores and servicers into ``app``.

    The server starts NOT_SERVING and turns SERVING once PostgreSQL is
    reachable and migrated; until then calls fail UNAVAILABLE with RetryInfo.
    Afterwards a background probe (``SELECT 1``, see :mod:`hevlayer.common.readiness`)
    turns it NOT_SERVING while PostgreSQL does not answer, and SERVING again when it does.
    """
    db = Database(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.db_timeout_seconds,
    )
    defaults = PipelineDefaults(
        queue_backend=settings.default_queue_backend,
        sink=settings.default_sink,
        max_attempts=settings.default_max_attempts,
        lease_seconds=settings.default_lease_seconds,
    )
    notifier = StatusNotifier(settings.database_url)
    change_notifier = StatusNotifier(settings.database_url, changes.CHANNEL)
    change_log = changes.ChangeLog(
        db,
        change_notifier,
        app.stopping,
        max_watches=settings.max_watches,
        retention_seconds=settings.change_retention_seconds,
    )
    objects: ObjectStore | None = None
    segments: SegmentQueue | None = None
    if settings.s3_bucket:
        objects = ObjectStore(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            region=settings.s3_region,
        )
        segments = SegmentQueue(
            db,
            objects,
            ManifestCache(objects, settings.manifest_cache_ids),
            settings.segment_size,
            orphan_age_seconds=settings.manifest_orphan_age_seconds,
        )
    if segments is None and settings.default_queue_backend == "segment":
        log.warning(
            "S3_BUCKET is not set: the segmented queue (PIPELINE_QUEUE_BACKEND=segment) is unavailable"
        )
    store = PipelineStore(db, defaults, segments)
    leases = LeaseStore(db, segments)
    documents = DocumentStore(db, segments)
    refresher = StageCountRefresher(db)
    monitor = app.watch_dependencies({"postgresql": db.ping}, readiness or ReadinessSettings())
    tokens = TokenStore(db)
    seeds: list[SeedToken] = []
    if settings.bootstrap_tokens_file:
        try:
            seeds = read_seed_file(settings.bootstrap_tokens_file)
        except ValueError as error:
            raise ConfigError(f"CLAIMER_BOOTSTRAP_TOKENS_FILE: {error}") from None
    app.add_service(
        pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        PipelineServicer(store, notifier, app.stopping),
    )
    app.add_servicer(
        lease_pb2.DESCRIPTOR.services_by_name["LeaseService"], LeaseServicer(leases, notifier, app.stopping)
    )
    app.add_service(
        document_state_pb2.DESCRIPTOR.services_by_name["DocumentStateService"].full_name,
        document_state_pb2_grpc.add_DocumentStateServiceServicer_to_server,
        DocumentStateServicer(documents, leases, SinkBindings(db), Condemnations(db), change_log),
    )
    app.add_service(
        auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
        auth_pb2_grpc.add_TokenServiceServicer_to_server,
        TokenServicer(tokens),
    )
    app.add_service(
        token_verification_pb2.DESCRIPTOR.services_by_name["TokenVerificationService"].full_name,
        token_verification_pb2_grpc.add_TokenVerificationServiceServicer_to_server,
        TokenVerificationServicer(tokens),
    )

    async def connect() -> None:
        if await db.open_with_retry(app.stopping):
            if seeds:
                added = await tokens.seed(seeds)
                log.info("bootstrap tokens: %d of %d added", added, len(seeds))
            await notifier.start()
            await change_notifier.start()
            change_log.start_sweeper()
            if segments is not None:
                segments.garbage.start_sweeper()
            refresher.start()
            await monitor.probe_once()  # SERVING now, not at the next round
            log.info("connected to PostgreSQL; serving")

    tasks: list[asyncio.Task[None]] = []

    async def wake_watchers_on_stop() -> None:
        await app.stopping.wait()
        notifier.wake_all()
        change_notifier.wake_all()

    async def startup() -> None:
        if objects is not None:
            await objects.open()
        tasks.append(asyncio.create_task(connect(), name="db-connect"))
        tasks.append(asyncio.create_task(wake_watchers_on_stop(), name="wake-watchers"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await refresher.stop()
        if segments is not None:
            await segments.garbage.stop_sweeper()
        await change_log.stop_sweeper()
        await notifier.close()
        await change_notifier.close()
        await db.close()
        if objects is not None:
            await objects.close()

    app.on_startup(startup)
    app.on_shutdown(shutdown)


def main() -> None:
    """Run the claimer until SIGTERM."""
    server = load_or_exit(ServerSettings, server_defaults())
    settings = load_or_exit(ClaimerSettings)
    readiness = load_or_exit(ReadinessSettings)

    async def wire(app: ServiceApp) -> None:
        await build(app, settings, readiness)

    try:
        check_caller_identity(settings, mutual_tls=bool(server.tls_client_ca))
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    interceptors = []
    if settings.auth == "off":
        log.warning("CLAIMER_AUTH=off: the claimer answers any caller that can reach it (unsafe)")
    elif settings.internal_token:
        # With mutual TLS too, the gateway must send the secret as well (both are checked).
        guard = SharedSecretGuard(INTERNAL_TOKEN_KEY, settings.internal_token, "the gateway")
        interceptors.append(GuardInterceptor(guard))
    run_service("claimer", server, wire, serving_on_start=False, interceptors=interceptors)


if __name__ == "__main__":
    main()
