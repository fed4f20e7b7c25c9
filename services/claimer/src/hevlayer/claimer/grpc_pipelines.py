"""gRPC adapter of the pipeline store (PipelineService)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

from google.protobuf import timestamp_pb2
from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.claimer.pipelines import (
    UPDATABLE_FIELDS,
    PipelineRecord,
    PipelineSpec,
    PipelineStatus,
    PipelineStore,
)
from hevlayer.claimer.status_watch import StatusNotifier
from hevlayer.claimer.validation import validate_pipeline_id
from hevlayer.common.errors import InvalidArgument

METRICS: dict[int, str] = {
    pb.DISTANCE_METRIC_COSINE_DISTANCE: "cosine_distance",
    pb.DISTANCE_METRIC_EUCLIDEAN_SQUARED: "euclidean_squared",
}
BACKENDS: dict[int, str] = {pb.QUEUE_BACKEND_SEGMENT: "segment", pb.QUEUE_BACKEND_ROW: "row"}
SINKS: dict[int, str] = {
    pb.SINK_MILVUS_LITE: "milvus_lite",
    pb.SINK_MILVUS: "milvus",
    pb.SINK_TURBOPUFFER: "turbopuffer",
}


def _enum_value(table: dict[int, str], value: int, field: str) -> str:
    if value == 0:
        return ""
    if value not in table:
        raise InvalidArgument.field(field, f"unknown enum value {value}")
    return table[value]


def _reverse(table: dict[int, str], name: str) -> int:
    for number, text in table.items():
        if text == name:
            return number
    return 0


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def pipeline_to_proto(record: PipelineRecord) -> pb.Pipeline:
    """The API form of a stored pipeline."""
    return pb.Pipeline(
        id=record.id,
        target_namespace=record.target_namespace,
        distance_metric=_reverse(METRICS, record.distance_metric),  # type: ignore[arg-type]
        paused=record.paused,
        max_attempts=record.max_attempts,
        default_lease_seconds=record.default_lease_seconds,
        queue_backend=_reverse(BACKENDS, record.queue_backend),  # type: ignore[arg-type]
        sink=_reverse(SINKS, record.sink),  # type: ignore[arg-type]
        dimension=record.dimension,
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        summaries_enabled=record.summaries_enabled,
    )


def spec_from_proto(pipeline: pb.Pipeline) -> PipelineSpec:
    """A create request's pipeline as a spec for the store."""
    return PipelineSpec(
        id=pipeline.id,
        target_namespace=pipeline.target_namespace,
        distance_metric=_enum_value(METRICS, pipeline.distance_metric, "pipeline.distance_metric"),
        paused=pipeline.paused,
        max_attempts=pipeline.max_attempts,
        default_lease_seconds=pipeline.default_lease_seconds,
        queue_backend=_enum_value(BACKENDS, pipeline.queue_backend, "pipeline.queue_backend"),
        sink=_enum_value(SINKS, pipeline.sink, "pipeline.sink"),
        dimension=pipeline.dimension,
        summaries_enabled=pipeline.summaries_enabled,
    )


def status_to_proto(status: PipelineStatus) -> pb.PipelineStatus:
    """The API form of a pipeline's status."""
    return pb.PipelineStatus(
        pipeline_id=status.pipeline_id,
        counts=dict(status.counts),
        pending_count=status.pending_count,
        observe_time=_timestamp(status.observe_time),
        version=status.version,
    )


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    """PipelineService on top of :class:`PipelineStore`."""

    def __init__(self, store: PipelineStore, notifier: StatusNotifier, stopping: asyncio.Event) -> None:
        self._store = store
        self._notifier = notifier
        self._stopping = stopping

    async def CreatePipeline(
        self, request: pb.CreatePipelineRequest, context: aio.ServicerContext
    ) -> pb.CreatePipelineResponse:
        if not request.HasField("pipeline"):
            raise InvalidArgument.field("pipeline", "is required")
        record = await self._store.create(spec_from_proto(request.pipeline))
        return pb.CreatePipelineResponse(pipeline=pipeline_to_proto(record))

    async def GetPipeline(
        self, request: pb.GetPipelineRequest, context: aio.ServicerContext
    ) -> pb.GetPipelineResponse:
        record = await self._store.get(request.pipeline_id)
        return pb.GetPipelineResponse(pipeline=pipeline_to_proto(record))

    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, context: aio.ServicerContext
    ) -> pb.ListPipelinesResponse:
        records, token = await self._store.list(request.page_size, request.page_token)
        return pb.ListPipelinesResponse(
            pipelines=[pipeline_to_proto(r) for r in records], next_page_token=token
        )

    async def UpdatePipeline(
        self, request: pb.UpdatePipelineRequest, context: aio.ServicerContext
    ) -> pb.UpdatePipelineResponse:
        if not request.HasField("pipeline"):
            raise InvalidArgument.field("pipeline", "is required")
        changes: dict[str, object] = {}
        for path in request.update_mask.paths:
            if path not in UPDATABLE_FIELDS:
                raise InvalidArgument.field(
                    "update_mask", f"{path!r} cannot be updated; updatable: {', '.join(UPDATABLE_FIELDS)}"
                )
            changes[path] = getattr(request.pipeline, path)
        record = await self._store.update(request.pipeline.id, changes)
        return pb.UpdatePipelineResponse(pipeline=pipeline_to_proto(record))

    async def DeletePipeline(
        self, request: pb.DeletePipelineRequest, context: aio.ServicerContext
    ) -> pb.DeletePipelineResponse:
        documents, segments = await self._store.delete(request.pipeline_id)
        return pb.DeletePipelineResponse(deleted_documents=documents, deleted_segments=segments)

    async def GetPipelineStatus(
        self, request: pb.GetPipelineStatusRequest, context: aio.ServicerContext
    ) -> pb.GetPipelineStatusResponse:
        status = await self._store.status(request.pipeline_id)
        return pb.GetPipelineStatusResponse(status=status_to_proto(status))

    async def WatchPipelineStatus(
        self, request: pb.WatchPipelineStatusRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchPipelineStatusResponse]:
        validate_pipeline_id(request.pipeline_id)
        interval = (request.min_interval_ms or 250) / 1000
        # A periodic re-read bounds staleness even if a notification is lost.
        resync = max(interval, 5.0)
        seen = self._notifier.generation(request.pipeline_id)
        status = await self._store.status(request.pipeline_id)
        yield pb.WatchPipelineStatusResponse(status=status_to_proto(status))
        last_sent = time.monotonic()
        last_version = status.version
        last_counts = dict(status.counts)
        while not self._stopping.is_set():
            seen = await self._notifier.wait_change(request.pipeline_id, seen, resync)
            if self._stopping.is_set():
                return
            pause = interval - (time.monotonic() - last_sent)
            if pause > 0:
                await asyncio.sleep(pause)
            status = await self._store.status(request.pipeline_id)
            if status.version != last_version or dict(status.counts) != last_counts:
                yield pb.WatchPipelineStatusResponse(status=status_to_proto(status))
                last_sent = time.monotonic()
                last_version = status.version
                last_counts = dict(status.counts)
