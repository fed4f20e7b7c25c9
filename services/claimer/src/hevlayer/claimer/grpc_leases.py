"""gRPC adapter of the lease store (LeaseService)."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import AsyncIterator, Iterable
from typing import cast

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from hevlayer.api.document.v1.document_pb2 import LeaseRef
from hevlayer.api.lease.v1 import lease_pb2 as pb
from hevlayer.claimer import validation as v
from hevlayer.claimer.leases import Claimed, ClaimRequest, LeaseStore
from hevlayer.claimer.status_watch import StatusNotifier
from hevlayer.claimer.validation import validate_pipeline_id
from hevlayer.claimer.wire import encode_lease_columns, encode_leases, encode_transition_results
from hevlayer.client.enums import TransitionOutcome
from hevlayer.common.encoded import Encoded
from hevlayer.common.errors import InvalidArgument
from hevlayer.common.telemetry import DOCUMENT_TRANSITION_SPAN, MAX_TRACE_PARENT_BYTES, context_of

_DOCUMENT_ID = operator.attrgetter("document_id")
_FENCING_TOKEN = operator.attrgetter("fencing_token")
_TRACE_PARENT = operator.attrgetter("trace_parent")
_tracer = trace.get_tracer("hevlayer.claimer")


def _refs(refs: Iterable[LeaseRef]) -> tuple[list[str], list[int]]:
    """Document ids and fencing tokens of a request's LeaseRefs."""
    listed = list(refs)
    return list(map(_DOCUMENT_ID, listed)), list(map(_FENCING_TOKEN, listed))


# How often an idle StreamLeases stream looks for expired leases to take back.
STREAM_POLL_SECONDS = 1.0


_LAYOUTS = frozenset(pb.LeaseLayout.values())


def layout(value: int, field: str = "layout") -> int:
    """A requested LeaseLayout; INVALID_ARGUMENT naming ``field`` if unknown."""
    if value not in _LAYOUTS:
        raise InvalidArgument.field(field, f"unknown LeaseLayout {value}")
    return value


def _request_refs(
    request: Message, columns_field: str, messages_field: str
) -> tuple[list[str], list[int], str]:
    """Document ids and fencing tokens a heartbeat or transition names, as LeaseRefColumns
    (``columns_field``) or LeaseRefs (``messages_field``), and the field that named them;
    INVALID_ARGUMENT if both are set."""
    if request.HasField(columns_field):
        if getattr(request, messages_field):
            raise InvalidArgument.field(columns_field, f"cannot be combined with {messages_field}")
        columns: pb.LeaseRefColumns = getattr(request, columns_field)
        return list(columns.document_ids), list(columns.fencing_tokens), columns_field
    ids, tokens = _refs(getattr(request, messages_field))
    return ids, tokens, messages_field


def _request_trace_parents(request: pb.TransitionDocumentsRequest, refs_field: str, count: int) -> list[str]:
    """The trace contexts a transition names per document (``[]`` when none): the
    ``trace_parents`` column, or each LeaseRef's ``trace_parent``; INVALID_ARGUMENT if the
    column has neither zero nor one entry per document."""
    if refs_field == "document_columns":
        parents = list(request.document_columns.trace_parents)
        if parents and len(parents) != count:
            raise InvalidArgument.field(
                "document_columns.trace_parents",
                f"must have as many entries as document_ids ({count}) or none, got {len(parents)}",
            )
    else:
        parents = list(map(_TRACE_PARENT, request.documents))
    if not any(parents):
        return []
    for i, parent in enumerate(parents):
        field = (
            f"document_columns.trace_parents[{i}]"
            if refs_field == "document_columns"
            else (f"documents[{i}].trace_parent")
        )
        v.max_bytes(parent, MAX_TRACE_PARENT_BYTES, field)
    return parents


