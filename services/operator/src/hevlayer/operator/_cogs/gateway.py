"""The gateway's PipelineService as plain values (the gRPC adapter).

Calls go through a :func:`hevlayer.common.channels.create_channel` channel
(tracing, retries of UNAVAILABLE); failures come back as the
:mod:`hevlayer.common.errors` exception the gateway (or the claimer behind
it) raised, details included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.common.errors import ServiceError, service_error_from_rpc_error
from hevlayer.operator.spec import DistanceMetric

SERVICE = pb.DESCRIPTOR.services_by_name["PipelineService"].full_name

_METRICS: dict[DistanceMetric, Any] = {
    DistanceMetric.COSINE_DISTANCE: pb.DISTANCE_METRIC_COSINE_DISTANCE,
    DistanceMetric.EUCLIDEAN_SQUARED: pb.DISTANCE_METRIC_EUCLIDEAN_SQUARED,
}
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}

T = TypeVar("T")


@dataclass(frozen=True)
class GatewayPipeline:
    """A pipeline as the gateway reports it."""

    id: str
    target_namespace: str
    distance_metric: DistanceMetric | None
    paused: bool


@dataclass(frozen=True)
class GatewayStatus:
    """Per-stage counts of a pipeline."""

    pipeline_id: str
    pending_count: int
    counts: dict[str, int]


def is_retryable(error: ServiceError) -> bool:
    """Whether a failed call may succeed if made again later."""
    return error.code in _RETRYABLE


def _pipeline(message: pb.Pipeline) -> GatewayPipeline:
    metric = next((m for m, v in _METRICS.items() if v == message.distance_metric), None)
    return GatewayPipeline(
        id=message.id,
        target_namespace=message.target_namespace,
        distance_metric=metric,
        paused=message.paused,
    )


class GatewayClient:
    """Creates, reads, pauses and deletes pipelines in the gateway."""

    def __init__(self, channel: aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        self._timeout = timeout

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except aio.AioRpcError as exc:
            raise service_error_from_rpc_error(exc) from None

    async def get(self, pipeline_id: str) -> GatewayPipeline:
        """The pipeline; NotFound if it does not exist."""
        request = pb.GetPipelineRequest(pipeline_id=pipeline_id)
        response = await self._call(lambda: self._stub.GetPipeline(request, timeout=self._timeout))
        return _pipeline(response.pipeline)

    async def create(
        self,
        pipeline_id: str,
        *,
        target_namespace: str,
        distance_metric: DistanceMetric,
        paused: bool,
    ) -> GatewayPipeline:
        """Create the pipeline; AlreadyExists if the id is taken."""
        request = pb.CreatePipelineRequest(
            pipeline=pb.Pipeline(
                id=pipeline_id,
                target_namespace=target_namespace,
                distance_metric=_METRICS[distance_metric],
                paused=paused,
            )
        )
        response = await self._call(lambda: self._stub.CreatePipeline(request, timeout=self._timeout))
        return _pipeline(response.pipeline)

    async def set_paused(self, pipeline_id: str, paused: bool) -> GatewayPipeline:
        """Pause or resume the pipeline's claims; NotFound if it does not exist."""
        request = pb.UpdatePipelineRequest(
            pipeline=pb.Pipeline(id=pipeline_id, paused=paused),
            update_mask=field_mask_pb2.FieldMask(paths=["paused"]),
        )
        response = await self._call(lambda: self._stub.UpdatePipeline(request, timeout=self._timeout))
        return _pipeline(response.pipeline)

    async def delete(self, pipeline_id: str) -> None:
        """Delete the pipeline with its documents; NotFound if it does not exist."""
        request = pb.DeletePipelineRequest(pipeline_id=pipeline_id)
        await self._call(lambda: self._stub.DeletePipeline(request, timeout=self._timeout))

    async def status(self, pipeline_id: str) -> GatewayStatus:
        """Per-stage counts and pending_count; NotFound if the pipeline does not exist."""
        request = pb.GetPipelineStatusRequest(pipeline_id=pipeline_id)
        response = await self._call(lambda: self._stub.GetPipelineStatus(request, timeout=self._timeout))
        return GatewayStatus(
            pipeline_id=response.status.pipeline_id,
            pending_count=int(response.status.pending_count),
            counts=dict(response.status.counts),
        )
