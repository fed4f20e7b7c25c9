"""The document change log and its watchers (``WatchChanges``, behind ``WatchDocuments``).

Triggers on ``documents`` (migration 0011) append every committed change of a
document's stage or fencing token, and every deletion, to ``document_changes``
with a per-pipeline number that has no gaps and follows commit order, and
notify ``hevlayer_document_changes`` with the pipeline id. Moves of ids that
live only in the segmented queue to ``indexed`` are logged by the claimer
(``log_document_changes``).

Only pipelines somebody watches are logged (migration 0013): a watch turns
logging on (:meth:`ChangeLog.watch_pipeline`, in a transaction of its own,
committed before the watch reads anything) until the claimer's clock +
``CLAIMER_CHANGE_RETENTION_SECONDS`` (+ two refresh intervals), and every open
watch moves that on every refresh interval (a tenth of the retention, at most
a minute). A pipeline nobody watches costs a read of its head row and a shared
advisory lock per statement, and no row. Turning logging on after a period
without it skips a number, so a cursor issued before that period finds the
change after it missing and resyncs, like a swept one.

A watch (:meth:`ChangeLog.watch`) is a loop over the log, not a queue: it
reads the changes after its position in batches of ``CHANGE_BATCH``, yields
them, and waits for the pipeline's next notification (or ``KEEPALIVE_SECONDS``)
when it has read everything. A slow client therefore makes the watch wait in
its ``yield`` (gRPC flow control); the claimer holds one batch per watch,
whatever the client's speed. The number of watches is bounded
(``CLAIMER_MAX_WATCHES``: RESOURCE_EXHAUSTED beyond it).

Cursors are ``c1.<incarnation>.<number>``: the pipeline's creation time in
microseconds (a pipeline deleted and created again under the same id is
another incarnation) and the number of the last change the client has. A
watch resyncs (sends a snapshot again) when its position can no longer be
continued: the cursor is of another incarnation or beyond the log's head, or
the change after the position was deleted by the retention sweep
(:meth:`ChangeLog.sweep_once`, rows older than ``CLAIMER_CHANGE_RETENTION_SECONDS``).

Snapshots hold no transaction open while the client reads: the head number
is read first, then the matching document rows in id order, batch by batch.
A row may therefore already show a change numbered after the snapshot's
cursor; that change follows the snapshot as a change too, so a client that
applies the snapshot and then the changes in order ends up exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from hevlayer.claimer import validation as v
from hevlayer.claimer.database import Database
from hevlayer.claimer.documents import prefix_upper_bound
from hevlayer.claimer.status_watch import StatusNotifier
from hevlayer.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger("hevlayer.claimer.changes")

CHANNEL = "hevlayer_document_changes"
CHANGE_BATCH = 500
"""Log rows read per query, and the most changes per message."""
SNAPSHOT_BATCH = 1000
"""Document rows per snapshot message."""
KEEPALIVE_SECONDS = 30.0
"""A watch reads the log at least this often even without a notification."""
SWEEP_BATCH = 10_000

_CURSOR = re.compile(r"^c1\.(\d{1,20})\.(\d{1,20})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Change:
    """One committed change of a document (or its state, in a snapshot)."""

    sequence: int
    document_id: str
    stage: str
    """The stage entered; empty when deleted."""
    fencing_token: int
    content_hash: str
    last_error: str
    change_time: datetime

    @property
    def deleted(self) -> bool:
        """The document was deleted."""
        return self.stage == ""


@dataclass(frozen=True)
class WatchUpdate:
    """One message of a watch."""

    changes: list[Change]
    snapshot: bool = False
    snapshot_complete: bool = False
    cursor: str = ""


@dataclass(frozen=True)
class WatchSpec:
    """What a watch asks for (validated)."""

    pipeline_id: str
    id_prefix: str
    stages: frozenset[str]
    incarnation: int | None
    """From the cursor; None: start with a snapshot."""
    position: int

    def matches(self, document_id: str, stage: str) -> bool:
        """Whether a change of ``document_id`` into ``stage`` ('' = deleted) is sent."""
        if not document_id.startswith(self.id_prefix):
            return False
        return not self.stages or stage == "" or stage in self.stages


def watch_spec(pipeline_id: str, id_prefix: str, stages: Sequence[str], cursor: str) -> WatchSpec:
    """The validated request; INVALID_ARGUMENT naming the field."""
    v.validate_pipeline_id(pipeline_id)
    if id_prefix:
        v.max_bytes(id_prefix, v.MAX_DOCUMENT_ID_BYTES, "id_prefix")
        if "\x00" in id_prefix:  # PostgreSQL's text cannot hold it: no document id has it
            raise InvalidArgument.field("id_prefix", "must not contain NUL characters")
    for i, stage in enumerate(stages):
        v.stage_name(stage, f"stages[{i}]")
    incarnation: int | None = None
    position = 0
    if cursor:
        match = _CURSOR.match(cursor)
        if match is None:
            raise InvalidArgument.field("cursor", "is not a cursor of a WatchDocuments response")
        incarnation, position = int(match.group(1)), int(match.group(2))
    return WatchSpec(pipeline_id, id_prefix, frozenset(stages), incarnation, position)


def incarnation_micros(create_time: datetime) -> int:
    """A pipeline's incarnation in a cursor: its creation time in microseconds."""
    return (create_time - _EPOCH) // _MICROSECOND


