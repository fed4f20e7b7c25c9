"""The change log behind WatchDocuments (migration 0011, hevlayer.claimer.changes), in process on
a real PostgreSQL: concurrent transactions number their changes without gaps and in an order that
replays to every document's final state; a watch reads what was committed; the retention sweep
makes an old cursor resync."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from claimer.stores import Stores, new_pipeline, stage

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
    stores: Stores,
) -> None:
    pipeline_id = await new_pipeline(stores)
    await asyncio.wait_for(
        asyncio.gather(*(_worker(stores, pipeline_id, n, seed=n) for n in range(WORKERS))), GUARD
    )
    log = await _log(stores, pipeline_id)
    assert [seq for seq, _, _, _ in log] == list(range(1, len(log) + 1))
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
        assert await changes.sweep_once(datetime.now(UTC) + timedelta(hours=2)) >= 3
        assert await _log(stores, pipeline_id) == []
        resumed = changes.watch(watch_spec(pipeline_id, "", [], cursor))
        again = await _first(resumed)
        assert again.snapshot
        assert [(c.document_id, c.stage) for c in again.changes] == [("a", "embedding"), ("b", "pending")]
        await resumed.aclose()
    finally:
        await notifier.close()
