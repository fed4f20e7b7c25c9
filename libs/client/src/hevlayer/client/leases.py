"""LeaseService: claim (unary or StreamLeases with credits), heartbeat, transition.

Leases travel in the columnar layout (``LeaseColumns``, ``LeaseRefColumns``,
``*ResultColumns``): one message per batch instead of one per document. A
server from before that layout answers claims with per-lease messages (read
as well) and heartbeats or transitions without result columns: it saw an
empty batch and changed nothing. The client then sends the call again, and
every later call, with per-document messages (:class:`LayoutFallback`).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from itertools import repeat
from typing import Any

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.client._base import ServiceClient
from hevlayer.client.enums import TransitionOutcome
from hevlayer.client.methods import LEASE_SERVICE, method
from hevlayer.client.options import ClientOptions
from hevlayer.client.staging import lease_refs
from hevlayer.client.types import Claim, HasLease, Lease, Transition, monotonic_deadline, trace_parent_of

_CLAIM = method(LEASE_SERVICE, "ClaimDocuments")
_HEARTBEAT = method(LEASE_SERVICE, "HeartbeatLeases")
_TRANSITION = method(LEASE_SERVICE, "TransitionDocuments")
_STREAM = method(LEASE_SERVICE, "StreamLeases")


def _deadline(stamp: Any) -> float:
    return monotonic_deadline(stamp.ToDatetime(tzinfo=datetime.UTC))


def lease_of(lease: document_pb2.Lease) -> Lease:
    """A Lease message as a value."""
    return Lease(
        lease.document_id,
        lease.fencing_token,
        _deadline(lease.expires_at),
        lease.attempts,
        lease.chunk_count,
        lease.trace_parent,
    )


def leases_of(response: lease_pb2.ClaimDocumentsResponse | lease_pb2.StreamLeasesResponse) -> list[Lease]:
    """The leases of a claim's answer, in either layout (``trace_parents`` is left out of
    the columns when no document of the batch has a trace context)."""
    if not response.HasField("lease_columns"):
        return [lease_of(lease) for lease in response.leases]
    columns = response.lease_columns
    traced = len(columns.trace_parents) == len(columns.document_ids)
    return list(
        map(
            Lease,
            columns.document_ids,
            columns.fencing_tokens,
            repeat(_deadline(columns.expires_at)),
            columns.attempts,
            columns.chunk_counts,
            columns.trace_parents if traced else repeat(""),
        )
    )


def ref_columns(documents: Sequence[HasLease], *, traced: bool = False) -> lease_pb2.LeaseRefColumns:
    """Held documents as LeaseRefColumns; with ``traced``, their trace contexts too (when
    some document has one)."""
    columns = lease_pb2.LeaseRefColumns(
        document_ids=[d.document_id for d in documents],
        fencing_tokens=[d.fencing_token for d in documents],
    )
    if traced:
        parents = [trace_parent_of(d) for d in documents]
        if any(parents):
            columns.trace_parents.extend(parents)
    return columns


class LayoutFallback:
    """Which layout heartbeats and transitions are sent in, for one server.

    Columns until the server answers a columnar request without result
    columns (it predates the layout); per-document messages from then on."""

    def __init__(self) -> None:
        self.columns = True

    def name(
        self,
        columns: lease_pb2.LeaseRefColumns,
        messages: Any,
        documents: Sequence[HasLease],
        *,
        traced: bool = False,
    ) -> bool:
        """Name ``documents`` in a request: in its ``columns`` field, or in its repeated
        LeaseRef ``messages`` once fallen back (or when there are none); with ``traced``,
        with their trace contexts. True if as columns."""
        if self.columns and documents:
            columns.CopyFrom(ref_columns(documents, traced=traced))
            return True
        messages.extend(lease_refs(documents, traced=traced))
        return False

    def server_predates_columns(self, as_columns: bool, response: Any) -> bool:
        """True, and messages from now on, if a request sent as columns was answered
        without result columns."""
        if as_columns and not response.HasField("result_columns"):
            self.columns = False
            return True
        return False


class LeasesClient(ServiceClient):
    """Calls of LeaseService."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        super().__init__(channel, options)
        self._stub = lease_pb2_grpc.LeaseServiceStub(channel)
        self.layout = LayoutFallback()

    async def claim(self, claim: Claim, limit: int, *, timeout: float | None = None) -> list[Lease]:
        """ClaimDocuments: up to ``limit`` documents from ``claim.from_stage`` into ``claim.claim_stage``."""
        request = lease_pb2.ClaimDocumentsRequest(
            pipeline_id=claim.pipeline_id,
            stage=claim.from_stage,
            claim_stage=claim.claim_stage,
            limit=limit,
            worker_id=claim.worker_id,
            lease_seconds=claim.lease_seconds,
            layout=lease_pb2.LEASE_LAYOUT_COLUMNS,
        )
        return leases_of(await self._unary(_CLAIM, self._stub.ClaimDocuments, request, timeout))

    async def stream_leases(
        self, claim: Claim, credits: AsyncIterable[int], initial_credits: int
    ) -> AsyncGenerator[list[Lease], None]:
        """StreamLeases: open with ``initial_credits``, then one credit message per value
        of ``credits``; yields each batch of granted leases. When ``credits`` ends the
        stream is half-closed and ends once the server has finished."""

        async def requests() -> AsyncIterator[lease_pb2.StreamLeasesRequest]:
            yield lease_pb2.StreamLeasesRequest(
                open=lease_pb2.StreamLeasesOpen(
                    pipeline_id=claim.pipeline_id,
                    stage=claim.from_stage,
                    claim_stage=claim.claim_stage,
                    worker_id=claim.worker_id,
                    lease_seconds=claim.lease_seconds,
                    initial_credits=initial_credits,
                    layout=lease_pb2.LEASE_LAYOUT_COLUMNS,
                )
            )
            async for granted in credits:
                yield lease_pb2.StreamLeasesRequest(credit=lease_pb2.StreamLeasesCredit(documents=granted))

        async for response in self._stream(_STREAM, self._stub.StreamLeases, requests()):
            yield leases_of(response)

    async def heartbeat(
        self, claim: Claim, documents: Sequence[HasLease], *, timeout: float | None = None
    ) -> list[float | None]:
        """HeartbeatLeases of documents held in ``claim.claim_stage``: per document its new
        ``time.monotonic()`` deadline, or None if the lease is lost."""
        request = lease_pb2.HeartbeatLeasesRequest(
            pipeline_id=claim.pipeline_id,
            stage=claim.claim_stage,
            worker_id=claim.worker_id,
            lease_seconds=claim.lease_seconds,
        )
        columns = self.layout.name(request.lease_columns, request.leases, documents)
        response = await self._unary(_HEARTBEAT, self._stub.HeartbeatLeases, request, timeout)
        if self.layout.server_predates_columns(columns, response):
            return await self.heartbeat(claim, documents, timeout=timeout)
        if columns:
            results = response.result_columns
            deadline = _deadline(results.expires_at)
            return [deadline if extended else None for extended in results.extended]
        return [_deadline(r.expires_at) if r.extended else None for r in response.results]

    async def transition(
        self,
        pipeline_id: str,
        documents: Sequence[HasLease],
        *,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        reason: str = "",
        timeout: float | None = None,
    ) -> list[Transition]:
        """TransitionDocuments of documents held in ``from_stage``; one result per document, in order.
        Documents that carry a trace context (``trace_parent``) have their move recorded as a
        span of their own trace by the claimer."""
        request = lease_pb2.TransitionDocumentsRequest(
            pipeline_id=pipeline_id,
            from_stage=from_stage,
            worker_id=worker_id,
            to_stage=to_stage,
            reason=reason,
        )
        columns = self.layout.name(request.document_columns, request.documents, documents, traced=True)
        response = await self._unary(_TRANSITION, self._stub.TransitionDocuments, request, timeout)
        if self.layout.server_predates_columns(columns, response):
            return await self.transition(
                pipeline_id,
                documents,
                from_stage=from_stage,
                worker_id=worker_id,
                to_stage=to_stage,
                reason=reason,
                timeout=timeout,
            )
        if columns:
            results = response.result_columns
            ids = [d.document_id for d in documents]
            return list(
                map(Transition, ids, map(TransitionOutcome, results.outcomes), results.fencing_tokens)
            )
        return [
            Transition(r.document_id, TransitionOutcome(r.outcome), r.fencing_token) for r in response.results
        ]

    async def transition_claimed(
        self, claim: Claim, documents: Sequence[HasLease], to_stage: str, reason: str = ""
    ) -> list[Transition]:
        """:meth:`transition` out of ``claim.claim_stage`` by ``claim.worker_id``."""
        return await self.transition(
            claim.pipeline_id,
            documents,
            from_stage=claim.claim_stage,
            worker_id=claim.worker_id,
            to_stage=to_stage,
            reason=reason,
        )
