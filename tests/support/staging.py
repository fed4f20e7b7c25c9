"""Documents staged through the gateway's StagingService, as a producer stages them, and read
back with GetDocument."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc


def document(
    doc_id: str, chunks: int = 3, *, text: str = "chunk text", page: bool = True
) -> document_pb2.Document:
    """A document of ``chunks`` chunks with ids ``{doc_id}-{j}`` and texts ``{text} {doc_id} {j}``."""
    doc = document_pb2.Document(id=doc_id)
    for j in range(chunks):
        chunk = doc.chunks.add(id=f"{doc_id}-{j}", text=f"{text} {doc_id} {j}")
        if page:
            chunk.metadata.update({"page": j})
    return doc


async def stage(
    channel: aio.Channel,
    pipeline_id: str,
    *batches: Sequence[document_pb2.Document],
    skip_unchanged: bool = False,
) -> list[staging_pb2.StageResult]:
    """Stage batches through one StageDocuments stream, a message each; every result, in order."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)

    async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        for batch in batches:
            yield staging_pb2.StageDocumentsRequest(
                pipeline_id=pipeline_id, documents=list(batch), skip_unchanged=skip_unchanged
            )

    results: list[staging_pb2.StageResult] = []
    async for response in stub.StageDocuments(requests()):
        results.extend(response.results)
    return results


async def stage_documents(
    channel: aio.Channel, pipeline_id: str, documents: Sequence[document_pb2.Document], batch: int = 50
) -> None:
    """Stage ``documents`` through one StageDocuments stream, ``batch`` per message; a document
    that is not staged raises ``RuntimeError`` naming it and the gateway's error."""
    batches = [documents[start : start + batch] for start in range(0, len(documents), batch)]
    for result in await stage(channel, pipeline_id, *batches):
        if result.outcome != staging_pb2.STAGE_OUTCOME_STAGED:
            raise RuntimeError(f"document {result.document_id} not staged: {result.error.message}")


async def get_document(channel: aio.Channel, pipeline_id: str, document_id: str) -> staging_pb2.DocumentState:
    """GetDocument: the document's stage, fencing token and counts."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    response = await stub.GetDocument(
        staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id)
    )
    state: staging_pb2.DocumentState = response.document
    return state
