"""The gateway's PipelineService as the operator's values, over :mod:`hevlayer.client`.

Failures come back as the :mod:`hevlayer.client.errors` exception the gateway
(or the claimer behind it) raised, details included; whether a reconciliation
should be retried later is :func:`hevlayer.client.is_transient`.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.client import ClientOptions, PipelinesClient
from hevlayer.client import DistanceMetric as ApiMetric
from hevlayer.operator.spec import DistanceMetric

_METRICS: dict[DistanceMetric, ApiMetric] = {
    DistanceMetric.COSINE_DISTANCE: ApiMetric.COSINE_DISTANCE,
    DistanceMetric.EUCLIDEAN_SQUARED: ApiMetric.EUCLIDEAN_SQUARED,
}
_SPEC_METRICS = {api: spec for spec, api in _METRICS.items()}


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


def _pipeline(message: pb.Pipeline) -> GatewayPipeline:
    return GatewayPipeline(
        id=message.id,
        target_namespace=message.target_namespace,
        distance_metric=_SPEC_METRICS.get(ApiMetric(message.distance_metric)),
        paused=message.paused,
    )


class GatewayClient:
    """Creates, reads, pauses and deletes pipelines in the gateway."""

    def __init__(
        self, channel: aio.Channel, *, timeout: float = 10.0, options: ClientOptions | None = None
    ) -> None:
        """``options``: those the channel was opened with (their metadata, the API token, goes
        with every call)."""
        self._pipelines = PipelinesClient(channel, options or ClientOptions())
        self._timeout = timeout

    async def get(self, pipeline_id: str) -> GatewayPipeline:
        """The pipeline; NotFound if it does not exist."""
        return _pipeline(await self._pipelines.get(pipeline_id, timeout=self._timeout))

    async def create(
        self,
        pipeline_id: str,
        *,
        target_namespace: str,
        distance_metric: DistanceMetric,
        paused: bool,
    ) -> GatewayPipeline:
        """Create the pipeline; AlreadyExists if the id is taken."""
        pipeline = pb.Pipeline(
            id=pipeline_id,
            target_namespace=target_namespace,
            distance_metric=_METRICS[distance_metric].value,
            paused=paused,
        )
        return _pipeline(await self._pipelines.create(pipeline, timeout=self._timeout))

    async def set_paused(self, pipeline_id: str, paused: bool) -> GatewayPipeline:
        """Pause or resume the pipeline's claims; NotFound if it does not exist."""
        return _pipeline(await self._pipelines.set_paused(pipeline_id, paused, timeout=self._timeout))

    async def delete(self, pipeline_id: str) -> None:
        """Delete the pipeline with its documents; NotFound if it does not exist."""
        await self._pipelines.delete(pipeline_id, timeout=self._timeout)

    async def status(self, pipeline_id: str) -> GatewayStatus:
        """Per-stage counts and pending_count; NotFound if the pipeline does not exist."""
        status = await self._pipelines.status(pipeline_id, timeout=self._timeout)
        return GatewayStatus(
            pipeline_id=status.pipeline_id,
            pending_count=int(status.pending_count),
            counts=dict(status.counts),
        )
