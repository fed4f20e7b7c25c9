"""Claims, heartbeats, transitions and lease checks (transport-free).

A document is *leased* while ``claimed_by``, ``claimed_at`` and
``lease_expires_at`` are set; the lease is *live* while
``lease_expires_at > now``. A worker holds a document when it is in the
worker stage named by the call, claimed by that worker, live, and (unless
the caller passes token 0) carries the fencing token the claim returned.

Every claim, transition and (re-)staging draws a new token from one global
sequence, so a token names exactly one lease; any write with an older token
is rejected. Results are column-wise lists so that the gRPC adapter can
build large responses cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import asyncpg

from hevlayer.claimer import metrics
from hevlayer.claimer import validation as v
from hevlayer.claimer.database import Database
from hevlayer.claimer.segment_claims import ANY_PRIORITY
from hevlayer.claimer.segments import SegmentQueue, cleanup_of
from hevlayer.claimer.txn import Clock, PipelineConfig, Work, pipeline_config, run, system_clock
from hevlayer.client.enums import TransitionOutcome
from hevlayer.common.errors import InvalidArgument

# The claim, in the order of the seed's durable task queue, "priority ASC, started_at ASC":
# the stage's claimable documents by priority (lower first); within one priority, documents
# whose lease expired in claim_stage first (oldest expiry first: they entered the stage
# before any document still queued there), then unleased documents of stage by age (the
# fencing token: the document that entered the stage first). A reclaimed document keeps its
# priority, so an expired lease of priority 5 waits behind a queued document of priority 0.
# Each half reads its own partial index (documents_claimable for the expired range,
# documents_claim_order of migration 0007 for the queued ones, in order), both FOR UPDATE
# SKIP LOCKED with the claim's limit; `chosen` merges them and keeps the limit's first (the
# rest, locked, are released at commit). One UPDATE moves them. A document whose lease
# expired for the max_attempts-th time goes to failed instead (it is returned with stage
# "failed" and no lease). Parameters: $1 pipeline, $2 stage, $3 claim_stage, $4 limit,
# $5 worker, $6 now, $7 expires, $8 max_attempts, $9 the largest priority taken (a claim
# that also takes segments stops the rows at the best segment's priority).
CLAIM_SQL = """
WITH expired AS (
    SELECT document_id, priority, lease_expires_at FROM documents
    WHERE pipeline_id = $1 AND stage = $3 AND lease_expires_at <= $6
      AND stage <> ALL ('{indexed,failed}'::text[]) AND priority <= $9
    ORDER BY priority, lease_expires_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), fresh AS (
    SELECT document_id, priority, fencing_token FROM documents
    WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at IS NULL
      AND stage <> ALL ('{indexed,failed}'::text[]) AND priority <= $9
    ORDER BY priority, fencing_token
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT document_id, reclaimed FROM (
        SELECT document_id, priority, true AS reclaimed, lease_expires_at AS expiry,
               NULL::bigint AS token FROM expired
        UNION ALL
        SELECT document_id, priority, false, NULL::timestamptz, fencing_token FROM fresh
    ) c
    ORDER BY priority, reclaimed DESC, expiry, token
    LIMIT $4
)
UPDATE documents d SET
    stage = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                 THEN 'failed' ELSE $3::text END,
    claimed_by = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                      THEN NULL ELSE $5::text END,
    claimed_at = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                      THEN NULL ELSE $6::timestamptz END,
    lease_expires_at = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                            THEN NULL ELSE $7::timestamptz END,
    last_error = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                      THEN 'lease expired ' || (d.lease_expiries + 1) || ' times (max_attempts '
                           || $8::int || '); last held by ' || d.claimed_by
                      ELSE d.last_error END,
    attempts = CASE WHEN d.lease_expires_at IS NOT NULL AND d.lease_expiries + 1 >= $8::int
                    THEN d.attempts ELSE d.attempts + 1 END,
    lease_expiries = d.lease_expiries + (d.lease_expires_at IS NOT NULL)::int,
    fencing_token = nextval('fencing_token_seq')
