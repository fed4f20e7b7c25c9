"""The change log behind WatchDocuments (migrations 0011-0013, hevlayer.claimer.changes), in process
on a real PostgreSQL: concurrent transactions number their changes without gaps and in an order
that replays to every document's final state; a watch reads what was committed; the retention sweep
makes an old cursor resync. Only watched pipelines are logged: a pipeline nobody watches gets no
change rows (row and segment backends); opening a watch turns logging on without losing a change
of a transaction that skipped logging; a cursor from before a period without logging resyncs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
from claimer.stores import Stores, batches, new_pipeline, stage

from hevlayer.claimer.changes import ChangeLog, WatchUpdate, watch_spec
from hevlayer.claimer.leases import ClaimRequest
from hevlayer.claimer.status_watch import StatusNotifier

GUARD = 60.0  # hang guard for awaits, not a timing assertion
WORKERS = 6
ROUNDS = 8


async def _log(stores: Stores, pipeline_id: str) -> list[tuple[int, str, str, int]]:
    async with stores.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT seq, document_id, stage, fencing_token FROM document_changes WHERE pipeline_id = $1 "
            "ORDER BY seq",
            pipeline_id,
        )
    return [(int(r[0]), r[1], r[2], int(r[3])) for r in rows]


async def _head(stores: Stores, pipeline_id: str) -> int:
    async with stores.db.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT last_seq FROM document_change_heads WHERE pipeline_id = $1", pipeline_id
            )
        )


def _change_log(stores: Stores, database_url: str, retention_seconds: float = 3600) -> ChangeLog:
    """A ChangeLog for watch_pipeline alone (its notifier is not started: no watch reads)."""
    notifier = StatusNotifier(database_url, "hevlayer_document_changes")
    return ChangeLog(stores.db, notifier, asyncio.Event(), retention_seconds=retention_seconds)


async def _rows(stores: Stores, pipeline_id: str) -> dict[str, tuple[str, int]]:
    async with stores.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT document_id, stage, fencing_token FROM documents WHERE pipeline_id = $1", pipeline_id
        )
    return {r[0]: (r[1], int(r[2])) for r in rows}


async def _worker(stores: Stores, pipeline_id: str, n: int, seed: int) -> None:
    """Stage, claim and move documents at random, as a worker fleet would, concurrently."""
    rng = random.Random(seed)
    worker = f"w{n}"
    for round_ in range(ROUNDS):
        ids = [f"d{rng.randrange(12)}" for _ in range(rng.randrange(1, 4))]
        await stage(stores, pipeline_id, sorted(set(ids)))
        claimed = await stores.leases.claim(ClaimRequest(pipeline_id, "pending", "embedding", 3, worker))
        if not claimed.document_ids:
            continue
        to_stage = rng.choice(["indexed", "failed", "pending"])
        await stores.leases.transition(
            pipeline_id,
            "embedding",
            worker,
            to_stage,
            claimed.document_ids,
            claimed.fencing_tokens,
            f"r{round_}",
        )
        if rng.random() < 0.2:
            await stores.documents.forget(pipeline_id, [rng.choice(ids)])


async def test_concurrent_changes_are_numbered_without_gaps_in_an_order_that_replays_to_the_rows(
    stores: Stores, database_url: str
) -> None:
    pipeline_id = await new_pipeline(stores)
    await _change_log(stores, database_url).watch_pipeline(pipeline_id)
    start = await _head(stores, pipeline_id)
    await asyncio.wait_for(
        asyncio.gather(*(_worker(stores, pipeline_id, n, seed=n) for n in range(WORKERS))), GUARD
    )
    log = await _log(stores, pipeline_id)
    assert log
    assert [seq for seq, _, _, _ in log] == list(range(start + 1, start + len(log) + 1))
    replayed: dict[str, tuple[str, int]] = {}
    for _, document_id, stage_, token in log:
        if stage_:
            replayed[document_id] = (stage_, token)
        else:
            replayed.pop(document_id, None)
    assert replayed == await _rows(stores, pipeline_id)
    # Each document's tokens only grow along the log (its changes are in commit order).
    last: dict[str, int] = {}
    for _, document_id, stage_, token in log:
        if stage_:
            assert token > last.get(document_id, 0), document_id
            last[document_id] = token


async def _first(updates: AsyncIterator[WatchUpdate]) -> WatchUpdate:
    return await asyncio.wait_for(updates.__anext__(), GUARD)


async def test_a_watch_reads_the_log_and_a_swept_cursor_resyncs(stores: Stores, database_url: str) -> None:
    pipeline_id = await new_pipeline(stores)
    await stage(stores, pipeline_id, ["a", "b"])
    notifier = StatusNotifier(database_url, "hevlayer_document_changes")
    await notifier.start()
    changes = ChangeLog(stores.db, notifier, asyncio.Event(), retention_seconds=3600)
    try:
        watch = changes.watch(watch_spec(pipeline_id, "", [], ""))
        snapshot = await _first(watch)
        assert snapshot.snapshot_complete
        assert [c.document_id for c in snapshot.changes] == ["a", "b"]
        cursor = snapshot.cursor
        await stores.leases.claim(ClaimRequest(pipeline_id, "pending", "embedding", 1, "w"))
        update = await _first(watch)
        assert [(c.document_id, c.stage) for c in update.changes] == [("a", "embedding")]
        await watch.aclose()
        assert changes.active == 0

        # Nothing is older than the retention yet; an hour and more later, everything is.
        assert await changes.sweep_once() == 0
        assert await changes.sweep_once(datetime.now(UTC) + timedelta(hours=2)) >= 1
        assert await _log(stores, pipeline_id) == []
        resumed = changes.watch(watch_spec(pipeline_id, "", [], cursor))
        again = await _first(resumed)
        assert again.snapshot
        assert [(c.document_id, c.stage) for c in again.changes] == [("a", "embedding"), ("b", "pending")]
        await resumed.aclose()
    finally:
        await notifier.close()


async def _all_changes(stores: Stores, pipeline_id: str) -> tuple[int, int]:
    """(change rows, head number) of the pipeline."""
    return len(await _log(stores, pipeline_id)), await _head(stores, pipeline_id)


async def test_a_pipeline_nobody_watches_gets_no_change_rows(stores: Stores) -> None:
    pipeline_id = await new_pipeline(stores)
    await stage(stores, pipeline_id, ["a", "b", "c"])
    claimed = await stores.leases.claim(ClaimRequest(pipeline_id, "pending", "embedding", 3, "w"))
    tokens = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
    await stores.leases.transition(pipeline_id, "embedding", "w", "indexed", ["a"], [tokens["a"]])
    await stores.leases.transition(pipeline_id, "embedding", "w", "failed", ["b"], [tokens["b"]], "bad")
    await stores.documents.forget(pipeline_id, ["a"])
    rows = await _rows(stores, pipeline_id)
    assert {d: stage_ for d, (stage_, _) in rows.items()} == {"b": "failed", "c": "embedding"}
    assert await _all_changes(stores, pipeline_id) == (0, 0)


async def test_a_segment_pipeline_nobody_watches_gets_no_change_rows_and_a_watched_one_does(
    seg_stores: Stores, database_url: str
) -> None:
    stores = seg_stores
    ids = [f"id-{i:02d}" for i in range(30)]
    for watched in (False, True):
        pipeline_id = await new_pipeline(stores, backend="segment")
        if watched:
            await _change_log(stores, database_url).watch_pipeline(pipeline_id)
        start = await _head(stores, pipeline_id)
        await stores.documents.enqueue(batches(pipeline_id, ids))
        claimed = await stores.leases.claim(ClaimRequest(pipeline_id, "pending", "embedding", 30, "w"))
        assert sorted(claimed.document_ids) == ids
        tokens = sorted(set(claimed.fencing_tokens))
        # Whole leases of the first segment to indexed; of the second, ids one by one; the
        # third's ids to failed (they become rows).
        moved = await stores.leases.transition_segment_leases(
            pipeline_id, "embedding", "w", "indexed", tokens[:1]
        )
        first = [
            d for d, t in zip(claimed.document_ids, claimed.fencing_tokens, strict=True) if t == tokens[0]
        ]
        assert list(moved.moved) == [len(first)]
        second = [
            (d, t)
            for d, t in zip(claimed.document_ids, claimed.fencing_tokens, strict=True)
            if t == tokens[1]
        ]
        await stores.leases.transition(
            pipeline_id, "embedding", "w", "indexed", [d for d, _ in second], [t for _, t in second]
        )
        third = [
            (d, t)
            for d, t in zip(claimed.document_ids, claimed.fencing_tokens, strict=True)
            if t == tokens[2]
        ]
        await stores.leases.transition(
            pipeline_id, "embedding", "w", "failed", [d for d, _ in third], [t for _, t in third], "bad"
        )
        log = await _log(stores, pipeline_id)
        if not watched:
            assert (log, await _head(stores, pipeline_id)) == ([], 0)
            continue
        assert [seq for seq, _, _, _ in log] == list(range(start + 1, start + 31))
        assert [(d, s) for _, d, s, _ in log] == (
            [(d, "indexed") for d in first]
            + [(d, "indexed") for d, _ in second]
            + [(d, "failed") for d, _ in third]
        )


ADVISORY_WAIT = """SELECT count(*) FROM pg_locks
                   WHERE locktype = 'advisory' AND classid = 1751672934 AND objsubid = 2 AND NOT granted"""


async def _until_waiting_for_the_lock(observer: asyncpg.Connection) -> None:
    """Poll pg_locks until a session waits for a change-log advisory lock (GUARD: hang guard)."""
    for _ in range(int(GUARD / 0.05)):
        if await observer.fetchval(ADVISORY_WAIT) > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no session waits for the change log's advisory lock")


async def test_opening_a_watch_waits_for_transactions_that_skipped_logging_and_misses_nothing(
    stores: Stores, database_url: str
) -> None:
    """A transaction that moved documents while nobody watched (no change rows) is still open
    when a watch opens: turning logging on waits for its commit, so the watch's snapshot shows
    its moves; a statement after that is a change."""
    pipeline_id = await new_pipeline(stores)
    await stage(stores, pipeline_id, ["a", "b"])
    notifier = StatusNotifier(database_url, "hevlayer_document_changes")
    await notifier.start()
    changes = ChangeLog(stores.db, notifier, asyncio.Event(), retention_seconds=3600)
    writer = await asyncpg.connect(database_url)
    observer = await asyncpg.connect(database_url)
    move = """UPDATE documents SET stage = 'indexed', fencing_token = nextval('fencing_token_seq')
              WHERE pipeline_id = $1 AND document_id = $2"""
    try:
        tr = writer.transaction()
        await tr.start()
        await writer.execute(move, pipeline_id, "a")  # logging off: no row, a shared lock
        watch = changes.watch(watch_spec(pipeline_id, "", [], ""))
        opening = asyncio.create_task(_first(watch))
        # The watch's transaction waits for the writer's shared advisory lock.
        await _until_waiting_for_the_lock(observer)
        assert not opening.done()
        await writer.execute(move, pipeline_id, "b")  # still off: the watch has not committed
        await tr.commit()
        snapshot = await opening
        assert snapshot.snapshot_complete
        assert [(c.document_id, c.stage) for c in snapshot.changes] == [("a", "indexed"), ("b", "indexed")]
        assert await _log(stores, pipeline_id) == []
        await stage(stores, pipeline_id, ["c"])
        update = await _first(watch)
        assert [(c.document_id, c.stage, c.sequence) for c in update.changes] == [
            ("c", "pending", snapshot.changes[0].sequence + 1)
        ]
        await watch.aclose()
    finally:
        await writer.close()
        await observer.close()
        await notifier.close()


class View:
    """What a client builds from a watch: a snapshot replaces it, changes apply in order."""

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self.cursor = ""
        self._snapshotting = False

    def apply(self, update: WatchUpdate) -> None:
        if update.snapshot and not self._snapshotting:
            self.documents.clear()
            self._snapshotting = True
        for change in update.changes:
            if change.deleted:
                self.documents.pop(change.document_id, None)
            else:
                self.documents[change.document_id] = change.stage
        if update.snapshot_complete:
            self._snapshotting = False
        self.cursor = update.cursor or self.cursor

    @property
    def position(self) -> int:
        return int(self.cursor.rsplit(".", 1)[1]) if self.cursor else -1


async def test_a_watch_opened_while_workers_run_ends_up_exact(stores: Stores, database_url: str) -> None:
    """Workers stage, claim, move and delete while the watch opens (logging off until then):
    the snapshot and the changes after it replay to the documents' final states."""
    pipeline_id = await new_pipeline(stores)
    notifier = StatusNotifier(database_url, "hevlayer_document_changes")
    await notifier.start()
    changes = ChangeLog(stores.db, notifier, asyncio.Event(), retention_seconds=3600)
    try:
        workers = [asyncio.create_task(_worker(stores, pipeline_id, n, seed=100 + n)) for n in range(WORKERS)]
        await stage(stores, pipeline_id, ["early"])
        watch = changes.watch(watch_spec(pipeline_id, "", [], ""))
        view = View()
        while True:  # the snapshot, while the workers go on
            update = await _first(watch)
            view.apply(update)
            if update.snapshot_complete:
                break
        await asyncio.wait_for(asyncio.gather(*workers), GUARD)
        head = await _head(stores, pipeline_id)
        while view.position < head:
            update = await _first(watch)
            assert not update.snapshot
            view.apply(update)
        await watch.aclose()
    finally:
        await notifier.close()
    assert view.documents == {d: s for d, (s, _) in (await _rows(stores, pipeline_id)).items()}


