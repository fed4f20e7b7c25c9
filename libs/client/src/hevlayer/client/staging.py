"""StagingService: stage documents (results in order), enqueue ids, read chunks, inspect and delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.methods import STAGING_SERVICE, method
from hevlayer.client.options import ClientOptions
from hevlayer.client.types import HasLease, trace_parent_of
from hevlayer.common.errors import FailedPrecondition

_STAGE = method(STAGING_SERVICE, "StageDocuments")
_ENQUEUE = method(STAGING_SERVICE, "EnqueueDocuments")
_READ = method(STAGING_SERVICE, "ReadChunks")
_GET = method(STAGING_SERVICE, "GetDocument")
_LIST = method(STAGING_SERVICE, "ListDocuments")
_DELETE = method(STAGING_SERVICE, "DeleteDocuments")
_WATCH = method(STAGING_SERVICE, "WatchDocuments")

STAGE_BATCH = 64
"""Documents per StageDocuments message when the caller streams single documents."""

EnqueueEntry = tuple[str, str] | tuple[str, str, int]
"""One id to enqueue: ``(document id, content hash)`` or ``(document id, content hash, priority)``.
The hash may be ""; the priority (default 0) orders claims, lower first, then oldest first
(``EnqueuedDocument.priority``; both queue backends)."""


def enqueue_request(
    pipeline_id: str, batch: Sequence[EnqueueEntry], *, stage: str, skip_unchanged: bool
) -> staging_pb2.EnqueueDocumentsRequest:
    """One EnqueueDocumentsRequest of ``batch`` in the columnar form: ``document_ids``, with
    ``content_hashes`` and ``priorities`` only when some entry has one (one string per id
    instead of one :class:`EnqueuedDocument` message: cheaper to build, send and parse)."""
    ids = [entry[0] for entry in batch]
    hashes = [entry[1] for entry in batch]
    request = staging_pb2.EnqueueDocumentsRequest(
        pipeline_id=pipeline_id, stage=stage, skip_unchanged=skip_unchanged, document_ids=ids
    )
    if any(hashes):
        request.content_hashes.extend(hashes)
    priorities = [entry[2] if len(entry) == 3 else 0 for entry in batch]
    if any(priorities):
        request.priorities.extend(priorities)
    return request


def check_columns_understood(sent: int, response: staging_pb2.EnqueueDocumentsResponse) -> None:
    """:class:`FailedPrecondition` if ``sent`` ids went out as columns and the answer counts none
    of them, neither enqueued nor unchanged: a gateway or claimer that predates ``document_ids``
    ignores the field (protobuf keeps unknown fields silently) and answers OK having enqueued
    nothing. Said instead of losing the ids without a word."""
    if sent and not response.enqueued and not response.unchanged:
        raise FailedPrecondition(
            f"document_ids: the server enqueued none of the {sent} ids sent: the gateway or the "
            "claimer behind it predates the columnar EnqueueDocuments (document_ids); upgrade both "
            "before this client"
        )


def lease_refs(leases: Iterable[HasLease], *, traced: bool = False) -> list[document_pb2.LeaseRef]:
    """LeaseRef messages of held documents; with ``traced``, each with its trace context."""
    if traced:
        return [
            document_pb2.LeaseRef(
                document_id=d.document_id, fencing_token=d.fencing_token, trace_parent=trace_parent_of(d)
            )
            for d in leases
        ]
    return [document_pb2.LeaseRef(document_id=d.document_id, fencing_token=d.fencing_token) for d in leases]


async def _batches(
    documents: Iterable[document_pb2.Document] | AsyncIterable[document_pb2.Document], size: int
) -> AsyncIterator[list[document_pb2.Document]]:
    batch: list[document_pb2.Document] = []
    if isinstance(documents, AsyncIterable):
        async for document in documents:
            batch.append(document)
            if len(batch) >= size:
                yield batch
                batch = []
    else:
        for document in documents:
            batch.append(document)
            if len(batch) >= size:
                yield batch
                batch = []
                await asyncio.sleep(0)
    if batch:
        yield batch


class StagingClient(ServiceClient):
    """Calls of StagingService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = staging_pb2_grpc.StagingServiceStub(channel)

    async def stage_stream(
        self,
        pipeline_id: str,
        documents: Iterable[document_pb2.Document] | AsyncIterable[document_pb2.Document],
        *,
        skip_unchanged: bool = False,
        leases: Iterable[HasLease] = (),
        batch_size: int = STAGE_BATCH,
        timeout: float | None = None,
    ) -> AsyncGenerator[staging_pb2.StageResult, None]:
        """Stage ``documents`` through one StageDocuments stream, ``batch_size`` to a
        message; yields one result per document, in order, as the gateway answers.

        ``leases``: claims the stager holds on some of the documents (the extract
        stage's leases); staging a document ends its lease. A rejected document
        comes back as a ``STAGE_OUTCOME_REJECTED`` result with its error; the
        stream goes on."""
        held = {lease.document_id: lease for lease in leases}

        async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
            async for batch in _batches(documents, batch_size):
                mine = [held[d.id] for d in batch if d.id in held]
                yield staging_pb2.StageDocumentsRequest(
                    pipeline_id=pipeline_id,
                    documents=batch,
                    skip_unchanged=skip_unchanged,
                    leases=lease_refs(mine),
                )

        async for response in self._stream(_STAGE, self._stub.StageDocuments, requests(), timeout):
            for result in response.results:
                yield result

    async def stage(
        self,
        pipeline_id: str,
        documents: Iterable[document_pb2.Document] | AsyncIterable[document_pb2.Document],
        *,
        skip_unchanged: bool = False,
        leases: Iterable[HasLease] = (),
        batch_size: int = STAGE_BATCH,
        timeout: float | None = None,
    ) -> list[staging_pb2.StageResult]:
        """:meth:`stage_stream`, collected: one result per document, in order."""
        return [
            result
            async for result in self.stage_stream(
                pipeline_id,
                documents,
                skip_unchanged=skip_unchanged,
                leases=leases,
                batch_size=batch_size,
                timeout=timeout,
            )
        ]

    async def enqueue(
        self,
        pipeline_id: str,
        batches: AsyncIterable[Sequence[EnqueueEntry]],
        *,
        stage: str,
        skip_unchanged: bool,
        timeout: float | None = None,
    ) -> staging_pb2.EnqueueDocumentsResponse:
        """EnqueueDocuments: batches of ``(document id, content hash[, priority])`` into ``stage``,
        one stream (see :data:`EnqueueEntry`), each sent as columns (:func:`enqueue_request`)."""

        sent = 0

        async def requests() -> AsyncIterator[staging_pb2.EnqueueDocumentsRequest]:
            nonlocal sent
            async for batch in batches:
                sent += len(batch)
                yield enqueue_request(pipeline_id, batch, stage=stage, skip_unchanged=skip_unchanged)

        response: staging_pb2.EnqueueDocumentsResponse = await self._unary(
            _ENQUEUE, self._stub.EnqueueDocuments, requests(), timeout
        )
        check_columns_understood(sent, response)
        return response

    async def read_chunks(
        self,
        pipeline_id: str,
        *,
        worker_id: str,
        stage: str,
        leases: Sequence[HasLease],
        timeout: float | None = None,
    ) -> AsyncGenerator[staging_pb2.ReadChunksResponse, None]:
        """ReadChunks of documents held in ``stage``, response by response."""
        request = staging_pb2.ReadChunksRequest(
            pipeline_id=pipeline_id, worker_id=worker_id, stage=stage, leases=lease_refs(leases)
        )
        async for response in self._stream(_READ, self._stub.ReadChunks, request, timeout):
            yield response

    async def get_document(
        self, pipeline_id: str, document_id: str, *, timeout: float | None = None
    ) -> staging_pb2.DocumentState:
        """A document's state (NOT_FOUND if unknown)."""
        request = staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id)
        response = await self._unary(_GET, self._stub.GetDocument, request, timeout)
        document: staging_pb2.DocumentState = response.document
        return document

    async def list_documents(
        self, pipeline_id: str, *, id_prefix: str = "", stage: str = "", timeout: float | None = None
    ) -> AsyncGenerator[staging_pb2.DocumentState, None]:
        """Documents of the pipeline, optionally by id prefix and stage."""
        request = staging_pb2.ListDocumentsRequest(pipeline_id=pipeline_id, id_prefix=id_prefix, stage=stage)
        async for response in self._stream(_LIST, self._stub.ListDocuments, request, timeout):
            for document in response.documents:
                yield document

    async def watch_documents(
        self,
        pipeline_id: str,
        *,
        id_prefix: str = "",
        stages: Sequence[str] = (),
        cursor: str = "",
        timeout: float | None = None,
    ) -> AsyncGenerator[staging_pb2.WatchDocumentsResponse, None]:
        """The pipeline's committed document changes, message by message, until the caller
        stops reading (or ``timeout``). Without ``cursor`` the stream starts with a snapshot
        (messages with ``snapshot`` set, the last with ``snapshot_complete``); with the
        ``cursor`` of a message received earlier it resumes after that message. A snapshot
        may come again later (a resync): the caller then replaces its view. The channel
        retries the call only before its first message (gRPC's rule for streams): a caller
        that loses the stream later watches again with its last cursor."""
        request = staging_pb2.WatchDocumentsRequest(
            pipeline_id=pipeline_id, id_prefix=id_prefix, stages=list(stages), cursor=cursor
        )
        async for response in self._stream(_WATCH, self._stub.WatchDocuments, request, timeout):
            yield response

    async def delete_documents(
        self, pipeline_id: str, document_ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        """Delete documents with their chunks and vectors; how many existed."""
        request = staging_pb2.DeleteDocumentsRequest(pipeline_id=pipeline_id, document_ids=list(document_ids))
        response = await self._unary(_DELETE, self._stub.DeleteDocuments, request, timeout)
        return int(response.deleted)
