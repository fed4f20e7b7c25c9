"""Helpers of the claimer tests: a controllable clock, stores wired on a
real PostgreSQL and S3, a full (scanning) count to check the counters, EnqueueIds
streams (``batches``) and the segment objects of a pipeline (``keys``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hevlayer.claimer.database import Database
from hevlayer.claimer.documents import DocumentStore, EnqueueBatch
from hevlayer.claimer.leases import LeaseStore
from hevlayer.claimer.manifests import ManifestCache, ObjectStore, segments_prefix
from hevlayer.claimer.pipelines import PipelineDefaults, PipelineSpec, PipelineStore
from hevlayer.claimer.segments import SegmentQueue
from hevlayer.client.naming import incarnation_of, pack_prefix
from hevlayer.client.types import StagedRecord


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Stores:
    """Every store of one claimer, on one clock."""

    db: Database
    clock: FakeClock
    pipelines: PipelineStore
    leases: LeaseStore
    documents: DocumentStore
    segments: SegmentQueue | None
    objects: ObjectStore | None


def make_stores(
    db: Database, objects: ObjectStore | None = None, *, segment_size: int = 10, cache_ids: int = 100_000
) -> Stores:
    clock = FakeClock()
    segments = (
        SegmentQueue(db, objects, ManifestCache(objects, cache_ids), segment_size)
        if objects is not None
        else None
    )
    return Stores(
        db=db,
        clock=clock,
        pipelines=PipelineStore(db, PipelineDefaults(queue_backend="row"), segments),
        leases=LeaseStore(db, segments, clock),
        documents=DocumentStore(db, segments, clock),
        segments=segments,
        objects=objects,
    )


def unique_id(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_pipeline(
    stores: Stores, *, backend: str = "row", max_attempts: int = 3, lease_seconds: int = 10
) -> str:
    pipeline_id = unique_id()
    await stores.pipelines.create(
        PipelineSpec(
            id=pipeline_id,
            queue_backend=backend,
            max_attempts=max_attempts,
            default_lease_seconds=lease_seconds,
        )
    )
    return pipeline_id


async def packs_of(stores: Stores, pipeline_id: str) -> str:
    """The prefix of the pipeline's chunk packs: backings must name a pack under it."""
    record = await stores.pipelines.get(pipeline_id)
    return pack_prefix(pipeline_id, incarnation_of(record.create_time))


async def stage(stores: Stores, pipeline_id: str, ids: list[str]) -> dict[str, int]:
    """RecordStaged for ``ids`` (document ``d`` in pack ``d``: ``<packs>d#0:1``); their new tokens."""
    packs = await packs_of(stores, pipeline_id)
    batch = await stores.documents.record_staged(
        pipeline_id, [StagedRecord(doc, f"h-{doc}", f"{packs}{doc}#0:1", 1) for doc in ids]
    )
    return {r.document_id: r.fencing_token for r in batch.results}


async def counters(db: Database, pipeline_id: str) -> dict[str, int]:
    """The counter table (zero rows dropped)."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT stage, count FROM pipeline_stage_counts WHERE pipeline_id = $1 AND count <> 0",
            pipeline_id,
        )
    return {r[0]: int(r[1]) for r in rows}


async def full_count(
    db: Database, pipeline_id: str, extra: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Documents per stage by a full scan, plus the remaining ids of segments
    (and ``extra``: segment ids known to have reached a stage without a row)."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            """SELECT stage, sum(n)::bigint FROM (
                   SELECT stage, count(*) AS n FROM documents WHERE pipeline_id = $1 GROUP BY stage
                   UNION ALL
                   SELECT stage, sum(remaining) FROM queue_segments WHERE pipeline_id = $1 GROUP BY stage
               ) x GROUP BY stage""",
            pipeline_id,
        )
    out = {r[0]: int(r[1]) for r in rows if r[1]}
    for stage_name, count in (extra or {}).items():
        out[stage_name] = out.get(stage_name, 0) + count
    return {k: v for k, v in out.items() if v}


async def batches(
    pipeline_id: str,
    ids: Sequence[str],
    hashes: Sequence[str] | None = None,
    *,
    per_message: int = 7,
    stage: str = "",
    skip_unchanged: bool = False,
) -> AsyncIterator[EnqueueBatch]:
    """An EnqueueIds stream of ``ids``, ``per_message`` ids per message."""
    hashes = list(hashes) if hashes is not None else [""] * len(ids)
    for start in range(0, len(ids), per_message):
        yield EnqueueBatch(
            pipeline_id,
            ids[start : start + per_message],
            hashes[start : start + per_message],
            stage=stage,
            skip_unchanged=skip_unchanged,
        )


async def keys(stores: Stores, pipeline_id: str) -> list[str]:
    assert stores.objects is not None
    return await stores.objects.list_keys(segments_prefix(pipeline_id))
