"""The segmented queue of lightweight ids (``PIPELINE_QUEUE_BACKEND=segment``).

Ids enqueued without chunks are written in segments of
``PIPELINE_SEGMENT_SIZE`` ids to zstd manifests in S3
(:mod:`hevlayer.claimer.manifests`); PostgreSQL holds one ``queue_segments``
row per segment with its stage, lease, fencing token and counters. A segment
counts its ``remaining`` ids in its stage (maintained by triggers).

- A claim leases whole segments, or splits the first one that is larger than
  what the claim still wants: the two halves are written as new manifests
  and the superseded one is deleted after the commit.
- Every id of a leased segment is leased with the segment's fencing token;
  tokens come from the same sequence as document tokens, so a token finds
  its segment.
- A transition marks the moved positions in the segment's ``done`` bitmap;
  ids moved to ``indexed`` only bump the counter; to ``failed`` they become
  document rows carrying the reason; to ``pending`` or another worker stage
  they become a new queued segment. A segment with nothing remaining is
  deleted with its manifest.
- An expired segment is taken back by the next claim into its stage (its
  remaining ids only); past the pipeline's ``max_attempts`` its remaining ids
  go to ``failed`` instead.

This module works inside the caller's transaction (see :mod:`hevlayer.claimer.txn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from hevlayer.claimer.database import Database
from hevlayer.claimer.manifests import (
    Manifest,
    ManifestCache,
    ObjectStore,
    manifest_key,
    segment_id_of,
    segments_prefix,
)
from hevlayer.claimer.txn import PipelineConfig, Work
from hevlayer.claimer.validation import FAILED, INDEXED
from hevlayer.common.errors import NotFound, ServiceError

log = logging.getLogger("hevlayer.claimer.segments")

_SEGMENT_COLUMNS = (
    "segment_id, pipeline_id, stage, manifest_key, id_count, remaining, done, claimed_by, "
    "lease_expires_at, fencing_token, attempts, lease_expiries"
)

CLAIM_EXPIRED_SEGMENT_SQL = f"""
SELECT {_SEGMENT_COLUMNS} FROM queue_segments
WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at <= $3 AND remaining > 0
ORDER BY lease_expires_at, segment_id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

CLAIM_FRESH_SEGMENT_SQL = f"""
SELECT {_SEGMENT_COLUMNS} FROM queue_segments
WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at IS NULL AND remaining > 0
ORDER BY segment_id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

_INSERT_SEGMENTS_SQL = """
INSERT INTO queue_segments (segment_id, pipeline_id, stage, manifest_key, id_count, remaining,
                            claimed_by, claimed_at, lease_expires_at, fencing_token, attempts, lease_expiries)
SELECT u.segment_id, $1, u.stage, u.manifest_key, u.id_count, u.id_count,
       u.claimed_by, u.claimed_at, u.lease_expires_at, nextval('fencing_token_seq'), u.attempts, u.expiries
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[],
            $8::timestamptz[], $9::int[], $10::int[])
     AS u(segment_id, stage, manifest_key, id_count, claimed_by, claimed_at, lease_expires_at,
          attempts, expiries)
ORDER BY u.segment_id
RETURNING segment_id, fencing_token
"""

_FAIL_IDS_SQL = """
INSERT INTO documents (pipeline_id, document_id, stage, fencing_token, attempts, lease_expiries,
                       last_error, content_hash, update_time)
