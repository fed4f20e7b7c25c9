"""Segment rows and their manifests: what claims and transitions of the segmented queue share.

A segment is one ``queue_segments`` row (stage, lease, fencing token, counters, the ``done``
bitmap of positions already transitioned) plus one zstd manifest in S3 holding its ids
(:mod:`hevlayer.claimer.manifests`). This module reads and writes both inside the caller's
transaction (:mod:`hevlayer.claimer.txn`); a segment it drops has its manifest recorded in the
transaction's garbage, deleted after the commit by
:class:`~hevlayer.claimer.segment_garbage.ManifestGarbage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from hevlayer.claimer.database import Database
from hevlayer.claimer.manifests import ManifestCache, manifest_key
from hevlayer.claimer.txn import Work

SEGMENT_COLUMNS = (
    "segment_id, pipeline_id, stage, manifest_key, id_count, remaining, done, claimed_by, "
    "lease_expires_at, fencing_token, attempts, lease_expiries, priority, queue_order"
)


_INSERT_SEGMENTS_SQL = """
INSERT INTO queue_segments (segment_id, pipeline_id, stage, manifest_key, id_count, remaining,
                            claimed_by, claimed_at, lease_expires_at, fencing_token, attempts, lease_expiries,
                            priority, queue_order)
SELECT u.segment_id, $1, u.stage, u.manifest_key, u.id_count, u.id_count,
       u.claimed_by, u.claimed_at, u.lease_expires_at, nextval('fencing_token_seq'), u.attempts, u.expiries,
       u.priority, coalesce(u.queue_order, u.segment_id)
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[],
            $8::timestamptz[], $9::int[], $10::int[], $11::int[], $12::bigint[])
     AS u(segment_id, stage, manifest_key, id_count, claimed_by, claimed_at, lease_expires_at,
          attempts, expiries, priority, queue_order)
ORDER BY u.segment_id
RETURNING segment_id, fencing_token
"""

FAIL_IDS_SQL = """
INSERT INTO documents (pipeline_id, document_id, stage, fencing_token, attempts, lease_expiries,
                       last_error, content_hash, update_time)
