"""Claims from the segmented queue, and ids enqueued into it.

- A claim leases whole segments, or splits the first one that is larger than
  what the claim still wants: the two halves are written as new manifests
  and the superseded one is deleted after the commit.
- Every id of a leased segment is leased with the segment's fencing token;
  tokens come from the same sequence as document tokens, so a token finds
  its segment.
- An expired segment is taken back by the next claim into its stage (its
  remaining ids only); past the pipeline's ``max_attempts`` its remaining ids
  go to ``failed`` instead.

Claims work inside the caller's transaction (see :mod:`hevlayer.claimer.txn`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from hevlayer.claimer.manifests import Manifest
from hevlayer.claimer.segment_garbage import ManifestGarbage
from hevlayer.claimer.segment_rows import (
    FAIL_IDS_SQL,
    SEGMENT_COLUMNS,
    Segment,
    SegmentRows,
    remaining_positions,
    segment_of,
)
from hevlayer.claimer.txn import PipelineConfig, Work, run
from hevlayer.common.errors import NotFound

# The next segment a claim may take, locked: expired ones in the claim stage (lowest
# priority, then oldest expiry first, through queue_segments_claimable), and queued ones in
# the stage (lowest priority, then enqueue order, through queue_segments_claim_order,
# migration 0010). $4 / $3: the largest priority the claim takes (a claim that also takes
# document rows stops the segments at the best row's priority).
CLAIM_EXPIRED_SEGMENT_SQL = f"""
SELECT {SEGMENT_COLUMNS} FROM queue_segments
WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at <= $3 AND remaining > 0 AND priority <= $4
ORDER BY priority, lease_expires_at, segment_id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

CLAIM_FRESH_SEGMENT_SQL = f"""
SELECT {SEGMENT_COLUMNS} FROM queue_segments
WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at IS NULL AND remaining > 0 AND priority <= $3
ORDER BY priority, queue_order
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

# The smallest priority among the segments a claim could take (NULL: none). Not locked: the
# claim that follows locks what it takes and skips what others hold.
BEST_SEGMENT_PRIORITY_SQL = """
SELECT least(
    (SELECT priority FROM queue_segments
     WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at IS NULL AND remaining > 0
     ORDER BY priority, queue_order LIMIT 1),
    (SELECT min(priority) FROM queue_segments
     WHERE pipeline_id = $1 AND stage = $3 AND lease_expires_at <= $4 AND remaining > 0))
"""

ANY_PRIORITY = 2**31 - 1
"""The largest int32: a claim bounded by it takes every priority."""


@dataclass
class SegmentLeases:
    """Ids leased from segments by one claim, column-wise."""

    ids: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    expired: int = 0
    """Ids taken back after their segment's lease expired."""
    poisoned: int = 0
    """Ids moved to failed because their segment expired too often."""
    segments: int = 0
    splits: int = 0