WHERE d.pipeline_id = $1
  AND d.document_id = ANY (ARRAY(SELECT document_id FROM chosen))
RETURNING d.document_id, d.stage, d.fencing_token, d.attempts, d.content_hash, d.chunk_count,
          (SELECT count(*) FROM chosen WHERE reclaimed) AS expired, coalesce(d.trace_parent, '')
"""

# The smallest priority among the documents a claim could take (NULL: none); a claim of a
# segmented pipeline compares it with the best segment's. Not locked.
BEST_ROW_PRIORITY_SQL = """
SELECT least(
    (SELECT priority FROM documents
     WHERE pipeline_id = $1 AND stage = $2 AND lease_expires_at IS NULL
       AND stage <> ALL ('{indexed,failed}'::text[])
     ORDER BY priority, fencing_token LIMIT 1),
    (SELECT min(priority) FROM documents
     WHERE pipeline_id = $1 AND stage = $3 AND lease_expires_at <= $4
       AND stage <> ALL ('{indexed,failed}'::text[])))
"""

# The documents of a request that the worker holds, found by primary key one
# request entry at a time (the LATERAL ... OFFSET 0 keeps the request as the
# driving side whatever the statistics say: with stale statistics a plan
# driven by the claim index rescanned the request once per leased row), then
# updated by tuple id (a nested loop of TID lookups; the conditions are
# rechecked there, written so that no index can serve them, so no plan scans
# the stage's leases). A row changed concurrently is rechecked on its newest
# version (token included); one the recheck misses is run again by
# update_held. Parameters: $1 pipeline, $2 distinct ids, $3 tokens (0 = any),
# $4 held stage, $5 worker, $6 now.
_HELD_CTE = """
WITH held AS (
    SELECT x.tid, x.fencing_token AS token
    FROM unnest($2::text[], $3::bigint[]) AS r(document_id, token)
    CROSS JOIN LATERAL (
        SELECT d.ctid AS tid, d.fencing_token, d.stage, d.claimed_by, d.lease_expires_at
        FROM documents d
        WHERE d.pipeline_id = $1 AND d.document_id = r.document_id
        OFFSET 0
    ) x
    WHERE x.stage = $4 AND x.claimed_by = $5 AND x.lease_expires_at > $6
      AND (r.token = 0 OR x.fencing_token = r.token)
)
"""

# Move held documents to $7 (to_stage); $8 reason (stored as last_error when set).
TRANSITION_SQL = (
    _HELD_CTE
    + """
UPDATE documents d SET
    stage = $7, claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
    fencing_token = nextval('fencing_token_seq'),
    last_error = CASE WHEN $8 <> '' THEN $8 ELSE d.last_error END
FROM held h
WHERE d.ctid = h.tid AND d.fencing_token = h.token
  AND d.pipeline_id IS NOT DISTINCT FROM $1 AND d.stage IS NOT DISTINCT FROM $4
  AND d.claimed_by IS NOT DISTINCT FROM $5 AND d.lease_expires_at > $6
RETURNING d.document_id, d.fencing_token, (SELECT count(*) FROM held) AS held
"""
)

# Extend held leases to $7.
HEARTBEAT_SQL = (
    _HELD_CTE
    + """
UPDATE documents d SET lease_expires_at = $7
FROM held h
WHERE d.ctid = h.tid AND d.fencing_token = h.token
  AND d.pipeline_id IS NOT DISTINCT FROM $1 AND d.stage IS NOT DISTINCT FROM $4
  AND d.claimed_by IS NOT DISTINCT FROM $5 AND d.lease_expires_at > $6