async def test_a_cursor_from_before_a_period_without_logging_resyncs(
    stores: Stores, database_url: str
) -> None:
    pipeline_id = await new_pipeline(stores)
    await stage(stores, pipeline_id, ["a"])
    notifier = StatusNotifier(database_url, "hevlayer_document_changes")
    await notifier.start()
    changes = ChangeLog(stores.db, notifier, asyncio.Event(), retention_seconds=3600)
    try:
        watch = changes.watch(watch_spec(pipeline_id, "", [], ""))
        cursor = (await _first(watch)).cursor
        await watch.aclose()
        head = await _head(stores, pipeline_id)
        # Opening or refreshing while logging is on keeps the numbers as they are.
        await changes.watch_pipeline(pipeline_id)
        assert await _head(stores, pipeline_id) == head

        # The retention has passed since the last watch: logging is off (what the clock would do).
        async with stores.db.acquire() as conn:
            await conn.execute(
                "UPDATE document_change_heads SET watched_until = now() - interval '1 second' "
                "WHERE pipeline_id = $1",
                pipeline_id,
            )
        await stores.leases.claim(ClaimRequest(pipeline_id, "pending", "embedding", 1, "w"))
        assert await _all_changes(stores, pipeline_id) == (0, head)

        resumed = changes.watch(watch_spec(pipeline_id, "", [], cursor))
        again = await _first(resumed)
        assert again.snapshot
        assert again.snapshot_complete
        assert [(c.document_id, c.stage) for c in again.changes] == [("a", "embedding")]
        assert again.cursor != cursor
        assert await _head(stores, pipeline_id) == head + 1  # the skipped number
        await resumed.aclose()
    finally:
        await notifier.close()
