"""Document state the gateway reads and writes (transport-free).

Staging records (``record_staged``), lookups (``describe``, ``scan``,
``content_hashes``), deletions (``forget``) and the lightweight-id queue
(``enqueue``: rows for ``queue_backend=row`` pipelines, manifests in S3 for
``segment`` ones). Ids in the segmented queue have no document row: they
appear in counts and leases but not in ``describe``/``scan``/``forget``
until they fail (failed ids become rows carrying the reason).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from hevlayer.claimer import validation as v
from hevlayer.claimer.condemned import refuse_condemned
from hevlayer.claimer.database import Database
from hevlayer.claimer.segments import SegmentQueue, cleanup_of, require_segments
from hevlayer.claimer.txn import (
    Clock,
    PipelineConfig,
    RetryTransaction,
    Work,
    pipeline_config,
    run,
    system_clock,
)
from hevlayer.client.naming import backing_problem, incarnation_of, object_key_of
from hevlayer.client.types import StagedRecord, StagedResult
from hevlayer.common.errors import InvalidArgument, NotFound
from hevlayer.common.telemetry import MAX_TRACE_PARENT_BYTES

SCAN_BATCH = 1000

_STATE_COLUMNS = (
    "document_id, stage, fencing_token, claimed_by, lease_expires_at, attempts, last_error, "
    "content_hash, chunk_count, update_time"
)

# $7: the trace context of each record ('' stores NULL). $8: each record's claim priority
# (NULL: 0 for a new row); $9: the ids whose existing row takes it (ids leased from a segment
# take their segment's priority; other rows keep theirs).
RECORD_STAGED_SQL = """
INSERT INTO documents AS d (pipeline_id, document_id, stage, fencing_token, content_hash, backing,
                            chunk_count, update_time, trace_parent, priority)
SELECT $1, u.document_id, 'pending', nextval('fencing_token_seq'), u.content_hash, u.backing,
       u.chunk_count, $6, NULLIF(u.trace_parent, ''), coalesce(u.priority, 0)
FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $7::text[], $8::int[])
     AS u(document_id, content_hash, backing, chunk_count, trace_parent, priority)
ON CONFLICT (pipeline_id, document_id) DO UPDATE SET
    stage = 'pending', claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
    fencing_token = EXCLUDED.fencing_token, attempts = 0, lease_expiries = 0, last_error = '',
    content_hash = EXCLUDED.content_hash, backing = EXCLUDED.backing,
    chunk_count = EXCLUDED.chunk_count, update_time = EXCLUDED.update_time,
    trace_parent = EXCLUDED.trace_parent,
    priority = CASE WHEN d.document_id = ANY($9::text[]) THEN EXCLUDED.priority ELSE d.priority END
RETURNING d.document_id, d.fencing_token, (d.xmax = 0) AS inserted
"""

# $7: each id's claim priority (lower first; kept by staging and transitions).
ENQUEUE_ROWS_SQL = """
INSERT INTO documents AS d (pipeline_id, document_id, stage, fencing_token, content_hash, update_time,
                            priority)
SELECT $1, u.document_id, $3, nextval('fencing_token_seq'), u.content_hash, $5, u.priority
FROM unnest($2::text[], $4::text[], $7::int[]) AS u(document_id, content_hash, priority)
ON CONFLICT (pipeline_id, document_id) DO UPDATE SET
    stage = EXCLUDED.stage, claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
    fencing_token = EXCLUDED.fencing_token, attempts = 0, lease_expiries = 0, last_error = '',
    content_hash = CASE WHEN EXCLUDED.content_hash <> '' THEN EXCLUDED.content_hash ELSE d.content_hash END,
    update_time = EXCLUDED.update_time, trace_parent = NULL, priority = EXCLUDED.priority
WHERE NOT ($6 AND EXCLUDED.content_hash <> '' AND d.content_hash = EXCLUDED.content_hash
           AND d.stage <> 'failed')
RETURNING 1
"""


@dataclass(frozen=True)
class StagedBatch:
    """RecordStaged's answer: per-record results and the released objects."""

    results: list[StagedResult]
    released_objects: list[str]