def record_transitions(
    request: pb.TransitionDocumentsRequest,
    ids: list[str],
    parents: list[str],
    outcomes: list[TransitionOutcome],
    start_ns: int,
) -> None:
    """One ``document.transition`` span per document that names its trace (a child of
    that trace context, linked to this call's span), for the trace of the document's
    journey (docs/operations.md). Only callers that send trace contexts (the gateway
    writing vectors) pay for these spans."""
    call = trace.get_current_span().get_span_context()
    links = [trace.Link(call)] if call.is_valid else None
    end_ns = time.time_ns()
    for document_id, parent, outcome in zip(ids, parents, outcomes, strict=True):
        if not parent:
            continue
        span = _tracer.start_span(
            DOCUMENT_TRANSITION_SPAN,
            context=context_of(parent),
            links=links,
            start_time=start_ns,
            attributes={
                "hevlayer.pipeline_id": request.pipeline_id,
                "hevlayer.document_id": document_id,
                "hevlayer.from_stage": request.from_stage,
                "hevlayer.to_stage": request.to_stage,
                "hevlayer.worker_id": request.worker_id,
                "hevlayer.outcome": outcome.name.lower(),
            },
        )
        if outcome is not TransitionOutcome.MOVED:
            span.set_status(Status(StatusCode.ERROR, f"not moved: {outcome.name}"))
        span.end(end_time=end_ns)


def claimed_wire(claimed: Claimed, columns: bool) -> Encoded:
    """The wire form of a claim result, a whole ClaimDocumentsResponse or StreamLeasesResponse:
    ``LeaseColumns lease_columns = 2`` with ``columns``
    (:func:`hevlayer.claimer.wire.encode_lease_columns`), else ``repeated Lease leases = 1``
    (:func:`hevlayer.claimer.wire.encode_leases`)."""
    encode = encode_lease_columns if columns else encode_leases
    return Encoded(
        encode(
            claimed.stage,
            claimed.worker_id,
            claimed.expires_at,
            claimed.document_ids,
            claimed.fencing_tokens,
            claimed.attempts,
            claimed.content_hashes,
            claimed.chunk_counts,
            claimed.trace_parents if any(claimed.trace_parents) else (),
        )
    )


