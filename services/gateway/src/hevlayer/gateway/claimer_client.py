"""The gateway's client of the claimer (the owner of pipeline and document state).

Pipeline and lease calls go through :mod:`hevlayer.client` (its
PipelinesClient and LeasesClient, with their value types); the claimer's
internal DocumentStateService is wrapped here. Every failed call is turned
back into the :class:`~hevlayer.common.errors.ServiceError` the claimer raised
(details included), so the cores and both transports see one kind of error.
Pipelines are cached briefly (:class:`PipelineInfo`): staging needs a
pipeline's namespace on every batch, and its immutable fields never change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from grpc import aio

from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.claimer.v1 import (
    document_state_pb2,
    document_state_pb2_grpc,
    token_verification_pb2,
    token_verification_pb2_grpc,
)
from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client import LeaseRef, LeasesClient, PipelinesClient
from hevlayer.client.naming import effective_namespace, incarnation
from hevlayer.client.types import StagedRecord, StagedResult, Transition
from hevlayer.common.errors import InvalidArgument, service_error_from_rpc_error

T = TypeVar("T")

# CheckLeases needs a worker, a worker stage and a fencing token (0 is no wildcard); the
# gateway asks as this never-held identity, with a token no lease ever gets, when it only
# wants what the claimer knows of a document (found, backing, current fencing token).
PROBE_WORKER = "hevlayer-gateway"
PROBE_STAGE = "gateway-probe"
PROBE_TOKEN = 2**63 - 1

_METRICS = {
    pipeline_pb2.DISTANCE_METRIC_UNSPECIFIED: "cosine_distance",
    pipeline_pb2.DISTANCE_METRIC_COSINE_DISTANCE: "cosine_distance",
    pipeline_pb2.DISTANCE_METRIC_EUCLIDEAN_SQUARED: "euclidean_squared",
}
_SINKS = {
    pipeline_pb2.SINK_UNSPECIFIED: "",
    pipeline_pb2.SINK_MILVUS_LITE: "milvus_lite",
    pipeline_pb2.SINK_MILVUS: "milvus",
    pipeline_pb2.SINK_TURBOPUFFER: "turbopuffer",
}


@dataclass(frozen=True)
class PipelineInfo:
    """What the gateway needs to know about a pipeline."""

    id: str
    target_namespace: str
    distance_metric: str
    sink: str
    dimension: int
    incarnation: str
    """Distinguishes a pipeline from an earlier one with the same id (its
    creation time in microseconds, hex: :func:`hevlayer.client.naming.incarnation`); part of
    its pack keys."""

    @classmethod
    def from_proto(cls, pipeline: pipeline_pb2.Pipeline) -> PipelineInfo:
        """From a Pipeline message."""
        return cls(
            id=pipeline.id,
            target_namespace=effective_namespace(pipeline.id, pipeline.target_namespace),
            distance_metric=_METRICS.get(pipeline.distance_metric, "cosine_distance"),
            sink=_SINKS.get(pipeline.sink, ""),
            dimension=pipeline.dimension,
            incarnation=incarnation(pipeline.create_time.ToMicroseconds()),
        )


@dataclass(frozen=True)
class LeaseCheck:
    """CheckLeases' answer for one document."""

    document_id: str
    held: bool
    found: bool
    backing: str
    fencing_token: int


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except aio.AioRpcError as error:
        raise service_error_from_rpc_error(error) from None


