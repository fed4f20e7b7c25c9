"""What a service answers about its readiness: ``/readyz`` on its HTTP address and the gRPC
health service's overall status."""

from __future__ import annotations

import urllib.error
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.service_http import http_json


def readyz(http_address: str) -> tuple[int, Any]:
    """(status, body) of ``GET /readyz``; (0, {}) while nothing listens."""
    try:
        return http_json("GET", f"http://{http_address}/readyz")
    except urllib.error.URLError:
        return 0, {}


async def health(address: str) -> int:
    """The overall status of the gRPC health service at ``address`` (``HealthCheckResponse``)."""
    async with aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status
