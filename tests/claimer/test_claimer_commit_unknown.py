"""A transaction whose COMMIT answer is lost keeps the manifests its committed rows point into.

Found by the kill faults (tests/faults/test_kills.py): PostgreSQL killed while a claim that
split a segment was committing. The commit had landed, the claimer saw the connection drop,
took the transaction for rolled back and deleted the manifests it had written; the committed
segment then failed every claim INTERNAL ("segment manifest ... is missing from S3") and its
ids were never processed. Here the lost answer is simulated: the transaction commits, then the
connection error is raised, as when PostgreSQL dies between writing the commit and answering.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from claimer.stores import Stores, batches, keys, new_pipeline

from hevlayer.claimer import txn
from hevlayer.claimer.database import Database
from hevlayer.claimer.leases import ClaimRequest
from hevlayer.common.errors import Unavailable


async def test_a_claim_whose_commit_answer_is_lost_keeps_its_manifests(
    seg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    ids = [f"id-{i:02d}" for i in range(10)]
    await stores.documents.enqueue(batches(pid, ids))
    committed = Database.transaction

    @contextlib.asynccontextmanager
    async def answer_lost(self: Database) -> AsyncIterator[asyncpg.Connection]:
        async with committed(self) as conn:
            yield conn
        # what Database.acquire makes of the dropped connection
        lost = asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )
        raise Unavailable("PostgreSQL is unreachable: ConnectionDoesNotExistError", retry_after=1.0) from lost

    with monkeypatch.context() as patch:
        patch.setattr(Database, "transaction", answer_lost)
        with pytest.raises(Unavailable):
            # 4 of the 10 ids: the segment is split into a leased half and a queued half,
            # both new manifests, in a transaction that commits but looks failed.
            await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 4, "w1"))

    async with stores.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT manifest_key, stage, remaining FROM queue_segments WHERE pipeline_id = $1", pid
        )
    assert sorted((r["stage"], r["remaining"]) for r in rows) == [("embedding", 4), ("pending", 6)]
    # The superseded manifest is in segment_garbage (committed): the claimer's sweeper takes it.
    assert stores.segments is not None
    assert await stores.segments.garbage.sweep() == 1
    assert sorted(await keys(stores, pid)) == sorted(r["manifest_key"] for r in rows)
    # Both halves are still claimable: the queued one now, both once their leases expire.
    rest = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "w2"))
    assert len(rest) == 6
    stores.clock.advance(3600)
    again = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "w3"))
    assert sorted(again.document_ids) == ids


async def test_manifests_of_a_transaction_killed_before_its_commit_are_swept_once_old(
    seg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the kill faults: the claimer killed between its manifest PUTs and its COMMIT (or
    PostgreSQL lost during the COMMIT and still down when the claimer asks) leaves manifests that
    no row references and nothing records. The sweep of unreferenced manifests deletes them once
    they are old enough, and never one a committed segment points into."""
    stores = seg_stores
    assert stores.segments is not None
    garbage = stores.segments.garbage
    pid = await new_pipeline(stores, backend="segment")
    committed = Database.transaction

    @contextlib.asynccontextmanager
    async def killed(self: Database) -> AsyncIterator[asyncpg.Connection]:
        async with committed(self) as conn:
            yield conn
            raise Unavailable("the claimer died before COMMIT", retry_after=1.0)  # rolled back

    async def dead(keys: object, *, outcome_unknown: bool = False) -> None:
        """A killed claimer cleans nothing up."""

    with monkeypatch.context() as patch:
        patch.setattr(Database, "transaction", killed)
        patch.setattr(garbage, "discard", dead)
        with pytest.raises(Unavailable):
            await stores.documents.enqueue(batches(pid, [f"lost-{i:02d}" for i in range(25)]))
    orphans = await keys(stores, pid)
    assert orphans  # the first segment's manifest, written before the failed COMMIT
    async with stores.db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queue_segments WHERE pipeline_id = $1", pid) == 0

    ids = [f"id-{i:02d}" for i in range(15)]
    await stores.documents.enqueue(batches(pid, ids))
    live = sorted(set(await keys(stores, pid)) - set(orphans))
    assert live

    assert await garbage.sweep_unreferenced() == 0  # younger than CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS
    assert sorted(await keys(stores, pid)) == sorted([*orphans, *live])
    assert await garbage.sweep_unreferenced(min_age_seconds=0) == len(orphans)
    assert sorted(await keys(stores, pid)) == live
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "w1"))
    assert sorted(claimed.document_ids) == ids


async def test_a_transaction_slower_than_the_orphan_guard_is_retried_and_then_refused(
    seg_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No attempt commits a manifest it wrote more than MAX_UNCOMMITTED_SECONDS earlier (the sweep
    may count it as abandoned): with the limit below zero every attempt is started over, the call
    ends UNAVAILABLE, and nothing is left in PostgreSQL or S3."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    monkeypatch.setattr(txn, "MAX_UNCOMMITTED_SECONDS", -1.0)
    with pytest.raises(Unavailable, match="RetryTransaction"):
        await stores.documents.enqueue(batches(pid, [f"id-{i:02d}" for i in range(15)]))
    assert await keys(stores, pid) == []
    async with stores.db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queue_segments WHERE pipeline_id = $1", pid) == 0
    monkeypatch.undo()
    await stores.documents.enqueue(batches(pid, [f"id-{i:02d}" for i in range(15)]))
    assert await keys(stores, pid)
