"""Claim priority on both queue backends against real PostgreSQL and real S3 (SeaweedFS):
claims take the stage's ids by (priority ASC, then age), the seed's durable task queue;
a reclaimed id keeps its priority, so an expired lease of a larger priority does not jump
a queued id of a smaller one; within one priority an expired lease comes first. On the
segment backend a segment holds ids of one priority (migration 0010), so an enqueue of
mixed priorities writes one segment per priority, and a split keeps its place in line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from claimer.stores import Stores, counters, full_count, new_pipeline, packs_of, stage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hevlayer.claimer.documents import EnqueueBatch
from hevlayer.claimer.leases import ClaimRequest
from hevlayer.client.types import StagedRecord

BACKENDS = ["row", "segment"]


async def prioritized(
    pipeline_id: str, entries: Sequence[tuple[str, int]], *, per_message: int = 3, stage_name: str = ""
) -> AsyncIterator[EnqueueBatch]:
    """An EnqueueIds stream of ``(id, priority)`` entries, ``per_message`` per message."""
    for start in range(0, len(entries), per_message):
        part = entries[start : start + per_message]
        yield EnqueueBatch(
            pipeline_id,
            [doc for doc, _ in part],
            [""] * len(part),
            stage=stage_name,
            priorities=[priority for _, priority in part],
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def both(backend: str, stores: Stores, seg_stores: Stores) -> Stores:
    """The stores of the backend under test (segment stores write 10-id segments)."""
    return seg_stores if backend == "segment" else stores


async def claim(stores: Stores, pid: str, limit: int, worker: str = "w") -> list[str]:
    return (await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", limit, worker))).document_ids


async def test_a_higher_priority_is_claimed_first(both: Stores, backend: str) -> None:
    pid = await new_pipeline(both, backend=backend)
    backlog = [(f"low-{i:02d}", 5) for i in range(25)]
    await both.documents.enqueue(prioritized(pid, [*backlog, ("urgent", -1), ("normal", 0)]))
    assert await claim(both, pid, 1) == ["urgent"]
    assert await claim(both, pid, 1) == ["normal"]
    # then the backlog in enqueue order, across the segments (and the split) it fills
    start = 0
    for limit in (4, 9, 1, 20):
        got = await claim(both, pid, limit)
        assert sorted(got) == [doc for doc, _ in backlog[start : start + limit]]
        start += limit
    assert await counters(both.db, pid) == {"embedding": 27} == await full_count(both.db, pid)


async def test_an_expired_low_priority_lease_does_not_jump_a_queued_high_one(
    both: Stores, backend: str
) -> None:
    pid = await new_pipeline(both, backend=backend, lease_seconds=10)
    await both.documents.enqueue(prioritized(pid, [("slow-1", 5), ("slow-2", 5)]))
    assert sorted(await claim(both, pid, 2, "crashed")) == ["slow-1", "slow-2"]
    await both.documents.enqueue(prioritized(pid, [("fresh-high", 0), ("fresh-low", 9)]))
    both.clock.advance(11)  # the crashed worker's leases expire

    first = await both.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "w2"))
    assert (first.document_ids, first.expired) == (["fresh-high"], 0)
    second = await both.leases.claim(ClaimRequest(pid, "pending", "embedding", 2, "w2"))
    assert sorted(second.document_ids) == ["slow-1", "slow-2"]
    assert (second.expired, second.attempts) == (2, [2, 2])
    assert await claim(both, pid, 5, "w2") == ["fresh-low"]


async def test_within_a_priority_an_expired_lease_comes_before_queued_ids(both: Stores, backend: str) -> None:
    pid = await new_pipeline(both, backend=backend, lease_seconds=10)
    await both.documents.enqueue(prioritized(pid, [("held", 1)]))
    assert await claim(both, pid, 1, "crashed") == ["held"]
    await both.documents.enqueue(prioritized(pid, [("queued", 1)]))
    both.clock.advance(11)
    reclaimed = await both.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "w2"))
    assert (reclaimed.document_ids, reclaimed.expired) == (["held"], 1)
    assert await claim(both, pid, 1, "w2") == ["queued"]


async def test_segment_rows_and_segments_merge_by_priority(seg_stores: Stores) -> None:
    """A segmented pipeline's stage holds staged document rows and queued segments: one claim
    takes them merged by priority. A staged id that was leased from a segment keeps its
    segment's priority on its new row."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    await stores.documents.enqueue(prioritized(pid, [("e-urgent", -3), ("e-late", 7)], stage_name="extract"))
    extracted = await stores.leases.claim(ClaimRequest(pid, "extract", "extracting", 2, "cpu"))
    assert extracted.document_ids == ["e-urgent", "e-late"]
    packs = await packs_of(stores, pid)
    await stores.documents.record_staged(
        pid,
        [
            StagedRecord(doc, f"h-{doc}", f"{packs}{doc}#0:1", 1, lease_token=token)
            for doc, token in zip(extracted.document_ids, extracted.fencing_tokens, strict=True)
        ],
    )
    await stage(stores, pid, ["staged-plain"])  # a row of priority 0
    await stores.documents.enqueue(prioritized(pid, [("seg-a", 0), ("seg-b", 2), ("seg-c", -5)]))
    order = [(await claim(stores, pid, 1))[0] for _ in range(6)]
    assert order == ["seg-c", "e-urgent", "staged-plain", "seg-a", "seg-b", "e-late"]
    assert await claim(stores, pid, 5) == []


