"""A PipelineService on a real port whose answers a test scripts: failures and stalls the real
service cannot be made to produce, for the client's retries and deadlines.

Each method pops the next scripted failure for its name (a ServiceError, or a
number of seconds to stall before answering) and otherwise answers from a
dict of pipelines; every call is counted and its metadata kept.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.common.errors import ServiceError


@dataclass
class Script:
    """Failures to play per method, calls seen, metadata received."""

    failures: dict[str, list[ServiceError | float]] = field(default_factory=lambda: defaultdict(list))
    calls: Counter[str] = field(default_factory=Counter)
    metadata: list[dict[str, str]] = field(default_factory=list)

    def fail(self, method: str, *errors: ServiceError | float) -> None:
        """Play ``errors`` (or stalls, in seconds) on the next calls of ``method``."""
        self.failures[method].extend(errors)


class ScriptedPipelines(pipeline_pb2_grpc.PipelineServiceServicer):
    """PipelineService answering from memory, failing as scripted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.pipelines: dict[str, pb.Pipeline] = {}

    async def _enter(self, method: str, context: aio.ServicerContext) -> None:
        self.script.calls[method] += 1
        self.script.metadata.append(
            {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        )
        pending = self.script.failures.get(method)
        if pending:
            failure = pending.pop(0)
            if isinstance(failure, ServiceError):
                status = failure.to_grpc_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            else:
                await asyncio.sleep(failure)

    async def CreatePipeline(
        self, request: pb.CreatePipelineRequest, context: aio.ServicerContext
    ) -> pb.CreatePipelineResponse:
        await self._enter("CreatePipeline", context)
        self.pipelines[request.pipeline.id] = request.pipeline
        return pb.CreatePipelineResponse(pipeline=request.pipeline)

    async def GetPipeline(
        self, request: pb.GetPipelineRequest, context: aio.ServicerContext
    ) -> pb.GetPipelineResponse:
        await self._enter("GetPipeline", context)
        if request.pipeline_id not in self.pipelines:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pipeline {request.pipeline_id!r} not found")
        return pb.GetPipelineResponse(pipeline=self.pipelines[request.pipeline_id])

    async def UpdatePipeline(
        self, request: pb.UpdatePipelineRequest, context: aio.ServicerContext
    ) -> pb.UpdatePipelineResponse:
        await self._enter("UpdatePipeline", context)
        stored = await self.GetPipeline(pb.GetPipelineRequest(pipeline_id=request.pipeline.id), context)
        pipeline = stored.pipeline
        for path in request.update_mask.paths:
            setattr(pipeline, path, getattr(request.pipeline, path))
        return pb.UpdatePipelineResponse(pipeline=pipeline)

    async def DeletePipeline(
        self, request: pb.DeletePipelineRequest, context: aio.ServicerContext
    ) -> pb.DeletePipelineResponse:
        await self._enter("DeletePipeline", context)
        if self.pipelines.pop(request.pipeline_id, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pipeline {request.pipeline_id!r} not found")
        return pb.DeletePipelineResponse()

    async def GetPipelineStatus(
        self, request: pb.GetPipelineStatusRequest, context: aio.ServicerContext
    ) -> pb.GetPipelineStatusResponse:
        await self._enter("GetPipelineStatus", context)
        return pb.GetPipelineStatusResponse(status=pb.PipelineStatus(pipeline_id=request.pipeline_id))

    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, context: aio.ServicerContext
    ) -> pb.ListPipelinesResponse:
        await self._enter("ListPipelines", context)
        ids = sorted(self.pipelines)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 2)
        return pb.ListPipelinesResponse(
            pipelines=[self.pipelines[i] for i in ids[start:end]],
            next_page_token=str(end) if end < len(ids) else "",
        )

    async def WatchPipelineStatus(
        self, request: pb.WatchPipelineStatusRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchPipelineStatusResponse]:
        await self._enter("WatchPipelineStatus", context)
        for pending in (3, 1, 0):
            yield pb.WatchPipelineStatusResponse(
                status=pb.PipelineStatus(pipeline_id=request.pipeline_id, pending_count=pending)
            )


async def serve(
    script: Script, credentials: grpc.ServerCredentials | None = None
) -> tuple[aio.Server, ScriptedPipelines, str]:
    """Start the scripted service on a free loopback port; (server, servicer, address)."""
    server = aio.server()
    servicer = ScriptedPipelines(script)
    pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"