RETURNING d.document_id, d.fencing_token, (SELECT count(*) FROM held) AS held
"""
)

# How often a held-documents statement is run again for rows changed concurrently.
HELD_ROUNDS = 4


async def update_held(
    conn: asyncpg.Connection, sql: str, ids: list[str], tokens: list[int], *args: object
) -> dict[str, int]:
    """Run TRANSITION_SQL or HEARTBEAT_SQL for ``ids``; return id -> new
    token of the rows updated (held rows changed concurrently are tried again)."""
    updated: dict[str, int] = {}
    pipeline_id, rest = args[0], args[1:]
    for _ in range(HELD_ROUNDS):
        rows = await conn.fetch(sql, pipeline_id, ids, tokens, *rest)
        for row in rows:
            updated[row[0]] = row[1]
        if not rows or len(rows) >= int(rows[0][2]):
            if rows or not ids:
                return updated
            # nothing returned: either nothing was held or every held row changed
            probe = await conn.fetchval(
                _HELD_CTE + "SELECT count(*) FROM held", pipeline_id, ids, tokens, *rest[:3]
            )
            if not probe:
                return updated
        pairs = [(doc, token) for doc, token in zip(ids, tokens, strict=True) if doc not in updated]
        ids = [doc for doc, _ in pairs]
        tokens = [token for _, token in pairs]
        if not ids:
            return updated
    return updated


CHECK_SQL = """
SELECT document_id, stage, claimed_by, lease_expires_at, fencing_token, backing
FROM documents WHERE pipeline_id = $1 AND document_id = ANY($2::text[])
"""


@dataclass(frozen=True)
class ClaimRequest:
    """A claim (see ClaimDocumentsRequest)."""

    pipeline_id: str
    stage: str
    claim_stage: str
    limit: int
    worker_id: str
    lease_seconds: int = 0


@dataclass
class Claimed:
    """The leases granted by one claim, column-wise."""

    stage: str
    worker_id: str
    expires_at: datetime
    document_ids: list[str] = field(default_factory=list)
    fencing_tokens: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    content_hashes: list[str] = field(default_factory=list)
    chunk_counts: list[int] = field(default_factory=list)
    trace_parents: list[str] = field(default_factory=list)
    """W3C trace context of each document's staging ("" when none was recorded)."""
    expired: int = 0
    """Documents taken back after their lease expired."""
    poisoned: int = 0
    """Documents moved to failed instead (lease expired max_attempts times)."""

    def __len__(self) -> int:
        return len(self.document_ids)


@dataclass
class HeartbeatResult:
    """Per requested lease: extended or lost; the new expiry."""

    extended: list[bool]
    expires_at: datetime


@dataclass
class TransitionResult:
    """Per requested document: outcome and token after the move."""

    outcomes: list[TransitionOutcome]
    fencing_tokens: list[int]


@dataclass
class SegmentLeaseTransition:
    """Per requested segment lease: ids moved (0: not held); the moved ids' new token."""

    moved: list[int]
    new_fencing_token: int


@dataclass
class LeaseCheck:
    """Per requested lease (see LeaseCheck in the claimer API)."""

    held: list[bool]
    found: list[bool]
    backings: list[str]
    fencing_tokens: list[int]


def _check_refs(ids: Sequence[str], tokens: Sequence[int], field: str) -> None:
    """Check the documents of a heartbeat or transition. ``field`` names them in
    errors: a repeated LeaseRef (``documents``: ``documents[3].document_id``) or
    LeaseRefColumns (``document_columns``: ``document_columns.document_ids[3]``)."""
    columns = field.endswith("_columns")
    v.batch_size(len(ids), f"{field}.document_ids" if columns else field)
    if len(ids) != len(tokens):
        if columns:
            raise InvalidArgument.field(
                f"{field}.fencing_tokens",
                f"must have as many entries as document_ids ({len(ids)}), got {len(tokens)}",
            )
        raise InvalidArgument.field(field, "ids and tokens differ in length")
    if not ids:
        return
    lengths = list(map(len, ids))
    if min(lengths) == 0 or max(lengths) > v.MAX_DOCUMENT_ID_BYTES // 4 or "\x00" in "".join(ids):
        for i, doc in enumerate(ids):
            if not doc or len(doc) > v.MAX_DOCUMENT_ID_BYTES // 4 or "\x00" in doc:
                v.document_id(doc, f"{field}.document_ids[{i}]" if columns else f"{field}[{i}].document_id")


