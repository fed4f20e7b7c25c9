"""gRPC adapter of the document store (DocumentStateService, used by the gateway)."""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator

from grpc import aio

from hevlayer.api.claimer.v1 import document_state_pb2 as pb
from hevlayer.api.claimer.v1 import document_state_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.claimer import validation as v
from hevlayer.claimer.changes import Change, ChangeLog, WatchUpdate, watch_spec
from hevlayer.claimer.condemned import Condemnations
from hevlayer.claimer.documents import DocumentState, DocumentStore, EnqueueBatch
from hevlayer.claimer.leases import LeaseStore
from hevlayer.claimer.sink_bindings import SinkBindings
from hevlayer.client.types import StagedRecord
from hevlayer.common.errors import InvalidArgument

_DOCUMENT_ID = operator.attrgetter("document_id")
_CONTENT_HASH = operator.attrgetter("content_hash")
_PRIORITY = operator.attrgetter("priority")


def enqueue_batch(batch: staging_pb2.EnqueueDocumentsRequest) -> EnqueueBatch:
    """The store's form of one EnqueueDocumentsRequest: the ids of ``documents``, then those
    of the ``document_ids`` column, with their hashes and priorities aligned by position.

    The columns become Python lists by one C-level copy each (no message per id). A
    ``content_hashes`` or ``priorities`` column that is neither empty nor as long as
    ``document_ids`` is INVALID_ARGUMENT naming it; the ids and hashes themselves are checked
    by the store (:func:`~hevlayer.claimer.documents.check_enqueue_batch`), before anything of
    the message is enqueued."""
    ids = list(batch.document_ids)
    count = len(ids)
    hashes = list(batch.content_hashes)
    priorities = list(batch.priorities)
    for name, column in (("content_hashes", hashes), ("priorities", priorities)):
        if column and len(column) != count:
            raise InvalidArgument.field(
                name, f"must be empty or hold one entry per document_ids entry ({count}), got {len(column)}"
            )
    if not hashes:
        hashes = [""] * count
    documents = batch.documents
    if documents:
        ids = [*map(_DOCUMENT_ID, documents), *ids]
        hashes = [*map(_CONTENT_HASH, documents), *hashes]
        priorities = [*map(_PRIORITY, documents), *(priorities or [0] * count)]
    return EnqueueBatch(
        pipeline_id=batch.pipeline_id,
        document_ids=ids,
        content_hashes=hashes,
        priorities=priorities,
        stage=batch.stage,
        skip_unchanged=batch.skip_unchanged,
        columns_from=len(documents) if count else None,
    )


def state_to_proto(state: DocumentState) -> staging_pb2.DocumentState:
    """The API form of a document row."""
    message = staging_pb2.DocumentState(
        document_id=state.document_id,
        stage=state.stage,
        fencing_token=state.fencing_token,
        claimed_by=state.claimed_by or "",
        attempts=state.attempts,
        last_error=state.last_error,
        content_hash=state.content_hash,
        chunk_count=state.chunk_count,
    )
    if state.lease_expires_at is not None:
        message.lease_expires_at.FromDatetime(state.lease_expires_at)
    message.update_time.FromDatetime(state.update_time)
    return message


def change_to_proto(change: Change) -> staging_pb2.DocumentChange:
    """The API form of a logged change."""
    message = staging_pb2.DocumentChange(
        sequence=change.sequence,
        document_id=change.document_id,
        stage=change.stage,
        deleted=change.deleted,
        fencing_token=change.fencing_token,
        content_hash=change.content_hash,
        last_error=change.last_error,
    )
    message.change_time.FromDatetime(change.change_time)
    return message


def update_to_proto(update: WatchUpdate) -> staging_pb2.WatchDocumentsResponse:
    """The API form of one watch message."""
    return staging_pb2.WatchDocumentsResponse(
        changes=[change_to_proto(c) for c in update.changes],
        snapshot=update.snapshot,
        snapshot_complete=update.snapshot_complete,
        cursor=update.cursor,
    )