async def adjust_objects(
    conn: asyncpg.Connection, pipeline_id: str, added: Sequence[str], removed: Sequence[str]
) -> list[str]:
    """Count documents onto (``added``) and off (``removed``) their backings'
    objects; return the objects no document points into any more."""
    deltas: Counter[str] = Counter(object_key_of(b) for b in added if b)
    deltas.subtract(object_key_of(b) for b in removed if b)
    keys = sorted(k for k, d in deltas.items() if d)
    if not keys:
        return []
    await conn.execute(
        """INSERT INTO backing_objects AS b (pipeline_id, object_key, documents)
           SELECT $1, u.object_key, u.delta FROM unnest($2::text[], $3::bigint[]) AS u(object_key, delta)
           ORDER BY u.object_key
           ON CONFLICT (pipeline_id, object_key)
           DO UPDATE SET documents = b.documents + EXCLUDED.documents""",
        pipeline_id,
        keys,
        [deltas[k] for k in keys],
    )
    falling = [k for k in keys if deltas[k] < 0]
    if not falling:
        return []
    rows = await conn.fetch(
        """DELETE FROM backing_objects
           WHERE pipeline_id = $1 AND object_key = ANY($2::text[]) AND documents <= 0
           RETURNING object_key""",
        pipeline_id,
        falling,
    )
    return sorted(r[0] for r in rows)


def check_backings(cfg: PipelineConfig, records: Sequence[StagedRecord]) -> None:
    """INVALID_ARGUMENT naming ``records[i].backing`` for the first backing that is not in
    the pipeline's own packs (:func:`hevlayer.client.naming.backing_problem`): a backing
    elsewhere in the bucket would be read as this pipeline's chunks and deleted as released."""
    current = incarnation_of(cfg.create_time)
    for i, record in enumerate(records):
        problem = backing_problem(record.backing, cfg.id, current)
        if problem is not None:
            raise InvalidArgument.field(f"records[{i}].backing", problem)


@dataclass(frozen=True)
class DocumentState:
    """One document row."""

    document_id: str
    stage: str
    fencing_token: int
    claimed_by: str | None
    lease_expires_at: datetime | None
    attempts: int
    last_error: str
    content_hash: str
    chunk_count: int
    update_time: datetime


@dataclass(frozen=True)
class EnqueueBatch:
    """One message of an EnqueueIds stream."""

    pipeline_id: str
    document_ids: Sequence[str]
    content_hashes: Sequence[str]
    stage: str = ""
    skip_unchanged: bool = False
    priorities: Sequence[int] = ()
    """Claim priority per id (lower first; missing entries are 0)."""
    columns_from: int | None = None
    """Where the ids of the message's columns (``document_ids``) start: error messages name
    ``documents[i]`` before it and ``document_ids[i - columns_from]`` from it on (None: every
    id came from ``documents``)."""

    def id_field(self, i: int) -> str:
        """The request field of id ``i``, as errors name it."""
        start = self.columns_from
        return f"documents[{i}]" if start is None or i < start else f"document_ids[{i - start}]"

    def hash_field(self, i: int) -> str:
        """The request field of hash ``i``, as errors name it."""
        start = self.columns_from
        if start is None or i < start:
            return f"documents[{i}].content_hash"
        return f"content_hashes[{i - start}]"


def check_enqueue_batch(batch: EnqueueBatch) -> None:
    """INVALID_ARGUMENT naming the first invalid id (empty, NUL, over 512 bytes) or content
    hash (over 256 bytes) of one message. The common case (every id 1 to 128 characters, no
    NUL; no hash over 64 characters) is decided by C-level passes over the columns, without a
    Python step per id; only a batch that fails them is walked id by id to name the field."""
    ids = batch.document_ids
    if ids:
        lengths = list(map(len, ids))
        if min(lengths) == 0 or max(lengths) > v.MAX_DOCUMENT_ID_BYTES // 4 or "\x00" in "".join(ids):
            for i, value in enumerate(ids):
                if not value or len(value) > v.MAX_DOCUMENT_ID_BYTES // 4 or "\x00" in value:
                    v.document_id(value, batch.id_field(i))
    hashes = batch.content_hashes
    if hashes and max(map(len, hashes)) > v.MAX_HASH_BYTES // 4:
        for i, content_hash in enumerate(hashes):
            if content_hash:
                v.max_bytes(content_hash, v.MAX_HASH_BYTES, batch.hash_field(i))