SELECT $1, u.document_id, 'failed', $2, $3, $4, $5, u.content_hash, $6
FROM unnest($7::text[], $8::text[]) AS u(document_id, content_hash)
ON CONFLICT (pipeline_id, document_id) DO NOTHING
"""


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

    def held_by(self, stage: str, worker_id: str, now: datetime) -> bool:
        """True while ``worker_id`` holds a live lease on it in ``stage``."""
        return (
            self.stage == stage
            and self.claimed_by == worker_id
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


def _segment(row: asyncpg.Record) -> Segment:
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


@dataclass
class SegmentMoves:
    """A prepared transition of segment-leased ids (applied after the row update)."""

    outcomes: dict[int, bool] = field(default_factory=dict)
    """Request index -> moved? for every entry whose token is a segment lease."""
    per_segment: dict[int, list[int]] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)
    moved_ids: list[str] = field(default_factory=list)
    moved_hashes: list[str] = field(default_factory=list)
    new_segment: tuple[int, str] | None = None
    new_token: int = 0
    count: int = 0
    """Ids moved (``moved_ids`` may stay empty when only the count matters: to indexed)."""


class SegmentQueue:
    """Segments of one claimer: manifests in S3, rows in PostgreSQL."""

    def __init__(self, db: Database, store: ObjectStore, cache: ManifestCache, segment_size: int) -> None:
        self._db = db
        self.store = store
        self.cache = cache
        self.segment_size = segment_size
        self._sweeper: asyncio.Task[None] | None = None

    # -- S3 housekeeping ---------------------------------------------------------

    async def discard(self, keys: Sequence[str], *, outcome_unknown: bool = False) -> None:
        """Delete manifests written by a transaction that did not commit (best effort).

        ``outcome_unknown``: the connection failed, possibly during COMMIT (PostgreSQL killed,
        the connection cut), so the transaction may have committed and its segment rows point
        into these manifests. Only the manifests no segment row references are deleted; when
        PostgreSQL cannot say, all are kept (an orphan manifest costs storage, a deleted one
        would make its segment unclaimable: "segment manifest ... is missing from S3").
        """
        self.cache.forget(keys)
        doomed = list(keys)
        if outcome_unknown:
            try:
                async with self._db.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT manifest_key FROM queue_segments WHERE manifest_key = ANY($1::text[])", doomed
                    )
            except ServiceError as exc:
                log.warning("kept %d manifests of a transaction that may have committed: %s", len(keys), exc)
                return
            referenced = {row[0] for row in rows}
            if referenced:
                log.warning("kept %d manifests of a transaction that committed after all", len(referenced))
            doomed = [key for key in doomed if key not in referenced]
        if not doomed:
            return
        try:
            await self.store.delete(doomed)
        except ServiceError as exc:
            log.warning("could not delete %d uncommitted manifests: %s", len(doomed), exc)

    async def collect(self, keys: Sequence[str]) -> None:
        """Delete orphaned manifests and their segment_garbage rows (best effort)."""
        self.cache.forget(keys)
        try:
            await self.store.delete(list(keys))
            async with self._db.acquire() as conn:
                await conn.execute(
                    "DELETE FROM segment_garbage WHERE manifest_key = ANY($1::text[])", list(keys)
                )
        except ServiceError as exc:
            log.warning("manifest garbage left for the sweeper (%d keys): %s", len(keys), exc)

    async def sweep(self) -> int:
        """Delete every manifest recorded in segment_garbage; return how many."""
        async with self._db.acquire() as conn:
            keys = [r[0] for r in await conn.fetch("SELECT manifest_key FROM segment_garbage LIMIT 10000")]
        if keys:
            await self.collect(keys)
        return len(keys)

    def start_sweeper(self, interval: float = 60.0) -> None:
        """Sweep garbage now and every ``interval`` seconds."""

        async def loop() -> None:
            while True:
                try:
                    await self.sweep()
                except ServiceError as exc:
                    log.warning("garbage sweep failed: %s", exc)
                await asyncio.sleep(interval)

        self._sweeper = asyncio.create_task(loop(), name="segment-garbage-sweeper")

    async def stop_sweeper(self) -> None:
        """Stop the background sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def remove_pipeline_objects(self, pipeline_id: str, keys: Sequence[str], fence: int) -> None:
        """After a pipeline's deletion: delete its manifests, then any manifest
        left under its prefix with a segment id below ``fence`` (allocated
        before the deletion, so not a recreated pipeline's)."""
        if keys:
            await self.collect(keys)
        try:
            leftovers = [
                key
                for key in await self.store.list_keys(segments_prefix(pipeline_id))
                if (segment := segment_id_of(key)) is not None and segment < fence
            ]
            if leftovers:
                self.cache.forget(leftovers)
                await self.store.delete(leftovers)
        except ServiceError as exc:
            log.warning("could not sweep the manifests of deleted pipeline %s: %s", pipeline_id, exc)

    # -- writing segments -------------------------------------------------------

    async def new_segment_ids(self, conn: asyncpg.Connection, count: int) -> list[int]:
        """Fresh segment ids."""
        rows = await conn.fetch("SELECT nextval('queue_segment_seq') FROM generate_series(1, $1)", count)
        return [int(r[0]) for r in rows]

    async def write_manifest(
        self, work: Work, pipeline_id: str, segment_id: int, ids: Sequence[str], hashes: Sequence[str] | None
    ) -> str:
        """PUT one manifest, recorded in ``work`` for cleanup if the transaction fails."""
        key = manifest_key(pipeline_id, segment_id)
        work.written.append(key)
        await self.cache.put(key, ids, hashes)
        return key

    async def insert_segments(
        self,
        conn: asyncpg.Connection,
        pipeline_id: str,
        rows: Sequence[tuple[int, str, str, int, str | None, datetime | None, datetime | None, int, int]],
    ) -> dict[int, int]:
        """Insert segment rows (segment_id, stage, key, count, claimed_by,
        claimed_at, lease_expires_at, attempts, expiries); return their tokens."""
        columns = list(zip(*rows, strict=True))
        result = await conn.fetch(_INSERT_SEGMENTS_SQL, pipeline_id, *[list(c) for c in columns])
        return {int(r[0]): int(r[1]) for r in result}

    async def enqueue_segment(
        self, pipeline_id: str, stage: str, ids: Sequence[str], hashes: Sequence[str]
    ) -> int:
        """Write one queued segment (ids de-duplicated, first occurrence kept) and
        commit its row; return the number of ids it holds."""
        from hevlayer.claimer.txn import run

        if any(hashes):
            pairs = dict(zip(ids, list(hashes) + [""] * (len(ids) - len(hashes)), strict=False))
            unique, unique_hashes = list(pairs), list(pairs.values())
            keep_hashes: list[str] | None = unique_hashes
        else:
            unique = list(dict.fromkeys(ids)) if len(set(ids)) != len(ids) else list(ids)
            keep_hashes = None

        async def body(conn: asyncpg.Connection, work: Work) -> int:
            (segment_id,) = await self.new_segment_ids(conn, 1)
            key = await self.write_manifest(work, pipeline_id, segment_id, unique, keep_hashes)
            await self.insert_segments(
                conn, pipeline_id, [(segment_id, stage, key, len(unique), None, None, None, 0, 0)]
            )
            return len(unique)

        try:
            return await run(self._db, self, body)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise NotFound(
                f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id}
            ) from None

    # -- claims -----------------------------------------------------------------

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
    ) -> SegmentLeases:
        """Lease up to ``want`` ids from segments (expired ones in claim_stage first)."""
        out = SegmentLeases()
        fresh_exhausted = False
        expired_exhausted = False
        while want > 0 and not (fresh_exhausted and expired_exhausted):
            row = None
            if not expired_exhausted:
                row = await conn.fetchrow(CLAIM_EXPIRED_SEGMENT_SQL, cfg.id, claim_stage, now)
                expired_exhausted = row is None
            if row is None:
                row = await conn.fetchrow(CLAIM_FRESH_SEGMENT_SQL, cfg.id, stage)
                fresh_exhausted = row is None
                if row is None:
                    break
            segment = _segment(row)
            expired = segment.lease_expires_at is not None
            manifest = await self.cache.get(segment.manifest_key)
            positions = remaining_positions(segment.done, segment.id_count)
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
            out.ids.extend(ids[p] for p in taken)
            out.tokens.extend([int(token)] * len(taken))
            out.attempts.extend([attempts] * len(taken))
            if manifest.hashes is not None:
                hashes = manifest.hashes
                out.hashes.extend(hashes[p] for p in taken)
            else:
                out.hashes.extend([""] * len(taken))
            want -= len(taken)
        return out

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
        leased_id, rest_id = await self.new_segment_ids(conn, 2)
        ids = manifest.ids
        hashes = manifest.hashes

        def pick(positions: list[int]) -> tuple[list[str], list[str] | None]:
            return [ids[p] for p in positions], (
                [hashes[p] for p in positions] if hashes is not None else None
            )

        leased_ids, leased_hashes = pick(taken)
        rest_ids, rest_hashes = pick(rest)
        leased_key, rest_key = await asyncio.gather(
            self.write_manifest(work, cfg.id, leased_id, leased_ids, leased_hashes),
            self.write_manifest(work, cfg.id, rest_id, rest_ids, rest_hashes),
        )
        await self._drop(conn, work, [segment])
        tokens = await self.insert_segments(
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
                ),
            ],
        )
        return tokens[leased_id]

    async def _drop(self, conn: asyncpg.Connection, work: Work, segments: Sequence[Segment]) -> None:
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
            _FAIL_IDS_SQL,
            cfg.id,
            token,
            segment.attempts,
            segment.lease_expiries + 1,
            reason,
            now,
            [manifest.ids[p] for p in positions],
            [manifest.hash_at(p) for p in positions],
        )
        await self._drop(conn, work, [segment])

    # -- held leases ----------------------------------------------------------

    async def by_tokens(
        self, conn: asyncpg.Connection, pipeline_id: str, tokens: Sequence[int], *, lock: bool
    ) -> dict[int, Segment]:
        """Segments whose current token is one of ``tokens`` (locked if asked)."""
        wanted = sorted({t for t in tokens if t > 0})
        if not wanted:
            return {}
        rows = await conn.fetch(
            f"""SELECT {_SEGMENT_COLUMNS} FROM queue_segments
                WHERE fencing_token = ANY($2::bigint[]) AND pipeline_id = $1
                ORDER BY segment_id {"FOR UPDATE" if lock else ""}""",
            pipeline_id,
            wanted,
        )
        return {int(r["fencing_token"]): _segment(r) for r in rows}

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
            manifest = await self.cache.get(segment.manifest_key)
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
        await self._destination(conn, work, cfg, to_stage, moves)
        return moves

    async def _read_moved(self, moves: SegmentMoves) -> None:
        """Fill ``moved_ids`` and ``moved_hashes`` from the manifests, in move order."""
        for segment_id, positions in moves.per_segment.items():
            manifest = await self.cache.get(moves.segments[segment_id].manifest_key)
            moves.moved_ids.extend(manifest.ids[p] for p in positions)
            moves.moved_hashes.extend(manifest.hash_at(p) for p in positions)

    async def _destination(
        self, conn: asyncpg.Connection, work: Work, cfg: PipelineConfig, to_stage: str, moves: SegmentMoves
    ) -> None:
        """The moved ids' new token, and the manifest of their new segment when they go
        to pending or a worker stage."""
        moves.new_token = int(await conn.fetchval("SELECT nextval('fencing_token_seq')"))
        if to_stage not in (INDEXED, FAILED):
            (segment_id,) = await self.new_segment_ids(conn, 1)
            hashes = moves.moved_hashes if any(moves.moved_hashes) else None
            key = await self.write_manifest(work, cfg.id, segment_id, moves.moved_ids, hashes)
            moves.new_segment = (segment_id, key)

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
        only when the ids go somewhere other than indexed."""
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
        if to_stage != INDEXED:
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
        await self._take_out(conn, work, moves.segments, moves.per_segment)
        count = moves.count
        if to_stage == INDEXED:
            await conn.execute("SELECT bump_stage_count($1, 'indexed', $2)", cfg.id, count)
        elif to_stage == FAILED:
            some = next(iter(moves.segments.values()))
            await conn.execute(
                _FAIL_IDS_SQL,
                cfg.id,
                moves.new_token,
                some.attempts,
                some.lease_expiries,
                reason,
                now,
                moves.moved_ids,
                moves.moved_hashes,
            )
        elif moves.new_segment is not None:
            segment_id, key = moves.new_segment
            await self.insert_segments(
                conn, cfg.id, [(segment_id, to_stage, key, count, None, None, None, 0, 0)]
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
            await self._drop(conn, work, finished)

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
            manifest = await self.cache.get(segment.manifest_key)
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
