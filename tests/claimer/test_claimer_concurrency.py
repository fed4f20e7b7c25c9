"""Several processes claim from the same pipeline at once (each with its own
connection pool, as several claimer replicas would): no document is ever
handed to two of them, none is lost, and the counters stay exact."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

from claimer.stores import counters, full_count, make_stores, new_pipeline, stage

from hevlayer.claimer.database import Database
from hevlayer.claimer.leases import ClaimRequest, LeaseStore
from hevlayer.client.enums import TransitionOutcome

PROCESSES = 3
DOCUMENTS = 3000


def _claim_until_empty(dsn: str, pipeline_id: str, worker: str, start: Any, queue: Any) -> None:
    async def main() -> list[tuple[str, int]]:
        db = Database(dsn, min_size=1, max_size=2, timeout=30)
        await db.open()
        store = LeaseStore(db)
        got: list[tuple[str, int]] = []
        await asyncio.to_thread(start.wait, 60)  # all processes start claiming together
        try:
            empty = 0
            while empty < 3:
                claimed = await store.claim(
                    ClaimRequest(pipeline_id, "pending", "embedding", 97, worker, 600)
                )
                if not len(claimed):
                    empty += 1
                    continue
                empty = 0
                got.extend(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
                result = await store.transition(
                    pipeline_id, "embedding", worker, "indexed", claimed.document_ids, claimed.fencing_tokens
                )
                assert set(result.outcomes) == {TransitionOutcome.MOVED}
        finally:
            await db.close()
        return got

    queue.put((worker, asyncio.run(main())))


async def test_processes_never_share_a_document(claimer_db: Database, database_url: str) -> None:
    stores = make_stores(claimer_db)
    pid = await new_pipeline(stores, lease_seconds=600)
    ids = [f"c{i:05d}" for i in range(DOCUMENTS)]
    for first in range(0, DOCUMENTS, 1000):
        await stage(stores, pid, ids[first : first + 1000])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = context.Barrier(PROCESSES)
    processes = [
        context.Process(target=_claim_until_empty, args=(database_url, pid, f"proc-{n}", start, queue))
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    results = [await asyncio.to_thread(queue.get, True, 120) for _ in processes]
    for process in processes:
        await asyncio.to_thread(process.join, 30)
        assert process.exitcode == 0
    claimed = [doc for _, got in results for doc, _ in got]
    assert len(claimed) == len(set(claimed)) == DOCUMENTS, "every document claimed exactly once"
    assert sorted(claimed) == ids
    assert await counters(claimer_db, pid) == {"indexed": DOCUMENTS} == await full_count(claimer_db, pid)
