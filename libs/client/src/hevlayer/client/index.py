"""IndexService: write a held document's vectors, query an index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.enums import WriteOutcome
from hevlayer.client.errors import ServiceError
from hevlayer.client.methods import INDEX_SERVICE, method
from hevlayer.client.options import ClientOptions
from hevlayer.client.types import DocumentVectors, WriteResult, trace_parent_of

_WRITE = method(INDEX_SERVICE, "WriteVectors")
_QUERY = method(INDEX_SERVICE, "Query")

MESSAGE_BYTES = 1 << 20
"""WriteVectors messages are cut at about this size (a document's vectors may span several)."""


def write_requests(
    pipeline_id: str,
    worker_id: str,
    from_stage: str,
    documents: Sequence[DocumentVectors],
    message_bytes: int = MESSAGE_BYTES,
) -> list[index_pb2.WriteVectorsRequest]:
    """The WriteVectors messages of ``documents``: each document's vectors in messages of
    about ``message_bytes``, the last with ``end_of_document`` (a document without
    vectors is one message with none)."""
    messages: list[index_pb2.WriteVectorsRequest] = []
    for document in documents:
        lease = document_pb2.LeaseRef(
            document_id=document.lease.document_id,
            fencing_token=document.lease.fencing_token,
            trace_parent=trace_parent_of(document.lease),
        )
        vectors = document.vectors
        start = 0
        while True:
            size = 0
            end = start
            while end < len(vectors) and (end == start or size < message_bytes):
                size += vectors[end].ByteSize()
                end += 1
            messages.append(
                index_pb2.WriteVectorsRequest(
                    pipeline_id=pipeline_id,
                    worker_id=worker_id,
                    from_stage=from_stage,
                    lease=lease,
                    vectors=vectors[start:end],
                    end_of_document=end >= len(vectors),
                )
            )
            start = end
            if start >= len(vectors):
                break
    return messages


def query_request(
    pipeline_id: str,
    *,
    text: str | None = None,
    vector: Sequence[float] | None = None,
    top_k: int = 10,
    filter: Mapping[str, Any] | None = None,
) -> index_pb2.QueryRequest:
    """A QueryRequest with exactly one of ``text`` and ``vector``."""
    if (text is None) == (vector is None):
        raise ValueError("query: give exactly one of text and vector")
    request = index_pb2.QueryRequest(pipeline_id=pipeline_id, top_k=top_k)
    if text is not None:
        request.text = text
    else:
        request.vector.values.extend(vector or ())
    if filter:
        structure = struct_pb2.Struct()
        structure.update(dict(filter))
        request.filter.CopyFrom(structure)
    return request


class IndexClient(ServiceClient):
    """Calls of IndexService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = index_pb2_grpc.IndexServiceStub(channel)

    async def write_vectors(
        self,
        pipeline_id: str,
        documents: Sequence[DocumentVectors],
        *,
        worker_id: str,
        from_stage: str,
        timeout: float | None = None,
    ) -> list[WriteResult]:
        """WriteVectors of complete documents through one stream; one result per document,
        in the order of ``documents``."""
        messages = write_requests(pipeline_id, worker_id, from_stage, documents)

        async def stream() -> AsyncIterator[index_pb2.WriteVectorsRequest]:
            for message in messages:
                yield message

        response = await self._unary(_WRITE, self._stub.WriteVectors, stream(), timeout)
        by_id = {r.document_id: r for r in response.results}
        results: list[WriteResult] = []
        for document in documents:
            result = by_id.get(document.lease.document_id)
            if result is None:
                raise ServiceError(
                    f"WriteVectors returned no result for document {document.lease.document_id!r}",
                    reason="MISSING_WRITE_RESULT",
                )
            has_error = result.HasField("error")
            results.append(
                WriteResult(
                    result.document_id,
                    WriteOutcome(result.outcome),
                    result.vectors_written,
                    result.error.code if has_error else 0,
                    (result.error.message or f"error code {result.error.code}") if has_error else "",
                )
            )
        return results

    async def query(
        self,
        pipeline_id: str,
        text: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> list[index_pb2.QueryHit]:
        """Search the pipeline's index by ``text`` (embedded with the pipeline's model) or
        ``vector``; hits best first. ``filter``: attributes that must equal the given values."""
        request = query_request(pipeline_id, text=text, vector=vector, top_k=top_k, filter=filter)
        response = await self._unary(_QUERY, self._stub.Query, request, timeout)
        return list(response.hits)