@dataclass
class EnqueueTotals:
    """Totals of an EnqueueIds stream."""

    enqueued: int = 0
    unchanged: int = 0
    segments_created: int = 0


@dataclass
class _Buffer:
    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)


def _by_priority(
    ids: list[str], hashes: list[str], priorities: Sequence[int]
) -> dict[int, tuple[list[str], list[str]]]:
    """A message's ids and hashes grouped by claim priority (a missing priority or hash reads
    0 or ""), each group in message order."""
    if not any(priorities):
        return {0: (ids, hashes)}
    groups: dict[int, tuple[list[str], list[str]]] = {}
    for i, doc in enumerate(ids):
        group = groups.setdefault(priorities[i] if i < len(priorities) else 0, ([], []))
        group[0].append(doc)
        group[1].append(hashes[i] if i < len(hashes) else "")
    return groups


def _state(row: asyncpg.Record) -> DocumentState:
    return DocumentState(**dict(row))


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string (in code point order) above every string starting with ``prefix``."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


class DocumentStore:
    """Document rows and the lightweight-id queue of every pipeline."""

    def __init__(
        self,
        db: Database,
        segments: SegmentQueue | None = None,
        clock: Clock = system_clock,
        *,
        flush_concurrency: int = 4,
    ) -> None:
        self._db = db
        self._segments = segments
        self._cleanup = cleanup_of(segments)
        self.clock = clock
        self._flush_concurrency = flush_concurrency

    # -- staging ----------------------------------------------------------------------

    async def record_staged(
        self, pipeline_id: str, records: Sequence[StagedRecord], *, skip_unchanged: bool = False
    ) -> StagedBatch:
        """Make each document pending with a new token and its backing (atomic);
        with ``skip_unchanged`` a document whose stored hash equals the
        record's (and that is not failed) is left as it is. A record's
        ``lease_token`` ends that lease: an id leased from the segmented queue
        leaves its segment (see
        :meth:`~hevlayer.claimer.segment_transitions.SegmentTransitions.release_staged`)."""
        v.batch_size(len(records), "records")
        seen: set[str] = set()
        for i, record in enumerate(records):
            v.document_id(record.document_id, f"records[{i}].document_id")
            if record.document_id in seen:
                raise InvalidArgument.field(f"records[{i}].document_id", "appears twice in the request")
            seen.add(record.document_id)
            v.max_bytes(record.content_hash, v.MAX_HASH_BYTES, f"records[{i}].content_hash")
            v.max_bytes(record.backing, v.MAX_BACKING_BYTES, f"records[{i}].backing")
            if record.chunk_count < 0:
                raise InvalidArgument.field(f"records[{i}].chunk_count", "must be >= 0")
            v.max_bytes(record.trace_parent, MAX_TRACE_PARENT_BYTES, f"records[{i}].trace_parent")
        ids = [r.document_id for r in records]

        async def body(conn: asyncpg.Connection, work: Work) -> StagedBatch:
            cfg = await pipeline_config(conn, pipeline_id)
            check_backings(cfg, records)
            await refuse_condemned(conn, cfg.id, records)  # before any row lock (condemned.py)
            previous = {
                r[0]: r
                for r in await conn.fetch(
                    """SELECT document_id, backing, content_hash, stage, fencing_token FROM documents
                       WHERE pipeline_id = $1 AND document_id = ANY($2::text[])
                       ORDER BY document_id FOR UPDATE""",
                    cfg.id,
                    ids,
                )
            }
            unchanged: set[str] = set()
            if skip_unchanged:
                for record in records:
                    row = previous.get(record.document_id)
                    if (
                        row is not None
                        and record.content_hash
                        and row["content_hash"] == record.content_hash
                        and row["stage"] != v.FAILED
                    ):
                        unchanged.add(record.document_id)
            todo = [r for r in records if r.document_id not in unchanged]
            tokens: dict[str, int] = {}
            leased = [r for r in records if r.lease_token > 0]
            priorities: dict[str, int] = {}
            if todo and leased and self._segments is not None:
                priorities = await self._segments.rows.priorities_of(
                    conn, cfg.id, [r.document_id for r in leased], [r.lease_token for r in leased]
                )
            if todo:
                rows = await conn.fetch(
                    RECORD_STAGED_SQL,
                    cfg.id,
                    [r.document_id for r in todo],
                    [r.content_hash for r in todo],
                    [r.backing for r in todo],
                    [r.chunk_count for r in todo],
                    self.clock(),
                    [r.trace_parent for r in todo],
                    [priorities.get(r.document_id) for r in todo],
                    list(priorities),
                )
                for doc, token, inserted in rows:
                    if not inserted and doc not in previous:
                        raise RetryTransaction(f"document {doc!r} was inserted concurrently")
                    tokens[doc] = token
            released = await adjust_objects(
                conn,
                cfg.id,
                [r.backing for r in todo],
                [previous[r.document_id]["backing"] for r in todo if r.document_id in previous],
            )
            if leased and self._segments is not None:
                await self._segments.transitions.release_staged(
                    conn, work, cfg.id, [r.document_id for r in leased], [r.lease_token for r in leased]
                )
            results = [
                StagedResult(doc, int(previous[doc]["fencing_token"]), "", unchanged=True)
                if doc in unchanged
                else StagedResult(doc, tokens[doc], previous[doc]["backing"] if doc in previous else "")
                for doc in ids
            ]
            return StagedBatch(results, released)

        if not records:
            async with self._db.acquire() as conn:
                await pipeline_config(conn, pipeline_id)
            return StagedBatch([], [])
        return await run(self._db, body, self._cleanup)

    # -- reads ---------------------------------------------------------------------------

    async def describe(self, pipeline_id: str, document_id: str) -> DocumentState:
        """One document's state; NOT_FOUND if the pipeline or document does not exist."""
        v.document_id(document_id, "document_id")
        async with self._db.acquire() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
            row = await conn.fetchrow(
                f"SELECT {_STATE_COLUMNS} FROM documents WHERE pipeline_id = $1 AND document_id = $2",
                cfg.id,
                document_id,
            )
        if row is None:
            raise NotFound(
                f"document {document_id!r} not found in pipeline {pipeline_id!r}",
                metadata={"pipeline_id": pipeline_id, "document_id": document_id},
            )
        return _state(row)

    async def scan(
        self, pipeline_id: str, stage: str = "", id_prefix: str = "", batch: int = SCAN_BATCH
    ) -> AsyncIterator[list[DocumentState]]:
        """The pipeline's documents ordered by id (bytes), in batches."""
        if stage:
            v.stage_name(stage, "stage")
        if id_prefix:
            v.max_bytes(id_prefix, v.MAX_DOCUMENT_ID_BYTES, "id_prefix")
        async with self._db.acquire() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
        after = id_prefix
        inclusive = True
        upper = prefix_upper_bound(id_prefix) if id_prefix else None
        while True:
            async with self._db.acquire() as conn:
                rows = await conn.fetch(
                    f"""SELECT {_STATE_COLUMNS} FROM documents
                        WHERE pipeline_id = $1
                          AND (document_id > $2 OR ($3 AND document_id = $2))
                          AND ($4::text IS NULL OR document_id < $4)
                          AND ($5 = '' OR stage = $5)
                        ORDER BY document_id LIMIT $6""",
                    cfg.id,
                    after,
                    inclusive,
                    upper,
                    stage,
                    batch,
                )
            if rows:
                yield [_state(r) for r in rows]
            if len(rows) < batch:
                return
            after = rows[-1]["document_id"]
            inclusive = False

    async def content_hashes(self, pipeline_id: str, document_ids: Sequence[str]) -> dict[str, str]:
        """Stored content hashes of known, non-failed documents."""
        v.batch_size(len(document_ids), "document_ids")
        v.document_ids(document_ids, "document_ids")
        async with self._db.acquire() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
            rows = await conn.fetch(
                """SELECT document_id, content_hash FROM documents
                   WHERE pipeline_id = $1 AND document_id = ANY($2::text[])
                     AND stage <> 'failed' AND content_hash <> ''""",
                cfg.id,
                list(document_ids),
            )
        return {r[0]: r[1] for r in rows}

    async def live_objects(self, pipeline_id: str, object_keys: Sequence[str]) -> list[str]:
        """The keys among ``object_keys`` that some live document's backing points into."""
        v.batch_size(len(object_keys), "object_keys")
        for i, key in enumerate(object_keys):
            if not key:
                raise InvalidArgument.field(f"object_keys[{i}]", "must not be empty")
            v.max_bytes(key, v.MAX_BACKING_BYTES, f"object_keys[{i}]")
        async with self._db.acquire() as conn:
            cfg = await pipeline_config(conn, pipeline_id)
            rows = await conn.fetch(
                """SELECT object_key FROM backing_objects
                   WHERE pipeline_id = $1 AND object_key = ANY($2::text[]) AND documents > 0""",
                cfg.id,
                list(object_keys),
            )
        live = {r[0] for r in rows}
        return [key for key in dict.fromkeys(object_keys) if key in live]

    # -- deletion -----------------------------------------------------------------------

    async def forget(self, pipeline_id: str, document_ids: Sequence[str]) -> tuple[list[str], int, list[str]]:
        """Delete documents' rows; return their non-empty backings, the count and
        the objects no document points into any more."""
        v.batch_size(len(document_ids), "document_ids")
        v.document_ids(document_ids, "document_ids")

        async def body(conn: asyncpg.Connection, work: Work) -> tuple[list[str], int, list[str]]:
            cfg = await pipeline_config(conn, pipeline_id)
            rows = await conn.fetch(
                """DELETE FROM documents WHERE pipeline_id = $1 AND document_id = ANY($2::text[])
                   RETURNING backing""",
                cfg.id,
                sorted(set(document_ids)),
            )
            backings = [r[0] for r in rows if r[0]]
            released = await adjust_objects(conn, cfg.id, [], backings)
            return backings, len(rows), released

        return await run(self._db, body, self._cleanup)

    # -- the lightweight-id queue -------------------------------------------------------

    async def enqueue(self, batches: AsyncIterator[EnqueueBatch]) -> EnqueueTotals:
        """Enqueue ids into the pipeline's queue backend.

        Row backend: each message is applied atomically (ids become rows in
        ``stage`` with their claim priority, existing ones are re-queued unless
        unchanged). Segment backend: ids fill manifests of ``segment_size``
        ids, one buffer per (stage, priority) so that a segment holds ids of one
        priority, each committed when full, the partial ones when the stream ends.
        A failed stream may have enqueued a prefix of its ids; enqueueing again is
        safe.
        """
        totals = EnqueueTotals()
        pipeline_id: str | None = None
        cfg = None
        buffers: dict[tuple[str, int], _Buffer] = {}
        flushes: set[asyncio.Task[None]] = set()
        limit = asyncio.Semaphore(self._flush_concurrency)
        segments: SegmentQueue | None = None
        # Segment ids are the enqueue order of the segments (claims take a priority's segments
        # by it): the flushes run concurrently, so each draws its id in turn, in the order the
        # stream filled the segments, before it writes.
        turns = asyncio.Condition()
        next_turn = [0]

        async def draw_segment_id(turn: int) -> int:
            assert segments is not None
            async with turns:
                await turns.wait_for(lambda: next_turn[0] == turn)
                try:
                    async with self._db.acquire() as conn:
                        (segment_id,) = await segments.rows.new_segment_ids(conn, 1)
                finally:
                    next_turn[0] += 1
                    turns.notify_all()
            return segment_id

        async def flush(stage: str, priority: int, ids: list[str], hashes: list[str], turn: int) -> None:
            assert segments is not None
            assert pipeline_id is not None
            segment_id = await draw_segment_id(turn)
            async with limit:
                count = await segments.claims.enqueue_segment(
                    pipeline_id, stage, ids, hashes, priority, segment_id
                )
            totals.enqueued += count

        def spawn(stage: str, priority: int, ids: list[str], hashes: list[str]) -> None:
            task = asyncio.create_task(flush(stage, priority, ids, hashes, totals.segments_created))
            flushes.add(task)
            totals.segments_created += 1

        try:
            async for batch in batches:
                if pipeline_id is None:
                    pipeline_id = batch.pipeline_id
                    async with self._db.acquire() as conn:
                        cfg = await pipeline_config(conn, pipeline_id)
                    if cfg.segmented:
                        segments = require_segments(self._segments)
                elif batch.pipeline_id != pipeline_id:
                    raise InvalidArgument.field(
                        "pipeline_id", "every message of the stream must name the same pipeline"
                    )
                assert cfg is not None
                stage = v.claimable_stage(batch.stage or v.PENDING, "stage")
                v.batch_size(
                    len(batch.document_ids),
                    "documents" if batch.columns_from != 0 else "document_ids",
                    100_000,
                )
                check_enqueue_batch(batch)
                if not batch.document_ids:
                    continue
                if segments is None:
                    enqueued, distinct = await self._enqueue_rows(cfg.id, stage, batch)
                    totals.enqueued += enqueued
                    totals.unchanged += distinct - enqueued
                    continue
                ids = list(batch.document_ids)
                hashes = list(batch.content_hashes)
                priorities = list(batch.priorities)
                if batch.skip_unchanged:
                    ids, hashes, priorities = await self._drop_unchanged(cfg.id, ids, hashes, priorities)
                    totals.unchanged += len(batch.document_ids) - len(ids)
                size = segments.segment_size
                for priority, (group_ids, group_hashes) in _by_priority(ids, hashes, priorities).items():
                    buffer = buffers.setdefault((stage, priority), _Buffer())
                    buffer.ids.extend(group_ids)
                    buffer.hashes.extend(group_hashes)
                    while len(buffer.ids) >= size:
                        spawn(stage, priority, buffer.ids[:size], buffer.hashes[:size])
                        del buffer.ids[:size]
                        del buffer.hashes[:size]
                for task in [t for t in flushes if t.done()]:
                    flushes.discard(task)
                    task.result()
            if pipeline_id is None:
                raise InvalidArgument.field("pipeline_id", "is required (the stream sent no message)")
            for (stage, priority), buffer in sorted(buffers.items()):
                if buffer.ids:
                    spawn(stage, priority, buffer.ids, buffer.hashes)
            if flushes:
                await asyncio.gather(*flushes)
                flushes.clear()
        finally:
            for task in flushes:
                task.cancel()
            if flushes:
                await asyncio.gather(*flushes, return_exceptions=True)
        return totals

    async def _enqueue_rows(self, pipeline_id: str, stage: str, batch: EnqueueBatch) -> tuple[int, int]:
        """Upsert one message's ids (an id named twice: its last entry); return (enqueued,
        distinct ids)."""
        latest: dict[str, str] = {}
        priority: dict[str, int] = {}
        hashes = batch.content_hashes
        priorities = batch.priorities
        for i, doc in enumerate(batch.document_ids):
            latest[doc] = hashes[i] if i < len(hashes) else ""
            priority[doc] = priorities[i] if i < len(priorities) else 0
        ids = sorted(latest)

        async def body(conn: asyncpg.Connection, work: Work) -> int:
            rows = await conn.fetch(
                ENQUEUE_ROWS_SQL,
                pipeline_id,
                ids,
                stage,
                [latest[doc] for doc in ids],
                self.clock(),
                batch.skip_unchanged,
                [priority[doc] for doc in ids],
            )
            return len(rows)

        try:
            enqueued = await run(self._db, body, self._cleanup)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise NotFound(
                f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id}
            ) from None
        return enqueued, len(ids)

    async def _drop_unchanged(
        self, pipeline_id: str, ids: list[str], hashes: list[str], priorities: list[int]
    ) -> tuple[list[str], list[str], list[int]]:
        """Ids whose content hash differs from their row's (or that have none), with their
        hashes and priorities."""
        pairs = [(doc, hashes[i] if i < len(hashes) else "") for i, doc in enumerate(ids)]
        with_hash = [doc for doc, h in pairs if h]
        if not with_hash:
            return ids, [h for _, h in pairs], priorities
        async with self._db.acquire() as conn:
            rows = await conn.fetch(
                """SELECT document_id, content_hash FROM documents
                   WHERE pipeline_id = $1 AND document_id = ANY($2::text[])
                     AND stage <> 'failed' AND content_hash <> ''""",
                pipeline_id,
                with_hash,
            )
        stored = {r[0]: r[1] for r in rows}
        kept = [i for i, (doc, h) in enumerate(pairs) if not h or stored.get(doc) != h]
        return (
            [pairs[i][0] for i in kept],
            [pairs[i][1] for i in kept],
            [priorities[i] for i in kept if i < len(priorities)],
        )
