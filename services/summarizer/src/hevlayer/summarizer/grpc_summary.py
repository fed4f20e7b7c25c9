"""gRPC adapter of the job runner (SummaryService)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from google.protobuf import timestamp_pb2
from grpc import aio

from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.api.summary.v1 import summary_pb2_grpc
from hevlayer.common.errors import InvalidArgument
from hevlayer.summarizer.jobs import (
    DirectorySummary,
    JobEvent,
    JobRunner,
    JobSnapshot,
    JobState,
    SubmitBatch,
    check_job_id,
)
from hevlayer.summarizer.tree import ObjectSpec

STATES: dict[JobState, pb.JobState.ValueType] = {
    JobState.ENUMERATING: pb.JOB_STATE_ENUMERATING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def job_to_proto(job: JobSnapshot) -> pb.Job:
    """The API form of a job."""
    return pb.Job(
        job_id=job.job_id,
        pipeline_id=job.pipeline_id,
        state=STATES[job.state],
        objects=job.objects,
        directories=job.directories,
        summarized_directories=job.summarized_directories,
        failed_directories=job.failed_directories,
        cache_hits=job.cache_hits,
        create_time=_timestamp(job.create_time),
        end_time=_timestamp(job.end_time),
        indexed_directories=job.indexed_directories,
        index_failed_directories=job.index_failed_directories,
    )


def event_to_proto(event: JobEvent) -> pb.WatchJobResponse:
    """The API form of a WatchJob update."""
    return pb.WatchJobResponse(
        job=job_to_proto(event.job),
        completed_path=event.completed_path or "",
        directory_completed=event.completed_path is not None,
    )


def summary_to_proto(summary: DirectorySummary) -> pb.DirectorySummary:
    """The API form of a directory summary."""
    return pb.DirectorySummary(
        path=summary.path,
        depth=summary.depth,
        text=summary.text,
        child_count=summary.child_count,
        cache_key=summary.cache_key,
        model=summary.model,
        document_id=summary.document_id,
    )


def batch_from_proto(request: pb.SubmitJobRequest) -> SubmitBatch:
    """A SubmitJob message as a batch for the runner."""
    return SubmitBatch(
        job_id=request.job_id,
        pipeline_id=request.pipeline_id,
        objects=[
            ObjectSpec(
                path=o.path,
                document_id=o.document_id,
                content_hash=o.content_hash,
                kind=o.kind,
                text=o.text,
            )
            for o in request.objects
        ],
        enumeration_complete=request.enumeration_complete,
    )


class SummaryServicer(summary_pb2_grpc.SummaryServiceServicer):
    """SummaryService on top of :class:`JobRunner`."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner

    async def SubmitJob(
        self, request_iterator: AsyncIterator[pb.SubmitJobRequest], context: aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        job_id: str | None = None
        snapshot: JobSnapshot | None = None
        async for request in request_iterator:
            if job_id is None:
                job_id = request.job_id
            elif request.job_id != job_id:
                raise InvalidArgument.field(
                    "job_id", f"every message of the stream must name job {job_id!r}, got {request.job_id!r}"
                )
            snapshot = self._runner.submit(batch_from_proto(request))
        if snapshot is None:
            raise InvalidArgument.field("job_id", "the stream carried no message")
        await self._runner.flush()
        return pb.SubmitJobResponse(job=job_to_proto(snapshot))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        check_job_id(request.job_id)
        async for event in self._runner.watch(request.job_id, until_indexed=request.until_indexed):
            yield event_to_proto(event)

    async def GetSummary(
        self, request: pb.GetSummaryRequest, context: aio.ServicerContext
    ) -> pb.GetSummaryResponse:
        summary = self._runner.summary(request.job_id, request.path)
        return pb.GetSummaryResponse(summary=summary_to_proto(summary))

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: aio.ServicerContext
    ) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=job_to_proto(self._runner.cancel(request.job_id)))