class ClaimerClient:
    """Calls the claimer's DocumentStateService, PipelineService and LeaseService."""

    def __init__(self, channel: aio.Channel, *, timeout: float = 30.0, pipeline_ttl: float = 30.0) -> None:
        self.channel = channel
        self.timeout = timeout
        self.pipeline_ttl = pipeline_ttl
        self.documents = document_state_pb2_grpc.DocumentStateServiceStub(channel)
        self.leases = lease_pb2_grpc.LeaseServiceStub(channel)
        self.tokens = token_verification_pb2_grpc.TokenVerificationServiceStub(channel)
        self._pipelines = PipelinesClient(channel)
        self._leases = LeasesClient(channel)
        self._pipeline_cache: dict[str, tuple[float, PipelineInfo]] = {}

    # -- tokens ----------------------------------------------------------------------------

    async def verify_token(self, token_hash: bytes) -> auth_pb2.Token | None:
        """The valid token with this SHA-256 hash; None if unknown or revoked."""
        request = token_verification_pb2.VerifyTokenRequest(token_hash=token_hash)
        response = await _call(self.tokens.VerifyToken(request, timeout=self.timeout))
        return response.token if response.found else None

    # -- pipelines -------------------------------------------------------------------------

    async def get_pipeline(self, pipeline_id: str) -> pipeline_pb2.Pipeline:
        """GetPipeline (NOT_FOUND if it does not exist)."""
        pipeline = await self._pipelines.get(pipeline_id, timeout=self.timeout)
        self._remember(PipelineInfo.from_proto(pipeline))
        return pipeline

    async def pipeline(self, pipeline_id: str, *, fresh: bool = False) -> PipelineInfo:
        """The pipeline's info, from a cache of ``pipeline_ttl`` seconds unless ``fresh``."""
        if not pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        cached = self._pipeline_cache.get(pipeline_id)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self.pipeline_ttl:
            return cached[1]
        return PipelineInfo.from_proto(await self.get_pipeline(pipeline_id))

    def _remember(self, info: PipelineInfo) -> None:
        self._pipeline_cache[info.id] = (time.monotonic(), info)

    def forget_pipeline(self, pipeline_id: str) -> None:
        """Drop a cached pipeline (it was deleted or re-created)."""
        self._pipeline_cache.pop(pipeline_id, None)

    async def set_dimension(self, pipeline_id: str, dimension: int) -> bool:
        """Record a pipeline's dimension (fixed by its first write); False if the
        claimer does not accept ``dimension`` in an update mask."""
        try:
            pipeline = await self._pipelines.update(
                pipeline_pb2.Pipeline(id=pipeline_id, dimension=dimension),
                ["dimension"],
                timeout=self.timeout,
            )
        except InvalidArgument:
            return False
        self._remember(PipelineInfo.from_proto(pipeline))
        return True

    async def list_pipelines(self) -> list[pipeline_pb2.Pipeline]:
        """Every pipeline (all pages)."""
        return await self._pipelines.list(timeout=self.timeout)

    async def pipeline_status(self, pipeline_id: str) -> pipeline_pb2.PipelineStatus:
        """GetPipelineStatus."""
        return await self._pipelines.status(pipeline_id, timeout=self.timeout)

    # -- documents -------------------------------------------------------------------------

    async def record_staged(
        self, pipeline_id: str, records: Sequence[StagedRecord], *, skip_unchanged: bool
    ) -> tuple[list[StagedResult], list[str]]:
        """RecordStaged: per-record results and the released object keys."""
        request = document_state_pb2.RecordStagedRequest(
            pipeline_id=pipeline_id,
            records=[
                document_state_pb2.StagedRecord(
                    document_id=r.document_id,
                    content_hash=r.content_hash,
                    backing=r.backing,
                    chunk_count=r.chunk_count,
                    lease_token=r.lease_token,
                    trace_parent=r.trace_parent,
                )
                for r in records
            ],
            skip_unchanged=skip_unchanged,
        )
        response = await _call(self.documents.RecordStaged(request, timeout=self.timeout))
        results = [
            StagedResult(r.document_id, r.fencing_token, r.previous_backing, r.unchanged)
            for r in response.results
        ]
        return results, list(response.released_objects)

    async def check_leases(
        self, pipeline_id: str, worker_id: str, stage: str, leases: Sequence[tuple[str, int]]
    ) -> list[LeaseCheck]:
        """CheckLeases for (document id, fencing token) pairs, in order."""
        request = document_state_pb2.CheckLeasesRequest(
            pipeline_id=pipeline_id,
            worker_id=worker_id,
            stage=stage,
            leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases],
        )
        response = await _call(self.documents.CheckLeases(request, timeout=self.timeout))
        return [
            LeaseCheck(r.document_id, r.held, r.found, r.backing, r.fencing_token) for r in response.results
        ]

    async def probe(self, pipeline_id: str, document_ids: Sequence[str]) -> list[LeaseCheck]:
        """What the claimer knows of each document, in order: found, backing and current
        fencing token (``held`` is always False): CheckLeases as the probe identity."""
        return await self.check_leases(
            pipeline_id, PROBE_WORKER, PROBE_STAGE, [(d, PROBE_TOKEN) for d in document_ids]
        )

    async def current_tokens(self, pipeline_id: str, document_ids: Sequence[str]) -> list[int]:
        """Each document's current fencing token, for callers that name none (the seed's
        REST routes); :data:`PROBE_TOKEN`, which matches no lease, for a document the
        claimer does not know or that has none yet."""
        checks = await self.probe(pipeline_id, document_ids)
        return [c.fencing_token if c.found and c.fencing_token else PROBE_TOKEN for c in checks]

    async def content_hashes(self, pipeline_id: str, document_ids: Sequence[str]) -> dict[str, str]:
        """GetContentHashes: stored hash per known, non-failed document."""
        response = await _call(
            self.documents.GetContentHashes(
                document_state_pb2.GetContentHashesRequest(
                    pipeline_id=pipeline_id, document_ids=document_ids
                ),
                timeout=self.timeout,
            )
        )
        return dict(response.content_hashes)

    async def live_objects(self, pipeline_id: str, object_keys: Sequence[str]) -> set[str]:
        """GetLiveObjects: the keys some live document points into."""
        response = await _call(
            self.documents.GetLiveObjects(
                document_state_pb2.GetLiveObjectsRequest(pipeline_id=pipeline_id, object_keys=object_keys),
                timeout=self.timeout,
            )
        )
        return set(response.live_object_keys)

    async def condemn_objects(self, pipeline_id: str, object_keys: Sequence[str]) -> list[str]:
        """CondemnObjects: the keys no live document points into, now condemned (RecordStaged
        refuses them from now on), in request order; the caller deletes them."""
        response = await _call(
            self.documents.CondemnObjects(
                document_state_pb2.CondemnObjectsRequest(pipeline_id=pipeline_id, object_keys=object_keys),
                timeout=self.timeout,
            )
        )
        return list(response.condemned_object_keys)

    async def bind_sink_instance(
        self, pipeline_id: str, kind: str, instance_id: str, location: str
    ) -> document_state_pb2.SinkInstance:
        """BindSinkInstance: the sink instance the pipeline is bound to (this one if it was not
        bound yet)."""
        response = await _call(
            self.documents.BindSinkInstance(
                document_state_pb2.BindSinkInstanceRequest(
                    pipeline_id=pipeline_id,
                    instance=document_state_pb2.SinkInstance(
                        kind=kind, instance_id=instance_id, location=location
                    ),
                ),
                timeout=self.timeout,
            )
        )
        bound: document_state_pb2.SinkInstance = response.bound
        return bound

    async def forget(self, pipeline_id: str, document_ids: Sequence[str]) -> tuple[list[str], int, list[str]]:
        """ForgetDocuments: (backings, deleted, released object keys)."""
        response = await _call(
            self.documents.ForgetDocuments(
                document_state_pb2.ForgetDocumentsRequest(pipeline_id=pipeline_id, document_ids=document_ids),
                timeout=self.timeout,
            )
        )
        return list(response.backings), response.deleted, list(response.released_objects)

    async def describe(self, pipeline_id: str, document_id: str) -> staging_pb2.DocumentState:
        """DescribeDocument (NOT_FOUND if unknown)."""
        response = await _call(
            self.documents.DescribeDocument(
                document_state_pb2.DescribeDocumentRequest(pipeline_id=pipeline_id, document_id=document_id),
                timeout=self.timeout,
            )
        )
        document: staging_pb2.DocumentState = response.document
        return document

    async def scan(
        self, pipeline_id: str, stage: str, id_prefix: str, *, timeout: float | None = None
    ) -> AsyncIterator[list[staging_pb2.DocumentState]]:
        """ScanDocuments, batch by batch."""
        call = self.documents.ScanDocuments(
            document_state_pb2.ScanDocumentsRequest(
                pipeline_id=pipeline_id, stage=stage, id_prefix=id_prefix
            ),
            timeout=timeout,
        )
        try:
            async for response in call:
                yield list(response.documents)
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        finally:
            call.cancel()

    async def watch(
        self, request: staging_pb2.WatchDocumentsRequest, *, timeout: float | None = None
    ) -> AsyncIterator[staging_pb2.WatchDocumentsResponse]:
        """WatchChanges, message by message (as long as the caller reads, or ``timeout``)."""
        call = self.documents.WatchChanges(
            document_state_pb2.WatchChangesRequest(watch=request), timeout=timeout
        )
        try:
            async for response in call:
                yield response.update
        except aio.AioRpcError as error:
            raise service_error_from_rpc_error(error) from None
        finally:
            call.cancel()

    async def enqueue(
        self, batches: AsyncIterator[staging_pb2.EnqueueDocumentsRequest], *, timeout: float | None = None
    ) -> staging_pb2.EnqueueDocumentsResponse:
        """EnqueueIds with the caller's batches."""

        async def requests() -> AsyncIterator[document_state_pb2.EnqueueIdsRequest]:
            async for batch in batches:
                yield document_state_pb2.EnqueueIdsRequest(batch=batch)

        response = await _call(self.documents.EnqueueIds(requests(), timeout=timeout))
        result: staging_pb2.EnqueueDocumentsResponse = response.result
        return result

    # -- leases ----------------------------------------------------------------------------

    async def transition(
        self,
        pipeline_id: str,
        documents: Sequence[tuple[str, int]],
        *,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        reason: str = "",
        trace_parents: Sequence[str] = (),
    ) -> list[Transition]:
        """TransitionDocuments for (document id, fencing token) pairs, through
        :class:`hevlayer.client.LeasesClient` (columns, or LeaseRefs to a claimer that
        predates them). ``trace_parents``: none, or each document's trace context ("" for
        none), under which the claimer records the document's move (``document.transition``)."""
        parents = trace_parents or [""] * len(documents)
        refs = [LeaseRef(d, t, p) for (d, t), p in zip(documents, parents, strict=True)]
        return await self._leases.transition(
            pipeline_id,
            refs,
            from_stage=from_stage,
            worker_id=worker_id,
            to_stage=to_stage,
            reason=reason,
            timeout=self.timeout,
        )

    async def claim(self, request: lease_pb2.ClaimDocumentsRequest) -> lease_pb2.ClaimDocumentsResponse:
        """ClaimDocuments."""
        return await _call(self.leases.ClaimDocuments(request, timeout=self.timeout))

    async def heartbeat(self, request: lease_pb2.HeartbeatLeasesRequest) -> lease_pb2.HeartbeatLeasesResponse:
        """HeartbeatLeases."""
        return await _call(self.leases.HeartbeatLeases(request, timeout=self.timeout))

    async def create_pipeline(self, request: pipeline_pb2.CreatePipelineRequest) -> pipeline_pb2.Pipeline:
        """CreatePipeline."""
        pipeline = await self._pipelines.create(request.pipeline, timeout=self.timeout)
        self._remember(PipelineInfo.from_proto(pipeline))
        return pipeline

    async def delete_pipeline(
        self, request: pipeline_pb2.DeletePipelineRequest
    ) -> pipeline_pb2.DeletePipelineResponse:
        """DeletePipeline."""
        self.forget_pipeline(request.pipeline_id)
        try:
            return await self._pipelines.delete(request.pipeline_id, timeout=self.timeout)
        finally:
            self.forget_pipeline(request.pipeline_id)