SELECT $1, u.document_id, 'failed', $2, $3, $4, $5, u.content_hash, $6
FROM unnest($7::text[], $8::text[]) AS u(document_id, content_hash)
ON CONFLICT (pipeline_id, document_id) DO NOTHING
"""


SegmentInsert = tuple[
    int, str, str, int, str | None, datetime | None, datetime | None, int, int, int, int | None
]
"""A new queue_segments row: (segment_id, stage, manifest key, id count, claimed_by,
claimed_at, lease_expires_at, attempts, lease_expiries, priority, queue_order); a queue_order
of None is the segment id (a segment of newly queued ids)."""


@dataclass
class Segment:
    """One queue_segments row."""

    segment_id: int
    pipeline_id: str
    stage: str
    manifest_key: str
    id_count: int
    remaining: int
    done: bytes
    claimed_by: str | None
    lease_expires_at: datetime | None
    fencing_token: int
    attempts: int
    lease_expiries: int
    priority: int
    """Claim priority of every id in the segment (lower first; migration 0010)."""
    queue_order: int
    """Enqueue order among the segments of one priority (a split's halves keep the old one)."""

    def held_by(self, stage: str, worker_id: str, now: datetime) -> bool:
        """True while ``worker_id`` holds a live lease on it in ``stage``."""
        return (
            self.stage == stage
            and self.claimed_by == worker_id
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


def segment_of(row: asyncpg.Record) -> Segment:
    """The :class:`Segment` of a row selected with :data:`SEGMENT_COLUMNS`."""
    return Segment(**dict(row))


def is_done(done: bytes, position: int) -> bool:
    """Whether bit ``position`` of the bitmap is set."""
    byte = position >> 3
    return byte < len(done) and bool((done[byte] >> (position & 7)) & 1)


def remaining_positions(done: bytes, count: int) -> list[int]:
    """Positions of the bitmap not set, in order."""
    if not any(done):
        return list(range(count))
    return [i for i in range(count) if not is_done(done, i)]


def mark_done(done: bytes, count: int, positions: Sequence[int]) -> bytes:
    """The bitmap with ``positions`` set."""
    bitmap = bytearray(done.ljust((count + 7) // 8, b"\x00"))
    for position in positions:
        bitmap[position >> 3] |= 1 << (position & 7)
    return bytes(bitmap)


class SegmentRows:
    """Writes and drops segment rows and their manifests."""

    def __init__(self, db: Database, cache: ManifestCache, segment_size: int) -> None:
        self.db = db
        self.cache = cache
        """Manifests are written through the cache (and read back from it)."""
        self.segment_size = segment_size
        """Ids per segment written by an enqueue (``PIPELINE_SEGMENT_SIZE``)."""

    async def new_segment_ids(self, conn: asyncpg.Connection, count: int) -> list[int]:
        """Fresh segment ids."""
        rows = await conn.fetch("SELECT nextval('queue_segment_seq') FROM generate_series(1, $1)", count)
        return [int(r[0]) for r in rows]

    async def write_manifest(
        self, work: Work, pipeline_id: str, segment_id: int, ids: Sequence[str], hashes: Sequence[str] | None
    ) -> str:
        """PUT one manifest, recorded in ``work`` for cleanup if the transaction fails."""
        key = manifest_key(pipeline_id, segment_id)
        work.writing(key)
        await self.cache.put(key, ids, hashes)
        return key

    async def insert_segments(
        self,
        conn: asyncpg.Connection,
        pipeline_id: str,
        rows: Sequence[SegmentInsert],
    ) -> dict[int, int]:
        """Insert segment rows; return their tokens."""
        columns = list(zip(*rows, strict=True))
        result = await conn.fetch(_INSERT_SEGMENTS_SQL, pipeline_id, *[list(c) for c in columns])
        return {int(r[0]): int(r[1]) for r in result}

    async def priorities_of(
        self, conn: asyncpg.Connection, pipeline_id: str, ids: Sequence[str], tokens: Sequence[int]
    ) -> dict[str, int]:
        """The claim priority of each id whose lease token is a segment's (that segment's);
        ids leased otherwise are left out."""
        wanted = sorted({t for t in tokens if t > 0})
        if not wanted:
            return {}
        rows = await conn.fetch(
            """SELECT fencing_token, priority FROM queue_segments
               WHERE fencing_token = ANY($2::bigint[]) AND pipeline_id = $1""",
            pipeline_id,
            wanted,
        )
        by_token = {int(r[0]): int(r[1]) for r in rows}
        return {doc: by_token[token] for doc, token in zip(ids, tokens, strict=True) if token in by_token}

    async def drop(self, conn: asyncpg.Connection, work: Work, segments: Sequence[Segment]) -> None:
        """Delete segment rows and record their manifests as garbage."""
        keys = [s.manifest_key for s in segments]
        await conn.execute(
            "DELETE FROM queue_segments WHERE segment_id = ANY($1::bigint[])",
            [s.segment_id for s in segments],
        )
        await conn.execute(
            "INSERT INTO segment_garbage (manifest_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            keys,
        )
        work.garbage.extend(keys)

    async def delete_pipeline(self, conn: asyncpg.Connection, pipeline_id: str) -> tuple[int, list[str], int]:
        """Inside a pipeline's deletion: record its manifests as garbage; return
        (segments, manifest keys, fence segment id)."""
        keys = [
            r[0]
            for r in await conn.fetch(
                "SELECT manifest_key FROM queue_segments WHERE pipeline_id = $1", pipeline_id
            )
        ]
        if keys:
            await conn.execute(
                "INSERT INTO segment_garbage (manifest_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                keys,
            )
        fence = int(await conn.fetchval("SELECT nextval('queue_segment_seq')"))
        return len(keys), keys, fence