class SegmentClaims:
    """Enqueues ids into segments and leases them to claims."""

    def __init__(self, rows: SegmentRows, garbage: ManifestGarbage) -> None:
        self._rows = rows
        self._garbage = garbage

    async def enqueue_segment(
        self,
        pipeline_id: str,
        stage: str,
        ids: Sequence[str],
        hashes: Sequence[str],
        priority: int = 0,
        segment_id: int | None = None,
    ) -> int:
        """Write one queued segment of ids of one claim ``priority`` (ids de-duplicated, first
        occurrence kept) and commit its row; return the number of ids it holds. ``segment_id``:
        one the caller drew from :meth:`SegmentRows.new_segment_ids` beforehand (its enqueue
        order; None: drawn here)."""
        if any(hashes):
            pairs = dict(zip(ids, list(hashes) + [""] * (len(ids) - len(hashes)), strict=False))
            unique, unique_hashes = list(pairs), list(pairs.values())
            keep_hashes: list[str] | None = unique_hashes
        else:
            unique = list(dict.fromkeys(ids)) if len(set(ids)) != len(ids) else list(ids)
            keep_hashes = None

        async def body(conn: asyncpg.Connection, work: Work) -> int:
            (new_id,) = [segment_id] if segment_id is not None else await self._rows.new_segment_ids(conn, 1)
            key = await self._rows.write_manifest(work, pipeline_id, new_id, unique, keep_hashes)
            await self._rows.insert_segments(
                conn,
                pipeline_id,
                [(new_id, stage, key, len(unique), None, None, None, 0, 0, priority, None)],
            )
            return len(unique)

        try:
            return await run(self._rows.db, body, self._garbage)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise NotFound(
                f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id}
            ) from None

    async def claim(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        stage: str,
        claim_stage: str,
        worker_id: str,
        now: datetime,
        expires: datetime,
        want: int,
        max_priority: int = ANY_PRIORITY,
        claimed_ids: Iterable[str] = (),
    ) -> SegmentLeases:
        """Lease up to ``want`` ids from segments of priority <= ``max_priority``, lowest
        priority first; within one priority, segments whose lease expired in claim_stage
        (oldest expiry first), then queued ones of stage in enqueue order. An id appears at
        most once in one claim: the claim ends before a segment holding an id it already took, or
        one of ``claimed_ids`` (what the claim took before this call)."""
        out = SegmentLeases()
        expired_row: asyncpg.Record | None = None
        fresh_row: asyncpg.Record | None = None
        expired_exhausted = False
        fresh_exhausted = False
        # the ids taken so far, as a set only once a second segment is looked at (a claim of
        # one whole segment builds none)
        taken_ids: set[str] | None = None
        while want > 0:
            # one locked candidate of each kind; the one not taken stays ours for the next
            # round (locked rows are skipped by concurrent claims until this one commits)
            if expired_row is None and not expired_exhausted:
                expired_row = await conn.fetchrow(
                    CLAIM_EXPIRED_SEGMENT_SQL, cfg.id, claim_stage, now, max_priority
                )
                expired_exhausted = expired_row is None
            if fresh_row is None and not fresh_exhausted:
                fresh_row = await conn.fetchrow(CLAIM_FRESH_SEGMENT_SQL, cfg.id, stage, max_priority)
                fresh_exhausted = fresh_row is None
            if expired_row is not None and (
                fresh_row is None or expired_row["priority"] <= fresh_row["priority"]
            ):
                row, expired_row = expired_row, None
            elif fresh_row is not None:
                row, fresh_row = fresh_row, None
            else:
                break
            segment = segment_of(row)
            expired = segment.lease_expires_at is not None
            manifest = await self._rows.cache.get(segment.manifest_key)
            positions = remaining_positions(segment.done, segment.id_count)
            if taken_ids is None and (out.ids or claimed_ids):
                taken_ids = set(claimed_ids)
                taken_ids.update(out.ids)
            if taken_ids and not taken_ids.isdisjoint(manifest.ids[p] for p in positions):
                # An id queued twice (an EnqueueDocuments retried after its answer was lost
                # lands in two segments) must not come back twice in one claim: a stager
                # sends one lease per id (a duplicate is INVALID_ARGUMENT). This segment
                # stays as it is, for a later claim.
                break
            if expired and segment.lease_expiries + 1 >= cfg.max_attempts:
                await self._poison(conn, work, cfg, segment, manifest, positions, now)
                out.poisoned += len(positions)
                continue
            if expired:
                out.expired += len(positions)
            attempts = segment.attempts + 1
            expiries = segment.lease_expiries + (1 if expired else 0)
            if len(positions) <= want:
                token = await conn.fetchval(
                    """UPDATE queue_segments SET stage = $2, claimed_by = $3, claimed_at = $4,
                           lease_expires_at = $5, fencing_token = nextval('fencing_token_seq'),
                           attempts = $6, lease_expiries = $7
                       WHERE segment_id = $1 RETURNING fencing_token""",
                    segment.segment_id,
                    claim_stage,
                    worker_id,
                    now,
                    expires,
                    attempts,
                    expiries,
                )
                taken = positions
            else:
                taken = positions[:want]
                rest = positions[want:]
                token = await self._split(
                    conn,
                    work,
                    cfg,
                    segment,
                    manifest,
                    taken,
                    rest,
                    (claim_stage, worker_id, now, expires, attempts, expiries),
                )
                out.splits += 1
            out.segments += 1
            ids = manifest.ids
            # every id of the manifest, in order (a segment nothing was done in): no per-id pick
            whole = len(taken) == len(ids)
            first = len(out.ids)
            out.ids.extend(ids if whole else [ids[p] for p in taken])
            if taken_ids is not None:
                taken_ids.update(out.ids[first:])
            out.tokens.extend([int(token)] * len(taken))
            out.attempts.extend([attempts] * len(taken))
            if manifest.hashes is not None:
                hashes = manifest.hashes
                out.hashes.extend(hashes if whole else [hashes[p] for p in taken])
            else:
                out.hashes.extend([""] * len(taken))
            want -= len(taken)
        return out

    async def best_priority(
        self, conn: asyncpg.Connection, pipeline_id: str, stage: str, claim_stage: str, now: datetime
    ) -> int | None:
        """The smallest priority of a segment a claim could take now (None: no segment)."""
        best = await conn.fetchval(BEST_SEGMENT_PRIORITY_SQL, pipeline_id, stage, claim_stage, now)
        return None if best is None else int(best)

    async def _split(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        segment: Segment,
        manifest: Manifest,
        taken: list[int],
        rest: list[int],
        lease: tuple[str, str, datetime, datetime, int, int],
    ) -> int:
        """Replace ``segment`` by a leased half (``taken``) and a half in the
        segment's old state (``rest``); return the leased half's token."""
        claim_stage, worker_id, now, expires, attempts, expiries = lease
        leased_id, rest_id = await self._rows.new_segment_ids(conn, 2)
        ids = manifest.ids
        hashes = manifest.hashes

        def pick(positions: list[int]) -> tuple[list[str], list[str] | None]:
            return [ids[p] for p in positions], (
                [hashes[p] for p in positions] if hashes is not None else None
            )

        leased_ids, leased_hashes = pick(taken)
        rest_ids, rest_hashes = pick(rest)
        leased_key, rest_key = await asyncio.gather(
            self._rows.write_manifest(work, cfg.id, leased_id, leased_ids, leased_hashes),
            self._rows.write_manifest(work, cfg.id, rest_id, rest_ids, rest_hashes),
        )
        await self._rows.drop(conn, work, [segment])
        tokens = await self._rows.insert_segments(
            conn,
            cfg.id,
            [
                (
                    leased_id,
                    claim_stage,
                    leased_key,
                    len(leased_ids),
                    worker_id,
                    now,
                    expires,
                    attempts,
                    expiries,
                    segment.priority,
                    segment.queue_order,
                ),
                (
                    rest_id,
                    segment.stage,
                    rest_key,
                    len(rest_ids),
                    segment.claimed_by,
                    now if segment.claimed_by else None,
                    segment.lease_expires_at,
                    segment.attempts,
                    segment.lease_expiries,
                    segment.priority,
                    segment.queue_order,
                ),
            ],
        )
        return tokens[leased_id]

    async def _poison(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        segment: Segment,
        manifest: Manifest,
        positions: list[int],
        now: datetime,
    ) -> None:
        """The segment's lease expired max_attempts times: its remaining ids fail."""
        reason = (
            f"lease expired {segment.lease_expiries + 1} times (max_attempts {cfg.max_attempts}); "
            f"last held by {segment.claimed_by}"
        )
        token = await conn.fetchval("SELECT nextval('fencing_token_seq')")
        await conn.execute(
            FAIL_IDS_SQL,
            cfg.id,
            token,
            segment.attempts,
            segment.lease_expiries + 1,
            reason,
            now,
            [manifest.ids[p] for p in positions],
            [manifest.hash_at(p) for p in positions],
        )
        await self._rows.drop(conn, work, [segment])