def cursor_of(incarnation: int, position: int) -> str:
    """The cursor of a position in an incarnation's log."""
    return f"c1.{incarnation}.{position}"


def _change(row: asyncpg.Record) -> Change:
    return Change(
        sequence=int(row["seq"]),
        document_id=row["document_id"],
        stage=row["stage"],
        fencing_token=int(row["fencing_token"]),
        content_hash=row["content_hash"],
        last_error=row["last_error"],
        change_time=row["change_time"],
    )


async def log_segment_moves(
    conn: asyncpg.Connection,
    pipeline_id: str,
    document_ids: Sequence[str],
    stage: str,
    fencing_token: int,
    content_hashes: Sequence[str],
) -> None:
    """Log moves of segment-leased ids (which have no document row) to ``stage``, inside the
    caller's transaction (numbered and notified like the trigger's changes)."""
    if not document_ids:
        return
    n = len(document_ids)
    await conn.execute(
        "SELECT log_document_changes($1, $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])",
        pipeline_id,
        list(document_ids),
        [stage] * n,
        [fencing_token] * n,
        list(content_hashes) if len(content_hashes) == n else [""] * n,
        [""] * n,
    )


class ChangeLog:
    """Serves watches of the change log and sweeps it."""

    def __init__(
        self,
        db: Database,
        notifier: StatusNotifier,
        stopping: asyncio.Event,
        *,
        max_watches: int = 256,
        retention_seconds: float = 86400.0,
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._stopping = stopping
        self.max_watches = max_watches
        self.retention_seconds = retention_seconds
        self.active = 0
        """Watches being served."""
        self._sweeper: asyncio.Task[None] | None = None

    # -- watching ---------------------------------------------------------------------

    async def watch(self, spec: WatchSpec) -> AsyncGenerator[WatchUpdate, None]:
        """The watch's messages until the client goes away (or the claimer stops:
        UNAVAILABLE). NOT_FOUND when the pipeline does not exist or is deleted."""
        if self.active >= self.max_watches:
            raise ResourceExhausted(
                f"the claimer already serves {self.max_watches} watches (CLAIMER_MAX_WATCHES)",
                retry_after=1.0,
            )
        self.active += 1
        try:
            async for update in self._watch(spec):
                yield update
        finally:
            self.active -= 1

    async def _read(self, pipeline_id: str, position: int) -> tuple[int, int, list[Change]]:
        """(incarnation, last change number, up to CHANGE_BATCH changes after ``position``) as
        of one moment; NOT_FOUND if the pipeline is gone."""
        async with self._db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(
                """SELECT p.create_time, h.last_seq FROM pipelines p
                   JOIN document_change_heads h ON h.pipeline_id = p.id WHERE p.id = $1""",
                pipeline_id,
            )
            if row is None:
                raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
            rows = await conn.fetch(
                """SELECT seq, document_id, stage, fencing_token, content_hash, last_error, change_time
                   FROM document_changes WHERE pipeline_id = $1 AND seq > $2
                   ORDER BY seq LIMIT $3""",
                pipeline_id,
                position,
                CHANGE_BATCH,
            )
        return incarnation_micros(row["create_time"]), int(row["last_seq"]), [_change(r) for r in rows]

    async def _watch(self, spec: WatchSpec) -> AsyncIterator[WatchUpdate]:
        pid = spec.pipeline_id
        # Logging on before the first read: with a cursor, a period without logging shows as a
        # skipped number; without one, every change after the snapshot's head is logged.
        await self.watch_pipeline(pid)
        refreshed = time.monotonic()
        seen = self._notifier.generation(pid)  # before the first read: no notification is lost
        incarnation = spec.incarnation
        position = spec.position if incarnation is not None else 0
        sent = position
        while True:
            if time.monotonic() - refreshed >= self.refresh_seconds:
                # Late (a slow client kept the watch in its yield) is safe: if logging went off
                # meanwhile, this skips a number and the next read resyncs.
                await self.watch_pipeline(pid)
                refreshed = time.monotonic()
            current, head, changes = await self._read(pid, position)
            continuable = (
                current == incarnation
                and position <= head
                and (changes[0].sequence == position + 1 if changes else position == head)
            )
            if not continuable:
                # No cursor, another incarnation's, or the changes after it were swept.
                if incarnation is not None:
                    log.info("watch of %s resyncs after change %d", pid, position)
                incarnation, position = current, head
                async for update in self._snapshot(spec, incarnation, position):
                    yield update
                sent = position
                continue
            if changes:
                position = changes[-1].sequence
                matched = [c for c in changes if spec.matches(c.document_id, c.stage)]
                if matched:
                    yield WatchUpdate(matched, cursor=cursor_of(current, position))
                    sent = position
                if len(changes) == CHANGE_BATCH:
                    continue
            if sent != position:
                # Only changes the watch does not want: move the client's cursor on.
                yield WatchUpdate([], cursor=cursor_of(current, position))
                sent = position
            if self._stopping.is_set():
                raise Unavailable("the claimer is stopping; watch again", retry_after=1.0)
            seen = await self._notifier.wait_change(pid, seen, min(KEEPALIVE_SECONDS, self.refresh_seconds))
            if self._stopping.is_set():
                raise Unavailable("the claimer is stopping; watch again", retry_after=1.0)

    async def _snapshot(self, spec: WatchSpec, incarnation: int, head: int) -> AsyncIterator[WatchUpdate]:
        """The matching document rows, read after change ``head``, in id order."""
        stages = sorted(spec.stages)
        after = spec.id_prefix
        inclusive = True
        upper = prefix_upper_bound(spec.id_prefix) if spec.id_prefix else None
        while True:
            async with self._db.acquire() as conn:
                rows = await conn.fetch(
                    """SELECT document_id, stage, fencing_token, content_hash, last_error, update_time
                       FROM documents
                       WHERE pipeline_id = $1
                         AND (document_id > $2 OR ($3 AND document_id = $2))
                         AND ($4::text IS NULL OR document_id < $4)
                         AND (cardinality($5::text[]) = 0 OR stage = ANY($5::text[]))
                       ORDER BY document_id LIMIT $6""",
                    spec.pipeline_id,
                    after,
                    inclusive,
                    upper,
                    stages,
                    SNAPSHOT_BATCH,
                )
            changes = [
                Change(
                    sequence=head,
                    document_id=r["document_id"],
                    stage=r["stage"],
                    fencing_token=int(r["fencing_token"]),
                    content_hash=r["content_hash"],
                    last_error=r["last_error"],
                    change_time=r["update_time"],
                )
                for r in rows
            ]
            if len(rows) < SNAPSHOT_BATCH:
                yield WatchUpdate(
                    changes, snapshot=True, snapshot_complete=True, cursor=cursor_of(incarnation, head)
                )
                return
            yield WatchUpdate(changes, snapshot=True)
            after = rows[-1]["document_id"]
            inclusive = False

    # -- retention ----------------------------------------------------------------------

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Delete changes older than the retention; return how many."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.retention_seconds)
        total = 0
        while True:
            async with self._db.acquire() as conn:
                deleted = await conn.fetchval(
                    """WITH gone AS (
                           DELETE FROM document_changes WHERE ctid = ANY (ARRAY(
                               SELECT ctid FROM document_changes WHERE change_time < $1 LIMIT $2))
                           RETURNING 1)
                       SELECT count(*) FROM gone""",
                    cutoff,
                    SWEEP_BATCH,
                )
            total += int(deleted)
            if deleted < SWEEP_BATCH:
                return total

    @property
    def refresh_seconds(self) -> float:
        """How often an open watch keeps its pipeline's logging on (and the sweep runs)."""
        return min(60.0, max(1.0, self.retention_seconds / 10))

    async def watch_pipeline(self, pipeline_id: str) -> None:
        """Turn the pipeline's change logging on, or keep it on, until the retention (plus two
        refresh intervals) from now, in a committed transaction of its own. Nothing when the
        pipeline does not exist (the watch's read answers NOT_FOUND)."""
        seconds = self.retention_seconds + 2 * self.refresh_seconds
        for attempt in range(5):
            try:
                async with self._db.acquire() as conn:
                    await conn.fetchval("SELECT watch_document_changes($1, $2)", pipeline_id, seconds)
                return
            except asyncpg.DeadlockDetectedError:
                # Transactions waiting on each other's rows and queued behind this exclusive
                # lock; PostgreSQL usually reorders the queue instead, else one of us retries.
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    def start_sweeper(self) -> None:
        """Sweep every tenth of the retention (at most every minute), in the background."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="change-log-sweeper")

    async def _sweep_forever(self) -> None:
        interval = self.refresh_seconds
        while True:
            try:
                swept = await self.sweep_once()
                if swept:
                    log.info("change log: %d changes older than the retention deleted", swept)
            except (Unavailable, asyncpg.PostgresError, OSError) as exc:
                log.warning("change log sweep failed: %s", exc)
            await asyncio.sleep(interval)

    async def stop_sweeper(self) -> None:
        """Stop the background sweep."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
