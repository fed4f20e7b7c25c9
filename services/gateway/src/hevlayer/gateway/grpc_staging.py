"""StagingService over gRPC: protos in, the staging core, protos out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio

from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.common.errors import InvalidArgument, ServiceError
from hevlayer.gateway.cache import ResilientCache
from hevlayer.gateway.chunkstore import ChunkStore
from hevlayer.gateway.claimer_client import ClaimerClient
from hevlayer.gateway.convert import document_error
from hevlayer.gateway.documents import delete_documents
from hevlayer.gateway.indexing import VectorWriter
from hevlayer.gateway.staging import ChunkReader, Stager

# Request batches of one StageDocuments stream processed concurrently (their
# documents join the same group commits); responses keep request order.
STREAM_WINDOW = 8
# A document's chunks are split into responses of about this many bytes.
RESPONSE_BYTES = 1 << 20

_OUTCOMES = {
    "staged": staging_pb2.STAGE_OUTCOME_STAGED,
    "unchanged": staging_pb2.STAGE_OUTCOME_UNCHANGED,
    "rejected": staging_pb2.STAGE_OUTCOME_REJECTED,
}


class StagingServicer(staging_pb2_grpc.StagingServiceServicer):
    """Adapter of :mod:`hevlayer.gateway.staging` to StagingService."""

    def __init__(
        self,
        claimer: ClaimerClient,
        stager: Stager,
        reader: ChunkReader,
        store: ChunkStore,
        cache: ResilientCache,
        writer: VectorWriter,
    ) -> None:
        self.claimer = claimer
        self.stager = stager
        self.reader = reader
        self.store = store
        self.cache = cache
        self.writer = writer

    async def _stage(self, request: staging_pb2.StageDocumentsRequest) -> staging_pb2.StageDocumentsResponse:
        if not request.pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        outcomes = await self.stager.stage(
            request.pipeline_id,
            request.documents,
            skip_unchanged=request.skip_unchanged,
            leases=[(lease.document_id, lease.fencing_token) for lease in request.leases],
        )
        response = staging_pb2.StageDocumentsResponse()
        for outcome in outcomes:
            result = response.results.add(
                document_id=outcome.document_id,
                outcome=_OUTCOMES[outcome.outcome],
                fencing_token=outcome.fencing_token,
                chunk_count=outcome.chunk_count,
            )
            if outcome.error is not None:
                result.error.CopyFrom(document_error(outcome.error))
        return response

    async def StageDocuments(
        self, request_iterator: AsyncIterator[staging_pb2.StageDocumentsRequest], context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.StageDocumentsResponse]:
        window: asyncio.Queue[asyncio.Task[staging_pb2.StageDocumentsResponse] | None] = asyncio.Queue(
            STREAM_WINDOW
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.put(asyncio.get_running_loop().create_task(self._stage(request)))
            finally:
                await window.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                task = await window.get()
                if task is None:
                    break
                yield await task
            await reader
        finally:
            reader.cancel()
            while not window.empty():
                leftover = window.get_nowait()
                if leftover is not None:
                    leftover.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await leftover
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def EnqueueDocuments(
        self,
        request_iterator: AsyncIterator[staging_pb2.EnqueueDocumentsRequest],
        context: aio.ServicerContext,
    ) -> staging_pb2.EnqueueDocumentsResponse:
        problem: list[ServiceError] = []

        async def checked() -> AsyncIterator[staging_pb2.EnqueueDocumentsRequest]:
            pipeline_id: str | None = None
            async for request in request_iterator:
                if pipeline_id is None:
                    pipeline_id = request.pipeline_id
                    if not pipeline_id:
                        problem.append(InvalidArgument.field("pipeline_id", "is required"))
                        return
                elif request.pipeline_id != pipeline_id:
                    problem.append(
                        InvalidArgument.field(
                            "pipeline_id",
                            f"every message must name the same pipeline ({pipeline_id!r}), "
                            f"got {request.pipeline_id!r}",
                        )
                    )
                    return
                yield request

        try:
            response = await self.claimer.enqueue(checked())
        except ServiceError:
            if problem:
                raise problem[0] from None
            raise
        if problem:
            raise problem[0]
        return response

    async def ReadChunks(
        self, request: staging_pb2.ReadChunksRequest, context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.ReadChunksResponse]:
        leases = [(lease.document_id, lease.fencing_token) for lease in request.leases]
        async for document in self.reader.read(request.pipeline_id, request.worker_id, request.stage, leases):
            if document.error is not None:
                yield staging_pb2.ReadChunksResponse(
                    document_id=document.document_id, error=document_error(document.error)
                )
                continue
            response = staging_pb2.ReadChunksResponse(document_id=document.document_id)
            size = 0
            for chunk in document.chunks:
                chunk_size = chunk.ByteSize()
                if size and size + chunk_size > RESPONSE_BYTES:
                    yield response
                    response = staging_pb2.ReadChunksResponse(document_id=document.document_id)
                    size = 0
                response.chunks.append(chunk)
                size += chunk_size
            response.end_of_document = True
            yield response

    async def GetDocument(
        self, request: staging_pb2.GetDocumentRequest, context: aio.ServicerContext
    ) -> staging_pb2.GetDocumentResponse:
        if not request.pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        if not request.document_id:
            raise InvalidArgument.field("document_id", "is required")
        state = await self.claimer.describe(request.pipeline_id, request.document_id)
        return staging_pb2.GetDocumentResponse(document=state)

    async def ListDocuments(
        self, request: staging_pb2.ListDocumentsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.ListDocumentsResponse]:
        if not request.pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < 1e9 else None
        async for batch in self.claimer.scan(
            request.pipeline_id, request.stage, request.id_prefix, timeout=timeout
        ):
            yield staging_pb2.ListDocumentsResponse(documents=batch)

    async def WatchDocuments(
        self, request: staging_pb2.WatchDocumentsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.WatchDocumentsResponse]:
        """Relayed to the claimer's WatchChanges, which validates the request (the
        claimer owns the change log); each message is passed on as the caller reads."""
        if not request.pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None and remaining < 1e9 else None
        async for update in self.claimer.watch(request, timeout=timeout):
            yield update

    async def DeleteDocuments(
        self, request: staging_pb2.DeleteDocumentsRequest, context: aio.ServicerContext
    ) -> staging_pb2.DeleteDocumentsResponse:
        deleted = await delete_documents(
            self.claimer, self.store, self.cache, self.writer, request.pipeline_id, list(request.document_ids)
        )
        return staging_pb2.DeleteDocumentsResponse(deleted=deleted)
