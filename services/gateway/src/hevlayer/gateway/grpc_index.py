"""IndexService over gRPC: protos in, the indexing core, protos out.

WriteVectors holds a bounded amount per stream (docs/api.md, "Limits"):
a document's vectors are kept as float32 arrays (:func:`hevlayer.gateway.wire.vector_values`)
until its last message, at most ``GATEWAY_WRITE_MAX_DOCUMENT_BYTES`` of its messages (a
larger document is rejected whole: its write is atomic, delete-old-rows + upsert-new, so it
is never written in parts); complete documents are written in batches of about
``GATEWAY_WRITE_BUFFER_BYTES``, one batch written while the next is read. So one stream
holds at most about one document being read, one batch gathering and one being written.
Each vector's dimension is checked as it arrives, against the pipeline's, else the
namespace's, else the stream's first vector's; a document with a vector of another
dimension is rejected at once and the rest of it is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.common.errors import InvalidArgument, Violation
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

# Complete documents are written to the sink in batches of at most about this size
# (and WriteLimits.buffer_bytes).
FLUSH_DOCUMENTS = 500
FLUSH_VECTORS = 5000


@dataclass(frozen=True)
class WriteLimits:
    """What one WriteVectors stream holds (the module docstring)."""

    max_document_bytes: int = 32 * 1024 * 1024
    """Most bytes of one document's messages held (GATEWAY_WRITE_MAX_DOCUMENT_BYTES)."""
    buffer_bytes: int = 8 * 1024 * 1024
    """Bytes of complete documents gathered before a batch is written (GATEWAY_WRITE_BUFFER_BYTES)."""

    def too_large(self) -> InvalidArgument:
        """The error of a document over :attr:`max_document_bytes`."""
        description = (
            f"the document's messages exceed {self.max_document_bytes} bytes, the most the gateway "
            "holds of one document (GATEWAY_WRITE_MAX_DOCUMENT_BYTES); nothing of it is written: "
            "split it into smaller documents or raise the limit"
        )
        return InvalidArgument(
            f"vectors: {description}",
            reason="DOCUMENT_TOO_LARGE",
            violations=[Violation("vectors", description)],
            metadata={"max_document_bytes": str(self.max_document_bytes)},
        )


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

    def __init__(
        self,
        claimer: ClaimerClient,
        writer: VectorWriter,
        searcher: Searcher,
        limits: WriteLimits | None = None,
    ) -> None:
        self.claimer = claimer
        self.writer = writer
        self.searcher = searcher
        self.limits = limits or WriteLimits()

    async def WriteVectors(
        self, request_iterator: AsyncIterator[Any], context: aio.ServicerContext
    ) -> index_pb2.WriteVectorsResponse:
        """Requests arrive as :data:`hevlayer.gateway.wire.RawWriteVectorsRequest`
        (see :func:`index_handler`). One batch is written while the next is read; what a
        stream holds is bounded (the module docstring)."""
        limits = self.limits
        response = index_pb2.WriteVectorsResponse()
        pipeline: PipelineInfo | None = None
        dimension: int | None = None  # None: not looked up yet; 0: the first vector fixes it
        complete: list[DocumentVectors] = []
        current: DocumentVectors | None = None
        current_bytes = 0
        vectors_waiting = bytes_waiting = 0
        in_flight: asyncio.Task[list[WriteOutcome]] | None = None

        async def settle() -> None:
            nonlocal in_flight
            if in_flight is not None:
                task, in_flight = in_flight, None
                response.results.extend(write_result(o) for o in await task)

        async def flush() -> None:
            nonlocal complete, vectors_waiting, bytes_waiting, in_flight
            await settle()
            if complete and pipeline is not None:
                in_flight = asyncio.get_running_loop().create_task(self.writer.write(pipeline, complete))
            complete, vectors_waiting, bytes_waiting = [], 0, 0

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
                    current_bytes = 0
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
                    elif not request.lease.fencing_token:
                        current.problem = InvalidArgument.field(
                            "lease.fencing_token",
                            "is required: the fencing token of the lease, as the claim returned it "
                            "(0 is no wildcard)",
                        )
                if current.problem is None and request.vectors:
                    current_bytes += request.ByteSize()
                    if len(current.rows) + len(request.vectors) > MAX_VECTORS_PER_DOCUMENT:
                        current.problem = InvalidArgument.field(
                            "vectors", f"at most {MAX_VECTORS_PER_DOCUMENT} vectors per document"
                        )
                    elif current_bytes > limits.max_document_bytes:
                        current.problem = limits.too_large()
                    else:
                        if dimension is None:
                            dimension = await self.writer.expected_dimension(pipeline)
                        dimension = _add_rows(current, request.vectors, dimension)
                    if current.problem is not None:
                        current.rows = []
                if request.end_of_document:
                    complete.append(current)
                    vectors_waiting += len(current.rows)
                    bytes_waiting += current_bytes
                    current = None
                    if (
                        len(complete) >= FLUSH_DOCUMENTS
                        or vectors_waiting >= FLUSH_VECTORS
                        or bytes_waiting >= limits.buffer_bytes
                    ):
                        await flush()
            if current is not None:
                current.problem = InvalidArgument.field(
                    "end_of_document", "the stream ended before the document's last message"
                )
                current.rows = []
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


def _add_rows(document: DocumentVectors, vectors: Any, dimension: int) -> int:
    """Append ``vectors`` (RawVectors) to ``document`` as rows with float32 values; at the
    first vector whose length is not ``dimension`` (0: the first vector fixes it), set the
    document's problem naming ``vectors[i].values`` (i counted over the whole document)
    instead. The dimension, fixed if it was 0."""
    rows = document.rows
    for vector in vectors:
        values = vector_values(vector)
        if not dimension:
            dimension = len(values)
        if len(values) != dimension:
            document.problem = InvalidArgument.field(
                f"vectors[{len(rows)}].values", f"expected {dimension} values, got {len(values)}"
            )
            return dimension
        rows.append(
            Row(
                vector.id,
                values,
                struct_to_python(vector.attributes) if vector.HasField("attributes") else {},
            )
        )
    return dimension


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
