"""PipelineService: create, read, update, delete pipelines, and watch their status."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from google.protobuf import field_mask_pb2
from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.methods import PIPELINE_SERVICE, method
from hevlayer.client.options import ClientOptions

_CREATE = method(PIPELINE_SERVICE, "CreatePipeline")
_GET = method(PIPELINE_SERVICE, "GetPipeline")
_LIST = method(PIPELINE_SERVICE, "ListPipelines")
_UPDATE = method(PIPELINE_SERVICE, "UpdatePipeline")
_DELETE = method(PIPELINE_SERVICE, "DeletePipeline")
_STATUS = method(PIPELINE_SERVICE, "GetPipelineStatus")
_WATCH = method(PIPELINE_SERVICE, "WatchPipelineStatus")

PAGE_SIZE = 1000


class PipelinesClient(ServiceClient):
    """Calls of PipelineService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = pipeline_pb2_grpc.PipelineServiceStub(channel)

    async def create(
        self, pipeline: pipeline_pb2.Pipeline, *, timeout: float | None = None
    ) -> pipeline_pb2.Pipeline:
        """Create a pipeline (ALREADY_EXISTS if the id is taken); the pipeline as stored."""
        response = await self._unary(
            _CREATE, self._stub.CreatePipeline, pipeline_pb2.CreatePipelineRequest(pipeline=pipeline), timeout
        )
        created: pipeline_pb2.Pipeline = response.pipeline
        return created

    async def get(self, pipeline_id: str, *, timeout: float | None = None) -> pipeline_pb2.Pipeline:
        """The pipeline (NOT_FOUND if it does not exist)."""
        response = await self._unary(
            _GET, self._stub.GetPipeline, pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id), timeout
        )
        pipeline: pipeline_pb2.Pipeline = response.pipeline
        return pipeline

    async def list(self, *, timeout: float | None = None) -> list[pipeline_pb2.Pipeline]:
        """Every pipeline (all pages; ``timeout`` is per page)."""
        pipelines: list[pipeline_pb2.Pipeline] = []
        token = ""
        while True:
            request = pipeline_pb2.ListPipelinesRequest(page_size=PAGE_SIZE, page_token=token)
            response = await self._unary(_LIST, self._stub.ListPipelines, request, timeout)
            pipelines.extend(response.pipelines)
            token = response.next_page_token
            if not token:
                return pipelines

    async def update(
        self, pipeline: pipeline_pb2.Pipeline, paths: Sequence[str], *, timeout: float | None = None
    ) -> pipeline_pb2.Pipeline:
        """Set the fields named by ``paths`` (an update mask) to ``pipeline``'s values."""
        request = pipeline_pb2.UpdatePipelineRequest(
            pipeline=pipeline, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        response = await self._unary(_UPDATE, self._stub.UpdatePipeline, request, timeout)
        updated: pipeline_pb2.Pipeline = response.pipeline
        return updated

    async def set_paused(
        self, pipeline_id: str, paused: bool, *, timeout: float | None = None
    ) -> pipeline_pb2.Pipeline:
        """Pause or resume the pipeline's claims."""
        return await self.update(
            pipeline_pb2.Pipeline(id=pipeline_id, paused=paused), ["paused"], timeout=timeout
        )

    async def delete(
        self, pipeline_id: str, *, timeout: float | None = None
    ) -> pipeline_pb2.DeletePipelineResponse:
        """Delete the pipeline with its documents (NOT_FOUND if it does not exist)."""
        response: pipeline_pb2.DeletePipelineResponse = await self._unary(
            _DELETE,
            self._stub.DeletePipeline,
            pipeline_pb2.DeletePipelineRequest(pipeline_id=pipeline_id),
            timeout,
        )
        return response

    async def status(self, pipeline_id: str, *, timeout: float | None = None) -> pipeline_pb2.PipelineStatus:
        """Per-stage counts and the pending count."""
        response = await self._unary(
            _STATUS,
            self._stub.GetPipelineStatus,
            pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id),
            timeout,
        )
        status: pipeline_pb2.PipelineStatus = response.status
        return status

    async def watch_status(
        self, pipeline_id: str, *, min_interval_ms: int = 250, timeout: float | None = None
    ) -> AsyncGenerator[pipeline_pb2.PipelineStatus, None]:
        """The status now, then on every change (at most every ``min_interval_ms``)."""
        request = pipeline_pb2.WatchPipelineStatusRequest(
            pipeline_id=pipeline_id, min_interval_ms=min_interval_ms
        )
        async for response in self._stream(_WATCH, self._stub.WatchPipelineStatus, request, timeout):
            yield response.status