async def test_a_transition_keeps_each_segment_priority(seg_stores: Stores) -> None:
    """Ids of two priorities leased in one claim and moved on together land in one new
    segment per priority."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    await stores.documents.enqueue(
        prioritized(pid, [("b1", 4), ("a1", 1), ("b2", 4), ("a2", 1)], stage_name="extract")
    )
    leased = await stores.leases.claim(ClaimRequest(pid, "extract", "extracting", 4, "cpu"))
    assert leased.document_ids == ["a1", "a2", "b1", "b2"]
    moved = await stores.leases.transition(
        pid, "extracting", "cpu", "pending", leased.document_ids[::-1], leased.fencing_tokens[::-1]
    )
    assert len(moved.outcomes) == 4
    async with stores.db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT priority, id_count FROM queue_segments WHERE pipeline_id = $1 AND stage = 'pending'"
            " ORDER BY priority",
            pid,
        )
    assert [tuple(r) for r in rows] == [(1, 2), (4, 2)]
    assert await claim(stores, pid, 4) == ["a2", "a1", "b2", "b1"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    priorities=st.lists(st.integers(min_value=-2, max_value=2), min_size=1, max_size=30),
    limits=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6),
    per_message=st.integers(min_value=1, max_value=8),
)
async def test_claims_follow_priority_then_enqueue_order(
    stores: Stores, seg_stores: Stores, priorities: list[int], limits: list[int], per_message: int
) -> None:
    """Whatever the priorities, message sizes and claim limits, on both backends the claims
    take the ids in the order of (priority, enqueue order). (The stores hold no state between
    examples; every example has its own pipelines.)"""
    entries = [(f"d{i:02d}", p) for i, p in enumerate(priorities)]
    expected = [doc for doc, _ in sorted(entries, key=lambda e: e[1])]  # sorted() is stable
    for backend, chosen in (("row", stores), ("segment", seg_stores)):
        pid = await new_pipeline(chosen, backend=backend)
        if backend == "row":
            for entry in entries:  # one transaction per id: the ids' age is their order
                await chosen.documents.enqueue(prioritized(pid, [entry]))
        else:
            await chosen.documents.enqueue(prioritized(pid, entries, per_message=per_message))
        taken: list[str] = []
        rounds = 0
        while len(taken) < len(entries):
            limit = limits[rounds % len(limits)]
            got = await claim(chosen, pid, limit)
            # one claim's ids: the next ``limit`` of the order (a row claim returns them unordered)
            assert sorted(got) == sorted(expected[len(taken) : len(taken) + limit]), backend
            taken.extend(got)
            rounds += 1
        assert await claim(chosen, pid, 5) == []
        await chosen.pipelines.delete(pid)
