"""Entry point of the claimer (``hevlayer-claimer``)."""

from __future__ import annotations

import asyncio
import logging

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.claimer.database import Database
from hevlayer.claimer.grpc_pipelines import PipelineServicer
from hevlayer.claimer.pipelines import PipelineDefaults, PipelineStore
from hevlayer.claimer.settings import GRPC_DEFAULTS, ClaimerSettings
from hevlayer.claimer.status_watch import StatusNotifier
from hevlayer.common.config import load_or_exit
from hevlayer.common.server import ServerSettings, ServiceApp, run_service

log = logging.getLogger("hevlayer.claimer")


async def build(app: ServiceApp, settings: ClaimerSettings) -> None:
    """Wire the claimer's stores and servicers into ``app``.

    The server starts NOT_SERVING and turns SERVING once PostgreSQL is
    reachable and migrated; until then calls fail UNAVAILABLE with RetryInfo.
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
    store = PipelineStore(db, defaults)
    app.add_service(
        pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        PipelineServicer(store, notifier, app.stopping),
    )

    async def connect() -> None:
        if await db.open_with_retry(app.stopping):
            await notifier.start()
            await app.set_serving(True)
            log.info("connected to PostgreSQL; serving")

    tasks: list[asyncio.Task[None]] = []

    async def wake_watchers_on_stop() -> None:
        await app.stopping.wait()
        notifier.wake_all()

    async def startup() -> None:
        tasks.append(asyncio.create_task(connect(), name="db-connect"))
        tasks.append(asyncio.create_task(wake_watchers_on_stop(), name="wake-watchers"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await notifier.close()
        await db.close()

    async def ready() -> bool:
        return db.ready

    app.on_startup(startup)
    app.on_shutdown(shutdown)
    app.add_readiness_check(ready)


def main() -> None:
    """Run the claimer until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = load_or_exit(ClaimerSettings)

    async def wire(app: ServiceApp) -> None:
        await build(app, settings)

    run_service("claimer", server, wire, serving_on_start=False)


if __name__ == "__main__":
    main()
