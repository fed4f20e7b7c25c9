"""IndexService over gRPC: protos in, the indexing core, protos out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.common.errors import InvalidArgument
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.convert import document_error, python_to_struct, struct_to_python
from hevlayer.gateway.indexing import (
    MAX_VECTORS_PER_DOCUMENT,
    DocumentVectors,
    Query,
    Searcher,
    VectorWriter,
    WriteOutcome,
)
from hevlayer.gateway.sinks import Row
from hevlayer.gateway.wire import parse_write_request, vector_values

# Complete documents are written to the sink in batches of about this size.
FLUSH_DOCUMENTS = 500
FLUSH_VECTORS = 5000

_OUTCOMES = {
    "indexed": index_pb2.WRITE_OUTCOME_INDEXED,
    "stale_lease": index_pb2.WRITE_OUTCOME_STALE_LEASE,
    "rejected": index_pb2.WRITE_OUTCOME_REJECTED,
}


def write_result(outcome: WriteOutcome) -> index_pb2.WriteResult:
    """The WriteResult of one document."""
    result = index_pb2.WriteResult(
        document_id=outcome.document_id,
        outcome=_OUTCOMES[outcome.outcome],
        vectors_written=outcome.vectors_written,
    )
    if outcome.error is not None:
        result.error.CopyFrom(document_error(outcome.error))
    return result


class IndexServicer(index_pb2_grpc.IndexServiceServicer):
    """Adapter of :mod:`hevlayer.gateway.indexing` to IndexService."""

    def __init__(self, claimer: ClaimerClient, writer: VectorWriter, searcher: Searcher) -> None:
        self.claimer = claimer
        self.writer = writer
        self.searcher = searcher

    async def WriteVectors(
        self, request_iterator: AsyncIterator[Any], context: aio.ServicerContext
    ) -> index_pb2.WriteVectorsResponse:
        """Requests arrive as :data:`hevlayer.gateway.wire.RawWriteVectorsRequest`
        (see :func:`index_handler`). One batch is written while the next is read."""
        response = index_pb2.WriteVectorsResponse()
        pipeline: PipelineInfo | None = None
        complete: list[DocumentVectors] = []
        current: DocumentVectors | None = None
        vectors_waiting = 0
        in_flight: asyncio.Task[list[WriteOutcome]] | None = None

        async def settle() -> None:
            nonlocal in_flight
            if in_flight is not None:
                task, in_flight = in_flight, None
                response.results.extend(write_result(o) for o in await task)

        async def flush() -> None:
            nonlocal complete, vectors_waiting, in_flight
            await settle()
            if complete and pipeline is not None:
                in_flight = asyncio.get_running_loop().create_task(self.writer.write(pipeline, complete))
            complete, vectors_waiting = [], 0

        try:
            async for request in request_iterator:
                if pipeline is None:
                    if not request.pipeline_id:
                        raise InvalidArgument.field("pipeline_id", "is required")
                    pipeline = await self.claimer.pipeline(request.pipeline_id)
                elif request.pipeline_id != pipeline.id:
                    raise InvalidArgument.field(
                        "pipeline_id", f"every message must name the same pipeline ({pipeline.id!r})"
                    )
                document_id = request.lease.document_id
                if not document_id:
                    raise InvalidArgument.field("lease.document_id", "is required")
                if current is not None and current.document_id != document_id:
                    raise InvalidArgument.field(
                        "lease.document_id",
                        f"vectors of document {document_id!r} arrived before end_of_document of "
                        f"{current.document_id!r}",
                    )
                if current is None:
                    current = DocumentVectors(
                        document_id,
                        request.lease.fencing_token,
                        request.worker_id,
                        request.from_stage,
                        trace_parent=request.lease.trace_parent,
                    )
                    if not request.worker_id:
                        current.problem = InvalidArgument.field("worker_id", "is required")
                    elif not request.from_stage:
                        current.problem = InvalidArgument.field("from_stage", "is required")
                if current.problem is None:
                    if len(current.rows) + len(request.vectors) > MAX_VECTORS_PER_DOCUMENT:
                        current.problem = InvalidArgument.field(
                            "vectors", f"at most {MAX_VECTORS_PER_DOCUMENT} vectors per document"
                        )
                        current.rows.clear()
                    else:
                        current.rows.extend(
                            Row(
                                vector.id,
                                vector_values(vector),
                                struct_to_python(vector.attributes) if vector.HasField("attributes") else {},
                            )
                            for vector in request.vectors
                        )
                if request.end_of_document:
                    complete.append(current)
                    vectors_waiting += len(current.rows)
                    current = None
                    if len(complete) >= FLUSH_DOCUMENTS or vectors_waiting >= FLUSH_VECTORS:
                        await flush()
            if current is not None:
                current.problem = InvalidArgument.field(
                    "end_of_document", "the stream ended before the document's last message"
                )
                current.rows.clear()
                complete.append(current)
            await flush()
            await settle()
        finally:
            if in_flight is not None:
                in_flight.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await in_flight
        return response

    async def Query(
        self, request: index_pb2.QueryRequest, context: aio.ServicerContext
    ) -> index_pb2.QueryResponse:
        which = request.WhichOneof("query")
        query = Query(
            text=request.text if which == "text" else None,
            vector=list(request.vector.values) if which == "vector" else None,
            top_k=request.top_k,
            filter=struct_to_python(request.filter),
        )
        hits = await self.searcher.query(request.pipeline_id, query)
        return index_pb2.QueryResponse(
            hits=[
                index_pb2.QueryHit(
                    document_id=hit.document_id,
                    chunk_id=hit.chunk_id,
                    score=hit.score,
                    attributes=python_to_struct(hit.attributes, "attributes"),
                )
                for hit in hits
            ]
        )


def index_handler(servicer: IndexServicer) -> grpc.GenericRpcHandler:
    """IndexService's handlers, WriteVectors parsed with the fast vector decoder."""
    return grpc.method_handlers_generic_handler(
        "hevlayer.api.index.v1.IndexService",
        {
            "WriteVectors": grpc.stream_unary_rpc_method_handler(
                servicer.WriteVectors,
                request_deserializer=parse_write_request,
                response_serializer=index_pb2.WriteVectorsResponse.SerializeToString,
            ),
            "Query": grpc.unary_unary_rpc_method_handler(
                servicer.Query,
                request_deserializer=index_pb2.QueryRequest.FromString,
                response_serializer=index_pb2.QueryResponse.SerializeToString,
            ),
        },
    )
