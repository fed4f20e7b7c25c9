"""A worker's calls through the gateway: claim pending documents, read their chunks, write their
vectors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc

WORKER = "gpu-worker-0"
CLAIM_STAGE = "embedding"


async def claim(
    channel: aio.Channel, pipeline_id: str, limit: int = 100, *, worker: str = WORKER, lease_seconds: int = 0
) -> dict[str, int]:
    """Claim pending documents into ``embedding``; document id -> fencing token."""
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    response = await stub.ClaimDocuments(
        lease_pb2.ClaimDocumentsRequest(
            pipeline_id=pipeline_id,
            stage="pending",
            claim_stage=CLAIM_STAGE,
            limit=limit,
            worker_id=worker,
            lease_seconds=lease_seconds,
        )
    )
    return {lease.document_id: lease.fencing_token for lease in response.leases}


async def read_chunks(
    channel: aio.Channel, pipeline_id: str, leases: dict[str, int], *, worker: str = WORKER
) -> list[staging_pb2.ReadChunksResponse]:
    """Every ReadChunks response for ``leases``."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    request = staging_pb2.ReadChunksRequest(
        pipeline_id=pipeline_id,
        worker_id=worker,
        stage=CLAIM_STAGE,
        leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases.items()],
    )
    return [response async for response in stub.ReadChunks(request)]


async def write_vectors(
    channel: aio.Channel,
    pipeline_id: str,
    document_id: str,
    token: int,
    vectors: Sequence[document_pb2.Vector],
    *,
    worker: str = WORKER,
) -> list[index_pb2.WriteResult]:
    """WriteVectors of one leased document's ``vectors`` in one message; its results."""

    async def requests() -> AsyncIterator[index_pb2.WriteVectorsRequest]:
        yield index_pb2.WriteVectorsRequest(
            pipeline_id=pipeline_id,
            worker_id=worker,
            from_stage=CLAIM_STAGE,
            lease=document_pb2.LeaseRef(document_id=document_id, fencing_token=token),
            vectors=vectors,
            end_of_document=True,
        )

    response = await index_pb2_grpc.IndexServiceStub(channel).WriteVectors(requests())
    return list(response.results)