class DocumentStateServicer(document_state_pb2_grpc.DocumentStateServiceServicer):
    """DocumentStateService on top of :class:`DocumentStore`, :class:`LeaseStore`,
    :class:`SinkBindings`, :class:`Condemnations` and :class:`ChangeLog`."""

    def __init__(
        self,
        documents: DocumentStore,
        leases: LeaseStore,
        bindings: SinkBindings,
        condemnations: Condemnations,
        changes: ChangeLog,
    ) -> None:
        self._documents = documents
        self._leases = leases
        self._bindings = bindings
        self._condemnations = condemnations
        self._changes = changes

    async def RecordStaged(
        self, request: pb.RecordStagedRequest, context: aio.ServicerContext
    ) -> pb.RecordStagedResponse:
        batch = await self._documents.record_staged(
            request.pipeline_id,
            [
                StagedRecord(
                    r.document_id, r.content_hash, r.backing, r.chunk_count, r.lease_token, r.trace_parent
                )
                for r in request.records
            ],
            skip_unchanged=request.skip_unchanged,
        )
        return pb.RecordStagedResponse(
            results=[
                pb.RecordStagedResult(
                    document_id=r.document_id,
                    fencing_token=r.fencing_token,
                    previous_backing=r.previous_backing,
                    unchanged=r.unchanged,
                )
                for r in batch.results
            ],
            released_objects=batch.released_objects,
        )

    async def CheckLeases(
        self, request: pb.CheckLeasesRequest, context: aio.ServicerContext
    ) -> pb.CheckLeasesResponse:
        ids = [ref.document_id for ref in request.leases]
        tokens = [ref.fencing_token for ref in request.leases]
        v.lease_tokens(ids, tokens, "leases")
        check = await self._leases.check(request.pipeline_id, request.worker_id, request.stage, ids, tokens)
        response = pb.CheckLeasesResponse()
        for i, doc in enumerate(ids):
            response.results.add(
                document_id=doc,
                held=check.held[i],
                found=check.found[i],
                backing=check.backings[i],
                fencing_token=check.fencing_tokens[i],
            )
        return response

    async def EnqueueIds(
        self, request_iterator: AsyncIterator[pb.EnqueueIdsRequest], context: aio.ServicerContext
    ) -> pb.EnqueueIdsResponse:
        async def batches() -> AsyncIterator[EnqueueBatch]:
            async for message in request_iterator:
                yield enqueue_batch(message.batch)

        totals = await self._documents.enqueue(batches())
        return pb.EnqueueIdsResponse(
            result=staging_pb2.EnqueueDocumentsResponse(
                enqueued=totals.enqueued,
                unchanged=totals.unchanged,
                segments_created=totals.segments_created,
            )
        )

    async def DescribeDocument(
        self, request: pb.DescribeDocumentRequest, context: aio.ServicerContext
    ) -> pb.DescribeDocumentResponse:
        state = await self._documents.describe(request.pipeline_id, request.document_id)
        return pb.DescribeDocumentResponse(document=state_to_proto(state))

    async def ScanDocuments(
        self, request: pb.ScanDocumentsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ScanDocumentsResponse]:
        async for batch in self._documents.scan(request.pipeline_id, request.stage, request.id_prefix):
            yield pb.ScanDocumentsResponse(documents=[state_to_proto(s) for s in batch])

    async def ForgetDocuments(
        self, request: pb.ForgetDocumentsRequest, context: aio.ServicerContext
    ) -> pb.ForgetDocumentsResponse:
        backings, deleted, released = await self._documents.forget(
            request.pipeline_id, list(request.document_ids)
        )
        return pb.ForgetDocumentsResponse(backings=backings, deleted=deleted, released_objects=released)

    async def GetContentHashes(
        self, request: pb.GetContentHashesRequest, context: aio.ServicerContext
    ) -> pb.GetContentHashesResponse:
        hashes = await self._documents.content_hashes(request.pipeline_id, list(request.document_ids))
        return pb.GetContentHashesResponse(content_hashes=hashes)

    async def GetLiveObjects(
        self, request: pb.GetLiveObjectsRequest, context: aio.ServicerContext
    ) -> pb.GetLiveObjectsResponse:
        live = await self._documents.live_objects(request.pipeline_id, list(request.object_keys))
        return pb.GetLiveObjectsResponse(live_object_keys=live)

    async def BindSinkInstance(
        self, request: pb.BindSinkInstanceRequest, context: aio.ServicerContext
    ) -> pb.BindSinkInstanceResponse:
        wanted = request.instance
        bound = await self._bindings.bind(
            request.pipeline_id, wanted.kind, wanted.instance_id, wanted.location
        )
        response = pb.BindSinkInstanceResponse(
            bound=pb.SinkInstance(kind=bound.kind, instance_id=bound.instance_id, location=bound.location)
        )
        response.bind_time.FromDatetime(bound.bind_time)
        return response

    async def CondemnObjects(
        self, request: pb.CondemnObjectsRequest, context: aio.ServicerContext
    ) -> pb.CondemnObjectsResponse:
        condemned = await self._condemnations.condemn(request.pipeline_id, list(request.object_keys))
        return pb.CondemnObjectsResponse(condemned_object_keys=condemned)

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        watch = request.watch
        spec = watch_spec(watch.pipeline_id, watch.id_prefix, list(watch.stages), watch.cursor)
        async for update in self._changes.watch(spec):
            yield pb.WatchChangesResponse(update=update_to_proto(update))
