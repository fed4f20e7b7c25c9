"""SummaryService (the summarizer): submit directory-summary jobs, watch them, read summaries."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence

from grpc import aio

from hevlayer.api.summary.v1 import summary_pb2, summary_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.methods import SUMMARY_SERVICE, method
from hevlayer.client.options import ClientOptions

_SUBMIT = method(SUMMARY_SERVICE, "SubmitJob")
_WATCH = method(SUMMARY_SERVICE, "WatchJob")
_GET = method(SUMMARY_SERVICE, "GetSummary")
_CANCEL = method(SUMMARY_SERVICE, "CancelJob")


class SummariesClient(ServiceClient):
    """Calls of SummaryService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = summary_pb2_grpc.SummaryServiceStub(channel)

    async def submit_job(
        self,
        pipeline_id: str,
        job_id: str,
        batches: Iterable[Sequence[summary_pb2.JobObject]] | AsyncIterable[Sequence[summary_pb2.JobObject]],
        *,
        timeout: float | None = None,
    ) -> summary_pb2.Job:
        """SubmitJob: the tree's objects in batches, the last batch marking enumeration complete."""

        async def requests() -> AsyncIterator[summary_pb2.SubmitJobRequest]:
            pending: Sequence[summary_pb2.JobObject] | None = None
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    if pending is not None:
                        yield summary_pb2.SubmitJobRequest(
                            pipeline_id=pipeline_id, job_id=job_id, objects=pending
                        )
                    pending = batch
            else:
                for batch in batches:
                    if pending is not None:
                        yield summary_pb2.SubmitJobRequest(
                            pipeline_id=pipeline_id, job_id=job_id, objects=pending
                        )
                    pending = batch
            yield summary_pb2.SubmitJobRequest(
                pipeline_id=pipeline_id, job_id=job_id, objects=pending or (), enumeration_complete=True
            )

        response = await self._unary(_SUBMIT, self._stub.SubmitJob, requests(), timeout)
        job: summary_pb2.Job = response.job
        return job

    async def watch_job(
        self, job_id: str, *, until_indexed: bool = False, timeout: float | None = None
    ) -> AsyncGenerator[summary_pb2.WatchJobResponse, None]:
        """The job now, then an update per change, until it ends (with ``until_indexed``:
        until it ends and every summary it staged is indexed or failed)."""
        request = summary_pb2.WatchJobRequest(job_id=job_id, until_indexed=until_indexed)
        async for response in self._stream(_WATCH, self._stub.WatchJob, request, timeout):
            yield response

    async def get_summary(
        self, job_id: str, path: str = "", *, timeout: float | None = None
    ) -> summary_pb2.DirectorySummary:
        """The summary of one directory of a job (``""``: the root)."""
        request = summary_pb2.GetSummaryRequest(job_id=job_id, path=path)
        response = await self._unary(_GET, self._stub.GetSummary, request, timeout)
        summary: summary_pb2.DirectorySummary = response.summary
        return summary

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> summary_pb2.Job:
        """Cancel a job; the job as it stands after."""
        response = await self._unary(
            _CANCEL, self._stub.CancelJob, summary_pb2.CancelJobRequest(job_id=job_id), timeout
        )
        job: summary_pb2.Job = response.job
        return job
