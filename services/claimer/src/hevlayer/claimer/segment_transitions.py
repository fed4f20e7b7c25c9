"""Held segment leases: heartbeats, checks, transitions and staging of segment-leased ids.

- A transition marks the moved positions in the segment's ``done`` bitmap;
  ids moved to ``indexed`` bump the counter and, while somebody watches the
  pipeline (``document_changes_logged``, migration 0013), are logged in the
  change log (``WatchDocuments``); to ``failed`` they become
  document rows carrying the reason; to ``pending`` or another worker stage
  they become new queued segments, one per claim priority of the segments they
  came from (a segment holds ids of one priority). A segment with nothing
  remaining is deleted with its manifest.
- Staging an id leased from a segment (``RecordStaged`` with its lease token)
  takes it out of its segment: it has a document row from then on.

Transitions work inside the caller's transaction (see :mod:`hevlayer.claimer.txn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from hevlayer.claimer.segment_rows import (
    FAIL_IDS_SQL,
    SEGMENT_COLUMNS,
    Segment,
    SegmentRows,
    is_done,
    mark_done,
    remaining_positions,
    segment_of,
)
from hevlayer.claimer.txn import PipelineConfig, Work
from hevlayer.claimer.validation import FAILED, INDEXED

LOG_CHANGES_SQL = (
    "SELECT log_document_changes($1, $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])"
)
"""Append changes of ids without document rows to the change log (hevlayer.claimer.changes)."""
CHANGES_LOGGED_SQL = "SELECT document_changes_logged($1)"
"""Whether the pipeline's changes are logged in this transaction (someone watches it; migration 0013)."""


@dataclass
class SegmentMoves:
    """A prepared transition of segment-leased ids (applied after the row update)."""

    outcomes: dict[int, bool] = field(default_factory=dict)
    """Request index -> moved? for every entry whose token is a segment lease."""
    per_segment: dict[int, list[int]] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)
    moved_ids: list[str] = field(default_factory=list)
    moved_hashes: list[str] = field(default_factory=list)
    moved_priorities: list[int] = field(default_factory=list)
    """The claim priority of each moved id (its segment's), when ``moved_ids`` is filled."""
    new_segments: list[tuple[int, str, int, int]] = field(default_factory=list)
    """The queued segments the moved ids go to: (segment_id, manifest key, priority, count)."""
    new_token: int = 0
    count: int = 0
    """Ids moved (``moved_ids`` may stay empty when only the count matters: to indexed)."""
    log_changes: bool = False
    """Log the moves in the change log (to indexed, while the pipeline is watched)."""


