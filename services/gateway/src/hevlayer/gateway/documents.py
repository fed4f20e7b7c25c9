"""Deleting documents: their state, chunk backing, cache entries and vectors (the
transport-free core of DeleteDocuments and of the REST deletion route)."""

from __future__ import annotations

from collections.abc import Sequence

from hevlayer.common.errors import InvalidArgument, ServiceError
from hevlayer.gateway.cache import ResilientCache
from hevlayer.gateway.chunkstore import ChunkStore
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.indexing import VectorWriter
from hevlayer.gateway.metrics import ORPHANS

MAX_DELETE = 10_000


async def delete_documents(
    claimer: ClaimerClient,
    store: ChunkStore,
    cache: ResilientCache,
    writer: VectorWriter,
    pipeline_id: str,
    document_ids: Sequence[str],
) -> int:
    """Delete documents; the number whose state existed.

    Order: the pipeline's sink is opened (and, for Milvus Lite, checked against the
    database the pipeline is bound to) before anything is deleted, so a gateway that cannot
    reach the rows deletes nothing; then the state (ForgetDocuments), so no worker can write
    them any more; then the released pack objects; then the sink rows of *every* requested
    id. A failure after the state is gone (S3, sink) raises, and repeating the call finishes
    the job: ForgetDocuments ignores unknown ids and the sink deletion is idempotent.
    """
    if not pipeline_id:
        raise InvalidArgument.field("pipeline_id", "is required")
    if len(document_ids) > MAX_DELETE:
        raise InvalidArgument.field("document_ids", f"at most {MAX_DELETE} ids per call")
    for index, document_id in enumerate(document_ids):
        if not document_id:
            raise InvalidArgument.field(f"document_ids[{index}]", "is required")
    ids = list(dict.fromkeys(document_ids))
    if not ids:
        return 0
    pipeline = await claimer.pipeline(pipeline_id, fresh=True)
    sink = await writer.sink_for(pipeline)
    deleted = await forget_documents(claimer, store, cache, pipeline, ids)
    try:
        await sink.delete_documents(pipeline.target_namespace, ids)
    except ServiceError as error:
        raise writer.sink_failure(pipeline, "delete", error) from None
    return deleted


async def forget_documents(
    claimer: ClaimerClient,
    store: ChunkStore,
    cache: ResilientCache,
    pipeline: PipelineInfo,
    document_ids: Sequence[str],
) -> int:
    """Delete documents' state, released pack objects and cache entries; the count deleted."""
    backings, deleted, released = await claimer.forget(pipeline.id, document_ids)
    if released:
        await store.delete_objects(released)
        ORPHANS.labels("released").inc(len(released))
    cache.delete_later(pipeline.target_namespace, [b for b in backings if b])
    return deleted
