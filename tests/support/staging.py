"""Staging documents through the gateway's StagingService, as a producer does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc


async def stage_documents(
    channel: aio.Channel, pipeline_id: str, documents: Sequence[document_pb2.Document], batch: int = 50
) -> None:
    """Stage ``documents`` through one StageDocuments stream, ``batch`` per message; a document
    that is not staged raises ``RuntimeError`` naming it and the gateway's error."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)

    async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        for start in range(0, len(documents), batch):
            yield staging_pb2.StageDocumentsRequest(
                pipeline_id=pipeline_id, documents=documents[start : start + batch]
            )

    async for response in stub.StageDocuments(requests()):
        for result in response.results:
            if result.outcome != staging_pb2.STAGE_OUTCOME_STAGED:
                raise RuntimeError(f"document {result.document_id} not staged: {result.error.message}")