class SegmentTransitions:
    """Finds the segment leases a worker holds and moves their ids."""

    def __init__(self, rows: SegmentRows) -> None:
        self._rows = rows

    async def by_tokens(
        self, conn: asyncpg.Connection, pipeline_id: str, tokens: Sequence[int], *, lock: bool
    ) -> dict[int, Segment]:
        """Segments whose current token is one of ``tokens`` (locked if asked)."""
        wanted = sorted({t for t in tokens if t > 0})
        if not wanted:
            return {}
        rows = await conn.fetch(
            f"""SELECT {SEGMENT_COLUMNS} FROM queue_segments
                WHERE fencing_token = ANY($2::bigint[]) AND pipeline_id = $1
                ORDER BY segment_id {"FOR UPDATE" if lock else ""}""",
            pipeline_id,
            wanted,
        )
        return {int(r["fencing_token"]): segment_of(r) for r in rows}

    async def held_by_segment(
        self,
        segments: dict[int, Segment],
        stage: str,
        worker_id: str,
        now: datetime,
        ids: Sequence[str],
        tokens: Sequence[int],
    ) -> list[tuple[Segment, list[int], list[int | None]]]:
        """Request entries grouped by the segment their token names: the
        segment, the request indices and, per index, the id's position in the
        manifest if the worker holds it there (None if not held)."""
        groups: dict[int, list[int]] = {}
        for index, token in enumerate(tokens):
            if token in segments:
                groups.setdefault(token, []).append(index)
        out: list[tuple[Segment, list[int], list[int | None]]] = []
        for token, indices in groups.items():
            segment = segments[token]
            if not segment.held_by(stage, worker_id, now):
                out.append((segment, indices, [None] * len(indices)))
                continue
            manifest = await self._rows.cache.get(segment.manifest_key)
            done = segment.done
            named = [ids[i] for i in indices]
            if len(indices) == segment.remaining:
                # the common case: the worker names exactly the ids it was given,
                # in order; one list comparison instead of a lookup per id
                if not any(done):
                    if named == manifest.ids:
                        out.append((segment, indices, list(range(len(named)))))
                        continue
                else:
                    left = remaining_positions(done, segment.id_count)
                    if named == [manifest.ids[p] for p in left]:
                        out.append((segment, indices, list(left)))
                        continue
            lookup = manifest.positions().get
            positions = [lookup(doc) for doc in named]
            if any(done):
                positions = [p if p is not None and not is_done(done, p) else None for p in positions]
            out.append((segment, indices, positions))
        return out

    async def held_positions(
        self,
        segments: dict[int, Segment],
        stage: str,
        worker_id: str,
        now: datetime,
        ids: Sequence[str],
        tokens: Sequence[int],
    ) -> dict[int, tuple[Segment, int | None]]:
        """For each request index whose token is a segment's: the segment and
        the id's position if the worker holds it there (None if not held)."""
        found: dict[int, tuple[Segment, int | None]] = {}
        for segment, indices, positions in await self.held_by_segment(
            segments, stage, worker_id, now, ids, tokens
        ):
            for index, position in zip(indices, positions, strict=True):
                found[index] = (segment, position)
        return found

    async def prepare_transition(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        now: datetime,
        ids: Sequence[str],
        tokens: Sequence[int],
    ) -> SegmentMoves:
        """Lock the segments named by tokens and work out which ids move (a
        position named twice moves at its first occurrence); write the
        manifest of a new segment if ids go to pending or a worker stage."""
        moves = SegmentMoves()
        segments = await self.by_tokens(conn, cfg.id, tokens, lock=True)
        if not segments:
            return moves
        outcomes = moves.outcomes
        for segment, indices, positions in await self.held_by_segment(
            segments, from_stage, worker_id, now, ids, tokens
        ):
            held: list[int] = [p for p in positions if p is not None]
            moved: list[int]
            if len(held) == len(positions) and len(set(held)) == len(held):
                # the common case: every id held, none named twice
                outcomes.update(dict.fromkeys(indices, True))
                moved = held
            else:
                taken: set[int] = set()
                moved = []
                for index, position in zip(indices, positions, strict=True):
                    if position is None or position in taken:
                        outcomes[index] = False
                        continue
                    taken.add(position)
                    moved.append(position)
                    outcomes[index] = True
            if moved:
                moves.per_segment[segment.segment_id] = moved
                moves.segments[segment.segment_id] = segment
        if not moves.segments:
            return moves
        await self._read_moved(moves)
        moves.count = len(moves.moved_ids)
        moves.log_changes = to_stage == INDEXED and bool(await conn.fetchval(CHANGES_LOGGED_SQL, cfg.id))
        await self._destination(conn, work, cfg, to_stage, moves)
        return moves

    async def _read_moved(self, moves: SegmentMoves) -> None:
        """Fill ``moved_ids`` and ``moved_hashes`` from the manifests, in move order."""
        for segment_id, positions in moves.per_segment.items():
            segment = moves.segments[segment_id]
            manifest = await self._rows.cache.get(segment.manifest_key)
            moves.moved_ids.extend(manifest.ids[p] for p in positions)
            moves.moved_hashes.extend(manifest.hash_at(p) for p in positions)
            moves.moved_priorities.extend([segment.priority] * len(positions))

    async def _destination(
        self, conn: asyncpg.Connection, work: Work, cfg: PipelineConfig, to_stage: str, moves: SegmentMoves
    ) -> None:
        """The moved ids' new token, and the manifests of their new segments (one per
        priority, in the order the priorities first occur) when they go to pending or a worker
        stage."""
        moves.new_token = int(await conn.fetchval("SELECT nextval('fencing_token_seq')"))
        if to_stage in (INDEXED, FAILED):
            return
        groups: dict[int, list[int]] = {}
        for index, priority in enumerate(moves.moved_priorities):
            groups.setdefault(priority, []).append(index)
        segment_ids = await self._rows.new_segment_ids(conn, len(groups))
        for segment_id, (priority, indices) in zip(segment_ids, groups.items(), strict=True):
            if len(groups) == 1:
                ids, hashes = moves.moved_ids, moves.moved_hashes
            else:
                ids = [moves.moved_ids[i] for i in indices]
                hashes = [moves.moved_hashes[i] for i in indices]
            key = await self._rows.write_manifest(
                work, cfg.id, segment_id, ids, hashes if any(hashes) else None
            )
            moves.new_segments.append((segment_id, key, priority, len(ids)))

    async def prepare_lease_transition(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        now: datetime,
        tokens: Sequence[int],
    ) -> tuple[SegmentMoves, list[int]]:
        """Whole segment leases: lock the segments the tokens name; every remaining id
        of each one the worker holds in ``from_stage`` moves. Returns the moves and, per
        token, how many ids move (0: not held, or named before). Manifests are read
        only when the ids go somewhere other than indexed, or to indexed while the
        pipeline's changes are logged (the change log names each id)."""
        moves = SegmentMoves()
        segments = await self.by_tokens(conn, cfg.id, tokens, lock=True)
        moved: list[int] = []
        for token in tokens:
            segment = segments.get(token)
            if (
                segment is None
                or segment.segment_id in moves.segments
                or not segment.held_by(from_stage, worker_id, now)
            ):
                moved.append(0)
                continue
            positions = remaining_positions(segment.done, segment.id_count)
            moves.per_segment[segment.segment_id] = positions
            moves.segments[segment.segment_id] = segment
            moved.append(len(positions))
        if not moves.segments:
            return moves, moved
        if to_stage == INDEXED:
            moves.log_changes = bool(await conn.fetchval(CHANGES_LOGGED_SQL, cfg.id))
        if to_stage != INDEXED or moves.log_changes:
            await self._read_moved(moves)
        moves.count = sum(moved)
        await self._destination(conn, work, cfg, to_stage, moves)
        return moves, moved

    async def apply_transition(
        self,
        conn: asyncpg.Connection,
        work: Work,
        cfg: PipelineConfig,
        to_stage: str,
        reason: str,
        now: datetime,
        moves: SegmentMoves,
    ) -> None:
        """Write a prepared transition: bitmaps, completed segments, destination."""
        if not moves.segments:
            return
        if moves.log_changes:
            # No rows fire the change log's triggers (migration 0011): log the moves here, first,
            # so that the pipeline's change head is locked before its counters, as in the
            # triggers' statements.
            await conn.execute(
                LOG_CHANGES_SQL,
                cfg.id,
                moves.moved_ids,
                [INDEXED] * len(moves.moved_ids),
                [moves.new_token] * len(moves.moved_ids),
                moves.moved_hashes,
                [""] * len(moves.moved_ids),
            )
        await self._take_out(conn, work, moves.segments, moves.per_segment)
        count = moves.count
        if to_stage == INDEXED:
            await conn.execute("SELECT bump_stage_count($1, 'indexed', $2)", cfg.id, count)
        elif to_stage == FAILED:
            some = next(iter(moves.segments.values()))
            await conn.execute(
                FAIL_IDS_SQL,
                cfg.id,
                moves.new_token,
                some.attempts,
                some.lease_expiries,
                reason,
                now,
                moves.moved_ids,
                moves.moved_hashes,
            )
        elif moves.new_segments:
            await self._rows.insert_segments(
                conn,
                cfg.id,
                [
                    (segment_id, to_stage, key, size, None, None, None, 0, 0, priority, None)
                    for segment_id, key, priority, size in moves.new_segments
                ],
            )

    async def _take_out(
        self,
        conn: asyncpg.Connection,
        work: Work,
        segments: dict[int, Segment],
        per_segment: dict[int, list[int]],
    ) -> None:
        """Mark positions (not yet done, none twice) done in locked segments; a
        segment left with nothing remaining is deleted with its manifest. The
        stage counters follow ``remaining`` through the table's triggers."""
        finished: list[Segment] = []
        update_ids: list[int] = []
        update_done: list[bytes] = []
        update_remaining: list[int] = []
        for segment_id, positions in per_segment.items():
            segment = segments[segment_id]
            remaining = segment.remaining - len(positions)
            if remaining <= 0:
                finished.append(segment)
            else:
                update_ids.append(segment_id)
                update_done.append(mark_done(segment.done, segment.id_count, positions))
                update_remaining.append(remaining)
        if update_ids:
            await conn.execute(
                """UPDATE queue_segments AS s SET done = u.done, remaining = u.remaining
                   FROM unnest($1::bigint[], $2::bytea[], $3::int[]) AS u(segment_id, done, remaining)
                   WHERE s.segment_id = u.segment_id""",
                update_ids,
                update_done,
                update_remaining,
            )
        if finished:
            await self._rows.drop(conn, work, finished)

    async def release_staged(
        self,
        conn: asyncpg.Connection,
        work: Work,
        pipeline_id: str,
        ids: Sequence[str],
        tokens: Sequence[int],
    ) -> int:
        """Staging ended these leases: each id still remaining in the segment its
        token names (whoever holds it now) leaves that segment, because the
        id now has a document row. Returns how many ids left a segment."""
        segments = await self.by_tokens(conn, pipeline_id, tokens, lock=True)
        if not segments:
            return 0
        named_by_token: dict[int, set[str]] = {}
        for doc, token in zip(ids, tokens, strict=True):
            if token in segments:
                named_by_token.setdefault(token, set()).add(doc)
        per_segment: dict[int, list[int]] = {}
        by_id: dict[int, Segment] = {}
        for token, named in named_by_token.items():
            segment = segments[token]
            manifest = await self._rows.cache.get(segment.manifest_key)
            lookup = manifest.positions()
            positions = sorted(
                {lookup[doc] for doc in named if doc in lookup and not is_done(segment.done, lookup[doc])}
            )
            if positions:
                per_segment[segment.segment_id] = positions
                by_id[segment.segment_id] = segment
        if per_segment:
            await self._take_out(conn, work, by_id, per_segment)
        return sum(len(p) for p in per_segment.values())

    async def extend(self, conn: asyncpg.Connection, segment_ids: Sequence[int], expires: datetime) -> None:
        """Extend the leases of locked, held segments."""
        await conn.execute(
            "UPDATE queue_segments SET lease_expires_at = $2 WHERE segment_id = ANY($1::bigint[])",
            list(segment_ids),
            expires,
        )
