"""The gateway's readiness probes: the claimer, S3 and the default sink.

Run in the background by :class:`hevlayer.common.readiness.DependencyMonitor`
(``HEVLAYER_READINESS_INTERVAL_SECONDS`` apart, each bounded by
``HEVLAYER_READINESS_TIMEOUT_SECONDS``); ``/readyz`` and gRPC health report
the last round (docs/operations.md, "Readiness"):

* ``claimer``: ``grpc.health.v1.Health/Check`` on the claimer channel is
  SERVING (the claimer is NOT_SERVING while PostgreSQL is unreachable);
* ``s3``: ``HeadBucket`` of the chunk bucket answers (a missing bucket or
  refused credentials count as down);
* ``sink``: the default sink opens (Milvus Lite's file, a Milvus connection)
  and its :meth:`~hevlayer.gateway.sinks.Sink.ping` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hevlayer.common.errors import Unavailable
from hevlayer.common.readiness import Probe
from hevlayer.gateway.sinks import Sink, SinkPool

CLAIMER = "claimer"
S3 = "s3"
SINK = "sink"


def claimer_probe(channel: aio.Channel, timeout: float) -> Probe:
    """The claimer answers its health check with SERVING."""
    health = health_pb2_grpc.HealthStub(channel)

    async def probe() -> None:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except aio.AioRpcError as exc:
            raise Unavailable(f"claimer health check failed: {exc.code().name}: {exc.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise Unavailable(f"claimer reports {status} (PostgreSQL unreachable?)")

    return probe


def s3_probe(client: Any, bucket: str) -> Probe:
    """``HeadBucket`` of the chunk bucket succeeds."""

    async def probe() -> None:
        await client.head_bucket(Bucket=bucket)

    return probe


class SinkProbe:
    """Opens the default sink (once; an open slower than the probe timeout goes on in the
    background and the next round waits for the same attempt), then pings it."""

    def __init__(self, sinks: SinkPool, timeout: float) -> None:
        self._sinks = sinks
        self._timeout = timeout
        self._opening: asyncio.Task[Sink] | None = None

    async def __call__(self) -> None:
        opening = self._opening
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception() is not None)):
            opening = self._opening = asyncio.create_task(self._sinks.get(), name="open-default-sink")
        sink = await asyncio.shield(opening)
        await sink.ping(self._timeout)

    async def close(self) -> None:
        """Cancel an open still in progress."""
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
