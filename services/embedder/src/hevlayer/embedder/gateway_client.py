"""The worker's only peer besides Triton: the gateway's public gRPC API.

Thin wrappers over the generated stubs (LeaseService, StagingService,
IndexService, PipelineService) that turn failed calls into
:mod:`hevlayer.common.errors` exceptions (details kept: RetryInfo,
ErrorInfo) and protos into the worker's values. The channel comes from
:func:`hevlayer.common.channels.create_channel`, so UNAVAILABLE is retried
by gRPC itself (with backoff) before it reaches the worker.

Leases travel in the columnar layout (``LeaseColumns``, ``LeaseRefColumns``,
``*ResultColumns``): one message per batch instead of one per document. A
server that predates it answers claims with per-lease messages (read as
well) and heartbeats or transitions without result columns; those calls are
then sent again, and from then on, with per-document messages.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import grpc
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import ServiceError, service_error_from_rpc_error
from hevlayer.embedder.inflight import InFlightDocument, Outcome, WriteResult

UNARY_TIMEOUT = 30.0
WRITE_TIMEOUT = 300.0
MESSAGE_BYTES = 1 << 20
"""WriteVectors messages are cut at about this size (a document's vectors may span several)."""

_WRITE_OUTCOMES = {
    index_pb2.WRITE_OUTCOME_INDEXED: Outcome.INDEXED,
    index_pb2.WRITE_OUTCOME_STALE_LEASE: Outcome.LOST,
    index_pb2.WRITE_OUTCOME_REJECTED: Outcome.FAILED,
}
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@dataclass(frozen=True)
class Claim:
    """Where documents are claimed from and into."""

    pipeline_id: str
    worker_id: str
    from_stage: str
    claim_stage: str
    lease_seconds: int = 0


@dataclass(frozen=True)
class Lease:
    """A granted lease, with its expiry as a ``time.monotonic()`` deadline."""

    document_id: str
    fencing_token: int
    expires_at: float
    attempts: int
    chunk_count: int
    trace_parent: str = ""
    """W3C trace context of the document's staging ("": none); its spans continue that trace."""


def monotonic_deadline(stamp: datetime.datetime) -> float:
    """A wall-clock expiry as a ``time.monotonic()`` deadline."""
    now = datetime.datetime.now(datetime.UTC)
    return time.monotonic() + (stamp - now).total_seconds()


def lease_of(lease: document_pb2.Lease) -> Lease:
    expires = lease.expires_at.ToDatetime(tzinfo=datetime.UTC)
    return Lease(
        lease.document_id,
        lease.fencing_token,
        monotonic_deadline(expires),
        lease.attempts,
        lease.chunk_count,
        lease.trace_parent,
    )


def leases_of(response: lease_pb2.ClaimDocumentsResponse | lease_pb2.StreamLeasesResponse) -> list[Lease]:
    """The leases of a claim's answer, in either layout."""
    if not response.HasField("lease_columns"):
        return [lease_of(lease) for lease in response.leases]
    columns = response.lease_columns
    deadline = monotonic_deadline(columns.expires_at.ToDatetime(tzinfo=datetime.UTC))
    return list(
        map(
            Lease,
            columns.document_ids,
            columns.fencing_tokens,
            repeat(deadline),
            columns.attempts,
            columns.chunk_counts,
            columns.trace_parents if len(columns.trace_parents) == len(columns.document_ids) else repeat(""),
        )
    )


def refs(documents: Sequence[InFlightDocument]) -> list[document_pb2.LeaseRef]:
    return [
        document_pb2.LeaseRef(document_id=d.document_id, fencing_token=d.fencing_token) for d in documents
    ]


def ref_columns(documents: Sequence[InFlightDocument]) -> lease_pb2.LeaseRefColumns:
    return lease_pb2.LeaseRefColumns(
        document_ids=[d.document_id for d in documents],
        fencing_tokens=[d.fencing_token for d in documents],
    )


def error_message(error: document_pb2.DocumentError) -> str:
    return error.message or f"error code {error.code}"


class GatewayClient:
    """Calls of the worker to the gateway over one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self._leases = lease_pb2_grpc.LeaseServiceStub(channel)
        self._staging = staging_pb2_grpc.StagingServiceStub(channel)
        self._index = index_pb2_grpc.IndexServiceStub(channel)
        self._pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
        self.columns = True
        """False once the server answered a columnar heartbeat or transition without columns."""

    @classmethod
    def connect(cls, address: str) -> GatewayClient:
        return cls(open_channel(address))

    def _name_documents(
        self, columns: lease_pb2.LeaseRefColumns, messages: Any, documents: Sequence[InFlightDocument]
    ) -> bool:
        """Name ``documents`` in a heartbeat or transition request: in its ``columns`` field,
        or its repeated LeaseRef ``messages`` once this client fell back to them (or when
        there are none). True if as columns."""
        if self.columns and documents:
            columns.CopyFrom(ref_columns(documents))
            return True
        messages.extend(refs(documents))
        return False

    def _server_predates_columns(self, as_columns: bool, response: Any) -> bool:
        """True, and per-document messages from now on, if a request sent as columns was
        answered without result columns (a server from before the layout saw an empty batch)."""
        if as_columns and not response.HasField("result_columns"):
            self.columns = False
            return True
        return False

    async def close(self) -> None:
        await self.channel.close()

    # -- pipelines -------------------------------------------------------------------------

    async def pipeline_ids(self) -> list[str]:
        """Every pipeline's id (ListPipelines, all pages)."""
        ids: list[str] = []
        token = ""
        try:
            while True:
                response = await self._pipelines.ListPipelines(
                    pipeline_pb2.ListPipelinesRequest(page_size=1000, page_token=token), timeout=UNARY_TIMEOUT
                )
                ids.extend(p.id for p in response.pipelines)
                token = response.next_page_token
                if not token:
                    return ids
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None

    # -- leases --------------------------------------------------------------------------

    async def stream_leases(
        self, claim: Claim, credits: AsyncIterable[int], initial_credits: int
    ) -> AsyncIterator[list[Lease]]:
        """StreamLeases: open with ``initial_credits``, then one credit message per
        value of ``credits``; yields each batch of granted leases. When ``credits``
        ends the stream is half-closed and ends once the server has finished."""

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

        call = self._leases.StreamLeases(requests())
        try:
            async for response in call:
                yield leases_of(response)
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        finally:
            call.cancel()

    async def claim(self, claim: Claim, limit: int) -> list[Lease]:
        """ClaimDocuments (the polling fallback of StreamLeases)."""
        try:
            response = await self._leases.ClaimDocuments(
                lease_pb2.ClaimDocumentsRequest(
                    pipeline_id=claim.pipeline_id,
                    stage=claim.from_stage,
                    claim_stage=claim.claim_stage,
                    limit=limit,
                    worker_id=claim.worker_id,
                    lease_seconds=claim.lease_seconds,
                    layout=lease_pb2.LEASE_LAYOUT_COLUMNS,
                ),
                timeout=UNARY_TIMEOUT,
            )
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        return leases_of(response)

    async def heartbeat(self, claim: Claim, documents: Sequence[InFlightDocument]) -> list[float | None]:
        """HeartbeatLeases: per document the new monotonic deadline, or None if the lease is lost."""
        request = lease_pb2.HeartbeatLeasesRequest(
            pipeline_id=claim.pipeline_id,
            stage=claim.claim_stage,
            worker_id=claim.worker_id,
            lease_seconds=claim.lease_seconds,
        )
        columns = self._name_documents(request.lease_columns, request.leases, documents)
        try:
            response = await self._leases.HeartbeatLeases(request, timeout=UNARY_TIMEOUT)
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        if self._server_predates_columns(columns, response):
            return await self.heartbeat(claim, documents)
        if columns:
            results = response.result_columns
            deadline = monotonic_deadline(results.expires_at.ToDatetime(tzinfo=datetime.UTC))
            return [deadline if extended else None for extended in results.extended]
        return [
            monotonic_deadline(r.expires_at.ToDatetime(tzinfo=datetime.UTC)) if r.extended else None
            for r in response.results
        ]

    async def transition(
        self, claim: Claim, documents: Sequence[InFlightDocument], to_stage: str, reason: str = ""
    ) -> list[bool]:
        """TransitionDocuments out of the claim stage; per document whether it moved."""
        request = lease_pb2.TransitionDocumentsRequest(
            pipeline_id=claim.pipeline_id,
            from_stage=claim.claim_stage,
            worker_id=claim.worker_id,
            to_stage=to_stage,
            reason=reason,
        )
        columns = self._name_documents(request.document_columns, request.documents, documents)
        try:
            response = await self._leases.TransitionDocuments(request, timeout=UNARY_TIMEOUT)
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        if self._server_predates_columns(columns, response):
            return await self.transition(claim, documents, to_stage, reason)
        moved = lease_pb2.TRANSITION_OUTCOME_MOVED
        if columns:
            return [outcome == moved for outcome in response.result_columns.outcomes]
        return [r.outcome == moved for r in response.results]

    # -- chunks and vectors ----------------------------------------------------------------

    async def read_chunks(
        self, claim: Claim, documents: Sequence[InFlightDocument]
    ) -> AsyncIterator[staging_pb2.ReadChunksResponse]:
        """ReadChunks of held documents, response by response."""
        call = self._staging.ReadChunks(
            staging_pb2.ReadChunksRequest(
                pipeline_id=claim.pipeline_id,
                worker_id=claim.worker_id,
                stage=claim.claim_stage,
                leases=refs(documents),
            )
        )
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        finally:
            call.cancel()

    async def write_vectors(self, claim: Claim, documents: Sequence[InFlightDocument]) -> list[WriteResult]:
        """WriteVectors of complete documents through one stream; one result per document."""

        def requests() -> list[index_pb2.WriteVectorsRequest]:
            messages: list[index_pb2.WriteVectorsRequest] = []
            for document in documents:
                lease = document_pb2.LeaseRef(
                    document_id=document.document_id,
                    fencing_token=document.fencing_token,
                    trace_parent=document.trace_parent,
                )
                vectors = document.written_vectors()
                start = 0
                while True:
                    size = 0
                    end = start
                    while end < len(vectors) and (end == start or size < MESSAGE_BYTES):
                        size += vectors[end].ByteSize()
                        end += 1
                    messages.append(
                        index_pb2.WriteVectorsRequest(
                            pipeline_id=claim.pipeline_id,
                            worker_id=claim.worker_id,
                            from_stage=claim.claim_stage,
                            lease=lease,
                            vectors=vectors[start:end],
                            end_of_document=end >= len(vectors),
                        )
                    )
                    start = end
                    if start >= len(vectors):
                        break
            return messages

        async def stream(
            messages: list[index_pb2.WriteVectorsRequest],
        ) -> AsyncIterator[index_pb2.WriteVectorsRequest]:
            for message in messages:
                yield message

        try:
            response = await self._index.WriteVectors(stream(requests()), timeout=WRITE_TIMEOUT)
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        by_id = {r.document_id: r for r in response.results}
        results: list[WriteResult] = []
        for document in documents:
            result = by_id.get(document.document_id)
            if result is None:
                raise ServiceError(
                    f"WriteVectors returned no result for document {document.document_id!r}",
                    reason="MISSING_WRITE_RESULT",
                )
            outcome = _WRITE_OUTCOMES.get(result.outcome, Outcome.FAILED)
            if result.outcome == index_pb2.WRITE_OUTCOME_REJECTED and result.error.code == _NOT_FOUND:
                outcome = Outcome.LOST  # deleted meanwhile
            results.append(
                WriteResult(
                    document.document_id,
                    outcome,
                    error_message(result.error) if result.HasField("error") else "",
                    result.vectors_written,
                )
            )
        return results
