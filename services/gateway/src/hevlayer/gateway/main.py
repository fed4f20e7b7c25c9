"""Entry point of the gateway (``hevlayer-gateway``)."""

from __future__ import annotations

from typing import Any

from grpc import aio

from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.common.channels import create_channel
from hevlayer.common.config import load_or_exit
from hevlayer.common.server import ServerSettings, ServiceApp, run_service
from hevlayer.gateway.forwarding import Forwarder
from hevlayer.gateway.settings import GRPC_DEFAULTS, GatewaySettings

# Public services whose state the claimer owns; the gateway relays them.
FORWARDED_SERVICES = (
    pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"],
    lease_pb2.DESCRIPTOR.services_by_name["LeaseService"],
)

# Public services of the v1 API whose gateway handlers are not built yet:
# listed in reflection (so grpcurl can describe them) and answering UNIMPLEMENTED.
PUBLISHED_SERVICES = (
    staging_pb2.DESCRIPTOR.services_by_name["StagingService"],
    index_pb2.DESCRIPTOR.services_by_name["IndexService"],
)


async def build(app: ServiceApp, settings: GatewaySettings) -> None:
    """Wire the gateway: forward pipeline and lease calls to the claimer."""
    channel = create_channel(
        settings.claimer_address,
        retry_services=[s.full_name for s in FORWARDED_SERVICES],
    )
    forwarder = Forwarder(channel, settings.forward_timeout_seconds)
    for service in FORWARDED_SERVICES:
        handler = forwarder.service_handler(service)

        def register(_servicer: Any, server: aio.Server, handler: Any = handler) -> None:
            server.add_generic_rpc_handlers((handler,))

        app.add_service(service.full_name, register, None)

    for published in PUBLISHED_SERVICES:
        app.publish(published.full_name)

    async def close() -> None:
        await channel.close()

    app.on_shutdown(close)


def main() -> None:
    """Run the gateway until SIGTERM."""
    server = load_or_exit(ServerSettings, GRPC_DEFAULTS)
    settings = load_or_exit(GatewaySettings)

    async def wire(app: ServiceApp) -> None:
        await build(app, settings)

    run_service("gateway", server, wire)


if __name__ == "__main__":
    main()