class LeaseServicer:
    """LeaseService on top of :class:`LeaseStore` (registered with
    :meth:`ServiceApp.add_servicer`: claims and per-document transitions answer
    with wire bytes from :mod:`hevlayer.claimer.wire`)."""

    def __init__(self, store: LeaseStore, notifier: StatusNotifier, stopping: asyncio.Event) -> None:
        self._store = store
        self._notifier = notifier
        self._stopping = stopping

    async def ClaimDocuments(
        self, request: pb.ClaimDocumentsRequest, context: aio.ServicerContext
    ) -> pb.ClaimDocumentsResponse | Encoded:
        columns = layout(request.layout) == pb.LEASE_LAYOUT_COLUMNS
        claimed = await self._store.claim(
            ClaimRequest(
                pipeline_id=request.pipeline_id,
                stage=request.stage,
                claim_stage=request.claim_stage,
                limit=request.limit,
                worker_id=request.worker_id,
                lease_seconds=request.lease_seconds,
            )
        )
        return claimed_wire(claimed, columns)

    async def HeartbeatLeases(
        self, request: pb.HeartbeatLeasesRequest, context: aio.ServicerContext
    ) -> pb.HeartbeatLeasesResponse:
        ids, tokens, refs_field = _request_refs(request, "lease_columns", "leases")
        v.lease_tokens(ids, tokens, refs_field)
        result = await self._store.heartbeat(
            request.pipeline_id,
            request.stage,
            request.worker_id,
            ids,
            tokens,
            request.lease_seconds,
            refs_field=refs_field,
        )
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(result.expires_at)
        if refs_field == "lease_columns":
            answer = pb.HeartbeatResultColumns(extended=result.extended)
            if any(result.extended):
                answer.expires_at.CopyFrom(stamp)
            return pb.HeartbeatLeasesResponse(result_columns=answer)
        response = pb.HeartbeatLeasesResponse()
        for doc, extended in zip(ids, result.extended, strict=True):
            if extended:
                response.results.add(document_id=doc, extended=True, expires_at=stamp)
            else:
                response.results.add(document_id=doc, extended=False)
        return response

    async def TransitionDocuments(
        self, request: pb.TransitionDocumentsRequest, context: aio.ServicerContext
    ) -> pb.TransitionDocumentsResponse | Encoded:
        ids, tokens, refs_field = _request_refs(request, "document_columns", "documents")
        columns = refs_field == "document_columns"
        if request.segment_leases:
            if request.documents:
                raise InvalidArgument.field("segment_leases", "cannot be combined with documents")
            if columns:
                raise InvalidArgument.field("segment_leases", "cannot be combined with document_columns")
            segment_tokens = list(request.segment_leases)
            moved = await self._store.transition_segment_leases(
                request.pipeline_id,
                request.from_stage,
                request.worker_id,
                request.to_stage,
                segment_tokens,
                request.reason,
            )
            return pb.TransitionDocumentsResponse(
                segment_lease_results=[
                    pb.SegmentLeaseResult(
                        fencing_token=token,
                        outcome=pb.TRANSITION_OUTCOME_MOVED if count else pb.TRANSITION_OUTCOME_NOT_HELD,
                        moved=count,
                        new_fencing_token=moved.new_fencing_token if count else 0,
                    )
                    for token, count in zip(segment_tokens, moved.moved, strict=True)
                ]
            )
        v.lease_tokens(ids, tokens, refs_field)
        parents = _request_trace_parents(request, refs_field, len(ids))
        start_ns = time.time_ns()
        result = await self._store.transition(
            request.pipeline_id,
            request.from_stage,
            request.worker_id,
            request.to_stage,
            ids,
            tokens,
            request.reason,
            refs_field=refs_field,
        )
        if parents:
            record_transitions(request, ids, parents, result.outcomes, start_ns)
        if columns:
            return pb.TransitionDocumentsResponse(
                result_columns=pb.TransitionResultColumns(
                    outcomes=cast("list[pb.TransitionOutcome.ValueType]", result.outcomes),
                    fencing_tokens=result.fencing_tokens,
                )
            )
        return Encoded(encode_transition_results(ids, result.outcomes, result.fencing_tokens))

    async def StreamLeases(
        self, request_iterator: AsyncIterator[pb.StreamLeasesRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.StreamLeasesResponse | Encoded]:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "open":
            raise InvalidArgument.field("open", "the first message of the stream must be open")
        opened = first.open
        validate_pipeline_id(opened.pipeline_id, "open.pipeline_id")
        v.claimable_stage(opened.stage, "open.stage")
        v.worker_stage(opened.claim_stage, "open.claim_stage")
        if opened.claim_stage == opened.stage:
            raise InvalidArgument.field("open.claim_stage", "must differ from open.stage")
        v.worker_id(opened.worker_id, "open.worker_id")
        v.lease_seconds(opened.lease_seconds, "open.lease_seconds")
        columns = layout(opened.layout, "open.layout") == pb.LEASE_LAYOUT_COLUMNS
        credits = opened.initial_credits
        wake = asyncio.Event()
        closed = asyncio.Event()

        async def read() -> None:
            nonlocal credits
            try:
                async for message in requests:
                    if message.WhichOneof("kind") != "credit":
                        raise InvalidArgument.field("open", "only the first message may be open")
                    credits += message.credit.documents
                    wake.set()
            finally:
                closed.set()
                wake.set()

        reader = asyncio.create_task(read(), name="stream-leases-reader")
        try:
            while not self._stopping.is_set() and not closed.is_set():
                seen = self._notifier.generation(opened.pipeline_id)
                if credits > 0:
                    claimed = await self._store.claim(
                        ClaimRequest(
                            pipeline_id=opened.pipeline_id,
                            stage=opened.stage,
                            claim_stage=opened.claim_stage,
                            limit=min(credits, v.MAX_LIMIT),
                            worker_id=opened.worker_id,
                            lease_seconds=opened.lease_seconds,
                        )
                    )
                    if len(claimed):
                        credits -= len(claimed)
                        yield claimed_wire(claimed, columns)
                        continue
                # No await since the credit check when credits == 0, so no credit can have
                # been granted unseen between the check and the clear.
                wake.clear()
                waits: set[asyncio.Task[object]] = {
                    asyncio.create_task(wake.wait()),
                    asyncio.create_task(self._stopping.wait()),
                }
                if credits > 0:
                    # credits but nothing claimable: a status change (or a lease expiring,
                    # polled) can make something claimable. Without credits only a credit
                    # can: the stream does not wake for every change of the pipeline.
                    waits.add(
                        asyncio.create_task(
                            self._notifier.wait_change(opened.pipeline_id, seen, STREAM_POLL_SECONDS)
                        )
                    )
                _, pending = await asyncio.wait(
                    waits,
                    timeout=STREAM_POLL_SECONDS if credits > 0 else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in pending:
                    task.cancel()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
