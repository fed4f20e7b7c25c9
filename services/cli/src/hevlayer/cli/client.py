"""The gateway, as the CLI calls it: thin async wrappers over the public v1 services.

Every failed call raises the :class:`~hevlayer.common.errors.ServiceError` the
server raised (rebuilt with ``service_error_from_rpc_error``: code, message,
field violations, retry delay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from google.protobuf import struct_pb2
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.common.channels import create_channel
from hevlayer.common.errors import ServiceError, service_error_from_rpc_error

DEFAULT_GATEWAY = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
STREAM_TIMEOUT = 600.0

T = TypeVar("T")


def rpc_error(error: aio.AioRpcError) -> ServiceError:
    """The ServiceError of a failed call."""
    return service_error_from_rpc_error(error)


class Gateway:
    """A channel to the gateway and the calls the CLI makes."""

    def __init__(self, address: str = DEFAULT_GATEWAY, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = create_channel(address)
        self.pipelines = pipeline_pb2_grpc.PipelineServiceStub(self.channel)
        self.staging = staging_pb2_grpc.StagingServiceStub(self.channel)
        self.leases = lease_pb2_grpc.LeaseServiceStub(self.channel)
        self.index = index_pb2_grpc.IndexServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout)
        except aio.AioRpcError as error:
            raise rpc_error(error) from None

    # -- pipelines --------------------------------------------------------------------------------

    async def get_pipeline(self, pipeline_id: str) -> pipeline_pb2.Pipeline:
        response = await self._unary(
            self.pipelines.GetPipeline, pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id)
        )
        pipeline: pipeline_pb2.Pipeline = response.pipeline
        return pipeline

    async def create_pipeline(self, pipeline: pipeline_pb2.Pipeline) -> pipeline_pb2.Pipeline:
        response = await self._unary(
            self.pipelines.CreatePipeline, pipeline_pb2.CreatePipelineRequest(pipeline=pipeline)
        )
        created: pipeline_pb2.Pipeline = response.pipeline
        return created

    async def list_pipelines(self) -> list[pipeline_pb2.Pipeline]:
        pipelines: list[pipeline_pb2.Pipeline] = []
        token = ""
        while True:
            response = await self._unary(
                self.pipelines.ListPipelines,
                pipeline_pb2.ListPipelinesRequest(page_size=1000, page_token=token),
            )
            pipelines.extend(response.pipelines)
            token = response.next_page_token
            if not token:
                return pipelines

    async def delete_pipeline(self, pipeline_id: str) -> pipeline_pb2.DeletePipelineResponse:
        response: pipeline_pb2.DeletePipelineResponse = await self._unary(
            self.pipelines.DeletePipeline, pipeline_pb2.DeletePipelineRequest(pipeline_id=pipeline_id)
        )
        return response

    async def pipeline_status(self, pipeline_id: str) -> pipeline_pb2.PipelineStatus:
        response = await self._unary(
            self.pipelines.GetPipelineStatus, pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
        )
        status: pipeline_pb2.PipelineStatus = response.status
        return status

    async def watch_status(
        self, pipeline_id: str, min_interval_ms: int = 250
    ) -> AsyncIterator[pipeline_pb2.PipelineStatus]:
        """The pipeline's status now, then on every change; ends when the server ends the stream."""
        call = self.pipelines.WatchPipelineStatus(
            pipeline_pb2.WatchPipelineStatusRequest(pipeline_id=pipeline_id, min_interval_ms=min_interval_ms)
        )
        try:
            async for response in call:
                yield response.status
        except aio.AioRpcError as error:
            raise rpc_error(error) from None
        finally:
            call.cancel()

    # -- staging ----------------------------------------------------------------------------------

    async def enqueue(
        self,
        pipeline_id: str,
        batches: AsyncIterator[Sequence[tuple[str, str]]],
        *,
        stage: str,
        skip_unchanged: bool,
    ) -> staging_pb2.EnqueueDocumentsResponse:
        """EnqueueDocuments of ``(document id, content hash)`` batches, one stream."""

        async def requests() -> AsyncIterator[staging_pb2.EnqueueDocumentsRequest]:
            async for batch in batches:
                yield staging_pb2.EnqueueDocumentsRequest(
                    pipeline_id=pipeline_id,
                    stage=stage,
                    skip_unchanged=skip_unchanged,
                    documents=[
                        staging_pb2.EnqueuedDocument(document_id=doc, content_hash=h) for doc, h in batch
                    ],
                )

        try:
            response: staging_pb2.EnqueueDocumentsResponse = await self.staging.EnqueueDocuments(requests())
        except aio.AioRpcError as error:
            raise rpc_error(error) from None
        return response

    async def stage(
        self,
        pipeline_id: str,
        documents: Sequence[document_pb2.Document],
        *,
        skip_unchanged: bool = False,
        leases: Sequence[tuple[str, int]] = (),
    ) -> list[staging_pb2.StageResult]:
        """StageDocuments of one batch; a result per document, in order. ``leases``
        (document id, fencing token): the claims that staging these documents ends."""

        async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
            yield staging_pb2.StageDocumentsRequest(
                pipeline_id=pipeline_id,
                documents=list(documents),
                skip_unchanged=skip_unchanged,
                leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases],
            )

        results: list[staging_pb2.StageResult] = []
        call = self.staging.StageDocuments(requests(), timeout=STREAM_TIMEOUT)
        try:
            async for response in call:
                results.extend(response.results)
        except aio.AioRpcError as error:
            raise rpc_error(error) from None
        return results

    async def list_documents(
        self, pipeline_id: str, *, id_prefix: str = "", stage: str = ""
    ) -> AsyncIterator[staging_pb2.DocumentState]:
        call = self.staging.ListDocuments(
            staging_pb2.ListDocumentsRequest(pipeline_id=pipeline_id, id_prefix=id_prefix, stage=stage),
            timeout=STREAM_TIMEOUT,
        )
        try:
            async for response in call:
                for document in response.documents:
                    yield document
        except aio.AioRpcError as error:
            raise rpc_error(error) from None

    async def get_document(self, pipeline_id: str, document_id: str) -> staging_pb2.DocumentState:
        response = await self._unary(
            self.staging.GetDocument,
            staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id),
        )
        document: staging_pb2.DocumentState = response.document
        return document

    async def delete_documents(self, pipeline_id: str, document_ids: Iterable[str]) -> int:
        response = await self._unary(
            self.staging.DeleteDocuments,
            staging_pb2.DeleteDocumentsRequest(pipeline_id=pipeline_id, document_ids=list(document_ids)),
            timeout=STREAM_TIMEOUT,
        )
        return int(response.deleted)

    # -- leases -----------------------------------------------------------------------------------

    async def claim(
        self,
        pipeline_id: str,
        *,
        stage: str,
        claim_stage: str,
        limit: int,
        worker_id: str,
        lease_seconds: int,
    ) -> list[document_pb2.Lease]:
        response = await self._unary(
            self.leases.ClaimDocuments,
            lease_pb2.ClaimDocumentsRequest(
                pipeline_id=pipeline_id,
                stage=stage,
                claim_stage=claim_stage,
                limit=limit,
                worker_id=worker_id,
                lease_seconds=lease_seconds,
            ),
        )
        return list(response.leases)

    async def heartbeat(
        self,
        pipeline_id: str,
        *,
        stage: str,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease_seconds: int,
    ) -> list[lease_pb2.HeartbeatResult]:
        response = await self._unary(
            self.leases.HeartbeatLeases,
            lease_pb2.HeartbeatLeasesRequest(
                pipeline_id=pipeline_id,
                stage=stage,
                worker_id=worker_id,
                leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases],
                lease_seconds=lease_seconds,
            ),
        )
        return list(response.results)

    async def transition(
        self,
        pipeline_id: str,
        *,
        from_stage: str,
        to_stage: str,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        reason: str = "",
    ) -> list[lease_pb2.TransitionResult]:
        response = await self._unary(
            self.leases.TransitionDocuments,
            lease_pb2.TransitionDocumentsRequest(
                pipeline_id=pipeline_id,
                documents=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases],
                from_stage=from_stage,
                to_stage=to_stage,
                worker_id=worker_id,
                reason=reason,
            ),
        )
        return list(response.results)

    # -- index ------------------------------------------------------------------------------------

    async def query(
        self, pipeline_id: str, text: str, *, top_k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[index_pb2.QueryHit]:
        request = index_pb2.QueryRequest(pipeline_id=pipeline_id, text=text, top_k=top_k)
        if filter:
            structure = struct_pb2.Struct()
            structure.update(dict(filter))
            request.filter.CopyFrom(structure)
        response = await self._unary(self.index.Query, request, timeout=max(self.timeout, 60.0))
        return list(response.hits)