def _transition_reason(from_stage: str, worker_id: str, to_stage: str, reason: str) -> str:
    """Check a transition's stages, worker and reason; the reason to store (a move to
    failed without one stores "marked failed by worker <worker_id>")."""
    v.worker_stage(from_stage, "from_stage")
    v.worker_id(worker_id)
    v.stage_name(to_stage, "to_stage")
    if to_stage == from_stage:
        raise InvalidArgument.field("to_stage", "must differ from from_stage")
    v.max_bytes(reason, v.MAX_REASON_BYTES, "reason")
    if to_stage == v.FAILED and not reason:
        return f"marked failed by worker {worker_id}"
    return reason


class LeaseStore:
    """Leases on documents (rows) and on segments of lightweight ids."""

    def __init__(
        self, db: Database, segments: SegmentQueue | None = None, clock: Clock = system_clock
    ) -> None:
        self._db = db
        self._segments = segments
        self._cleanup = cleanup_of(segments)
        self.clock = clock
        self._segmented: set[str] = set()
        """Pipelines last seen segmented: their claims go straight to the transaction (a
        hint only; the transaction reads the pipeline's settings itself)."""

    def _segment_queue(self, cfg: PipelineConfig) -> SegmentQueue | None:
        return self._segments if cfg.segmented else None

    # -- claim --------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claimed:
        """Claim up to ``limit`` documents (rows first, then queued segments)."""
        v.claimable_stage(request.stage, "stage")
        v.worker_stage(request.claim_stage, "claim_stage")
        if request.claim_stage == request.stage:
            raise InvalidArgument.field("claim_stage", "must differ from stage")
        v.limit(request.limit)
        v.worker_id(request.worker_id)
        v.lease_seconds(request.lease_seconds)
        started = time.perf_counter()

        async def body(conn: asyncpg.Connection, work: Work, rows_only: bool = False) -> Claimed | None:
            # rows_only: a pipeline of document rows only is claimed by one statement, atomic by
            # itself, run outside a transaction (no BEGIN and no COMMIT round trip; the claim's
            # row locks, its counters' and the change log's, end with the statement); None when
            # the pipeline is segmented
            cfg = await pipeline_config(conn, request.pipeline_id)
            if rows_only and cfg.segmented:
                return None
            now = self.clock()
            expires = now + timedelta(seconds=request.lease_seconds or cfg.default_lease_seconds)
            claimed = Claimed(request.claim_stage, request.worker_id, expires)
            if cfg.paused:
                return claimed
            segments = self._segment_queue(cfg)
            if segments is None:
                await self._claim_rows(conn, cfg, request, now, expires, request.limit, ANY_PRIORITY, claimed)
                return claimed
            # rows and segments of a segmented pipeline, merged by priority: each round takes
            # from the side holding the smallest priority, up to the other side's best (rows
            # first on a tie); a side that yields nothing (all locked by other claims) is left
            # out of the next rounds
            want = request.limit
            rows_dry = segments_dry = False
            while want > 0:
                row_best = (
                    None
                    if rows_dry
                    else await conn.fetchval(
                        BEST_ROW_PRIORITY_SQL, cfg.id, request.stage, request.claim_stage, now
                    )
                )
                segment_best = (
                    None
                    if segments_dry
                    else await segments.claims.best_priority(
                        conn, cfg.id, request.stage, request.claim_stage, now
                    )
                )
                if row_best is None and segment_best is None:
                    break
                if segment_best is None or (row_best is not None and row_best <= segment_best):
                    bound = ANY_PRIORITY if segment_best is None else segment_best
                    taken = await self._claim_rows(conn, cfg, request, now, expires, want, bound, claimed)
                    rows_dry = taken == 0
                else:
                    bound = ANY_PRIORITY if row_best is None else int(row_best)
                    got = await segments.claims.claim(
                        conn,
                        work,
                        cfg,
                        request.stage,
                        request.claim_stage,
                        request.worker_id,
                        now,
                        expires,
                        want,
                        bound,
                        claimed.document_ids,
                    )
                    claimed.document_ids.extend(got.ids)
                    claimed.fencing_tokens.extend(got.tokens)
                    claimed.attempts.extend(got.attempts)
                    claimed.content_hashes.extend(got.hashes)
                    claimed.chunk_counts.extend([0] * len(got.ids))
                    claimed.trace_parents.extend([""] * len(got.ids))
                    claimed.expired += got.expired + got.poisoned
                    claimed.poisoned += got.poisoned
                    taken = len(got.ids)
                    segments_dry = taken == 0 and got.poisoned == 0
                want -= taken
            return claimed

        claimed: Claimed | None = None
        if request.pipeline_id not in self._segmented:
            claimed = await run(self._db, partial(body, rows_only=True), self._cleanup, transaction=False)
            if claimed is None:
                self._segmented.add(request.pipeline_id)
        if claimed is None:
            # segmented pipelines (and, should the pipeline have been recreated as one of rows,
            # its rows too) in one transaction, which reads the pipeline's settings again
            claimed = await run(self._db, body, self._cleanup)
        assert claimed is not None  # only a rows_only attempt answers None
        attempts = claimed.attempts
        metrics.observe_claim(
            request.pipeline_id,
            time.perf_counter() - started,
            claimed=len(claimed.document_ids),
            retried=len(attempts) - attempts.count(1) - attempts.count(0),  # leases with attempts > 1
            expired=claimed.expired,
            poisoned=claimed.poisoned,
        )
        return claimed

    @staticmethod
    async def _claim_rows(
        conn: asyncpg.Connection,
        cfg: PipelineConfig,
        request: ClaimRequest,
        now: datetime,
        expires: datetime,
        limit: int,
        max_priority: int,
        claimed: Claimed,
    ) -> int:
        """Claim up to ``limit`` document rows of priority <= ``max_priority`` into
        ``claimed``; return how many rows the claim took (leased or failed)."""
        rows = await conn.fetch(
            CLAIM_SQL,
            cfg.id,
            request.stage,
            request.claim_stage,
            limit,
            request.worker_id,
            now,
            expires,
            cfg.max_attempts,
            max_priority,
        )
        if not rows:
            return 0
        claim_stage = request.claim_stage
        claimed.expired += int(rows[0][6])
        columns = list(zip(*rows, strict=True))
        if columns[1].count(claim_stage) != len(rows):  # some went to failed
            leased = [r for r in rows if r[1] == claim_stage]
            claimed.poisoned += len(rows) - len(leased)
            columns = list(zip(*leased, strict=True)) if leased else [()] * 8
        claimed.document_ids.extend(columns[0])
        claimed.fencing_tokens.extend(columns[2])
        claimed.attempts.extend(columns[3])
        claimed.content_hashes.extend(columns[4])
        claimed.chunk_counts.extend(columns[5])
        claimed.trace_parents.extend(columns[7])
        return len(rows)

    # -- heartbeat -----------------------------------------------------------------

    async def heartbeat(
        self,
        pipeline_id: str,
        stage: str,
        worker_id: str,
        ids: Sequence[str],
        tokens: Sequence[int],
        lease_seconds: int = 0,
        refs_field: str = "leases",
    ) -> HeartbeatResult:
        """Extend the leases the worker still holds; report the lost ones.
        ``refs_field`` names ``ids`` and ``tokens`` in errors (see :func:`_check_refs`)."""
        v.worker_stage(stage, "stage")
        v.worker_id(worker_id)
        v.lease_seconds(lease_seconds)
        _check_refs(ids, tokens, refs_field)

        async def body(conn: asyncpg.Connection, work: Work) -> HeartbeatResult:
            cfg = await pipeline_config(conn, pipeline_id)
            now = self.clock()
            expires = now + timedelta(seconds=lease_seconds or cfg.default_lease_seconds)
            extended = [False] * len(ids)
            rest = list(range(len(ids)))
            segments = self._segment_queue(cfg)
            if segments is not None:
                locked = await segments.transitions.by_tokens(conn, cfg.id, tokens, lock=True)
                if locked:
                    held = await segments.transitions.held_positions(
                        locked, stage, worker_id, now, ids, tokens
                    )
                    live = {s.segment_id for s, p in held.values() if p is not None}
                    if live:
                        await segments.transitions.extend(conn, sorted(live), expires)
                    for index, (_, position) in held.items():
                        extended[index] = position is not None
                    rest = [i for i in rest if i not in held]
            if rest:
                current = await update_held(
                    conn,
                    HEARTBEAT_SQL,
                    [ids[i] for i in rest],
                    [tokens[i] for i in rest],
                    cfg.id,
                    stage,
                    worker_id,
                    now,
                    expires,
                )
                for i in rest:
                    token = current.get(ids[i])
                    extended[i] = token is not None and tokens[i] in (0, token)
            return HeartbeatResult(extended, expires)

        return await run(self._db, body, self._cleanup)

    # -- transition ---------------------------------------------------------------

    async def transition(
        self,
        pipeline_id: str,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        ids: Sequence[str],
        tokens: Sequence[int],
        reason: str = "",
        refs_field: str = "documents",
    ) -> TransitionResult:
        """Move documents the worker holds in from_stage to to_stage, atomically.
        ``refs_field`` names ``ids`` and ``tokens`` in errors (see :func:`_check_refs`)."""
        reason = _transition_reason(from_stage, worker_id, to_stage, reason)
        _check_refs(ids, tokens, refs_field)

        async def body(conn: asyncpg.Connection, work: Work) -> TransitionResult:
            cfg = await pipeline_config(conn, pipeline_id)
            now = self.clock()
            outcomes = [TransitionOutcome.NOT_HELD] * len(ids)
            new_tokens = [0] * len(ids)
            rest = list(range(len(ids)))
            segments = self._segment_queue(cfg)
            moves = None
            if segments is not None:
                moves = await segments.transitions.prepare_transition(
                    conn, work, cfg, from_stage, worker_id, to_stage, now, ids, tokens
                )
                if moves.outcomes:
                    for index, moved in moves.outcomes.items():
                        if moved:
                            outcomes[index] = TransitionOutcome.MOVED
                            new_tokens[index] = moves.new_token
                    rest = [i for i in rest if i not in moves.outcomes]
            if rest:
                if len(set(ids)) != len(ids):
                    # a document named twice is handled at its first occurrence only
                    first: dict[str, int] = {}
                    for i in rest:
                        first.setdefault(ids[i], i)
                    rest = sorted(first.values())
                rest_ids = [ids[i] for i in rest] if len(rest) != len(ids) else list(ids)
                rest_tokens = [tokens[i] for i in rest] if len(rest) != len(ids) else list(tokens)
                moved_rows = await update_held(
                    conn,
                    TRANSITION_SQL,
                    rest_ids,
                    rest_tokens,
                    cfg.id,
                    from_stage,
                    worker_id,
                    now,
                    to_stage,
                    reason,
                )
                missing: list[int] = []
                if len(moved_rows) == len(ids):  # the common case: everything moved
                    outcomes = [TransitionOutcome.MOVED] * len(ids)
                    new_tokens = [moved_rows[doc] for doc in ids]
                else:
                    for i in rest:
                        token = moved_rows.pop(ids[i], None)
                        if token is not None:
                            outcomes[i] = TransitionOutcome.MOVED
                            new_tokens[i] = token
                        else:
                            missing.append(i)
                if missing:
                    await self._not_moved(conn, cfg, ids, tokens, missing, outcomes, new_tokens)
                if len(rest) != len(ids) and len(set(ids)) != len(ids):
                    first_outcome = {ids[i]: outcomes[i] for i in rest}
                    for i, doc in enumerate(ids):
                        if first_outcome.get(doc) is TransitionOutcome.NOT_FOUND:
                            outcomes[i] = TransitionOutcome.NOT_FOUND
            if segments is not None and moves is not None:
                await segments.transitions.apply_transition(conn, work, cfg, to_stage, reason, now, moves)
            return TransitionResult(outcomes, new_tokens)

        result = await run(self._db, body, self._cleanup)
        metrics.observe_transition(pipeline_id, to_stage, result.outcomes)
        return result

    async def transition_segment_leases(
        self,
        pipeline_id: str,
        from_stage: str,
        worker_id: str,
        to_stage: str,
        tokens: Sequence[int],
        reason: str = "",
    ) -> SegmentLeaseTransition:
        """Move whole segment leases the worker holds in from_stage (every id still held
        under each token) to to_stage, atomically; per token, how many ids moved."""
        reason = _transition_reason(from_stage, worker_id, to_stage, reason)
        v.batch_size(len(tokens), "segment_leases")
        for i, token in enumerate(tokens):
            if token <= 0:
                raise InvalidArgument.field(f"segment_leases[{i}]", "must be a fencing token (> 0)")

        async def body(conn: asyncpg.Connection, work: Work) -> SegmentLeaseTransition:
            cfg = await pipeline_config(conn, pipeline_id)
            segments = self._segment_queue(cfg)
            if segments is None or not tokens:
                return SegmentLeaseTransition([0] * len(tokens), 0)
            now = self.clock()
            moves, moved = await segments.transitions.prepare_lease_transition(
                conn, work, cfg, from_stage, worker_id, to_stage, now, tokens
            )
            await segments.transitions.apply_transition(conn, work, cfg, to_stage, reason, now, moves)
            return SegmentLeaseTransition(moved, moves.new_token if moves.count else 0)

        result = await run(self._db, body, self._cleanup)
        metrics.observe_segment_lease_transition(pipeline_id, to_stage, result.moved)
        return result

    async def _not_moved(
        self,
        conn: asyncpg.Connection,
        cfg: PipelineConfig,
        ids: Sequence[str],
        tokens: Sequence[int],
        missing: list[int],
        outcomes: list[TransitionOutcome],
        new_tokens: list[int],
    ) -> None:
        """NOT_HELD for documents that exist, NOT_FOUND for the others (a
        non-zero token on a segmented pipeline may be a lost segment lease:
        NOT_HELD)."""
        rows = await conn.fetch(
            """SELECT document_id, fencing_token FROM documents
               WHERE pipeline_id = $1 AND document_id = ANY($2::text[])""",
            cfg.id,
            [ids[i] for i in missing],
        )
        current = {r[0]: r[1] for r in rows}
        for i in missing:
            token = current.get(ids[i])
            if token is not None:
                outcomes[i] = TransitionOutcome.NOT_HELD
                new_tokens[i] = token
            elif cfg.segmented and tokens[i] != 0:
                outcomes[i] = TransitionOutcome.NOT_HELD
            else:
                outcomes[i] = TransitionOutcome.NOT_FOUND

    # -- checks ----------------------------------------------------------------------

    async def check(
        self, pipeline_id: str, worker_id: str, stage: str, ids: Sequence[str], tokens: Sequence[int]
    ) -> LeaseCheck:
        """Whether each lease is current, with the document's backing."""
        v.worker_id(worker_id)
        v.worker_stage(stage, "stage")
        _check_refs(ids, tokens, "leases")
        async with self._db.acquire() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
            now = self.clock()
            result = LeaseCheck([False] * len(ids), [False] * len(ids), [""] * len(ids), [0] * len(ids))
            rest = list(range(len(ids)))
            segments = self._segment_queue(cfg)
            if segments is not None:
                found = await segments.transitions.by_tokens(conn, cfg.id, tokens, lock=False)
                if found:
                    held = await segments.transitions.held_positions(
                        found, stage, worker_id, now, ids, tokens
                    )
                    for index, (segment, position) in held.items():
                        result.held[index] = position is not None
                        result.found[index] = position is not None
                        result.fencing_tokens[index] = segment.fencing_token
                    rest = [i for i in rest if i not in held or not result.held[i]]
            if rest:
                rows = await conn.fetch(CHECK_SQL, cfg.id, [ids[i] for i in rest])
                by_id = {r[0]: r for r in rows}
                for i in rest:
                    row = by_id.get(ids[i])
                    if row is None:
                        continue
                    result.found[i] = True
                    result.backings[i] = row["backing"]
                    result.fencing_tokens[i] = row["fencing_token"]
                    expires = row["lease_expires_at"]
                    result.held[i] = (
                        row["stage"] == stage
                        and row["claimed_by"] == worker_id
                        and expires is not None
                        and expires > now
                        and tokens[i] in (0, row["fencing_token"])
                    )
        return result
