"""Claims, heartbeats, transitions, re-staging, expiry and poison documents,
driven through the transport-free stores against a real PostgreSQL."""

from __future__ import annotations

import pytest
from claimer.stores import Stores, batches, counters, full_count, new_pipeline, packs_of, stage

from hevlayer.claimer.leases import ClaimRequest
from hevlayer.client.enums import TransitionOutcome
from hevlayer.client.types import StagedRecord
from hevlayer.common.errors import FailedPrecondition, InvalidArgument, NotFound


async def test_claim_transition_and_counters(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    ids = [f"d{i:02d}" for i in range(10)]
    await stage(stores, pid, ids)
    assert await counters(stores.db, pid) == {"pending": 10}

    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 4, "w1"))
    assert len(claimed) == 4
    assert set(claimed.document_ids) <= set(ids)
    assert claimed.attempts == [1] * 4
    assert claimed.content_hashes == [f"h-{d}" for d in claimed.document_ids]
    assert claimed.expires_at == stores.clock.now.replace() + (claimed.expires_at - stores.clock.now)
    assert (
        await counters(stores.db, pid) == {"pending": 6, "embedding": 4} == await full_count(stores.db, pid)
    )

    other = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "w2"))
    assert len(other) == 6
    assert not set(other.document_ids) & set(claimed.document_ids)

    result = await stores.leases.transition(
        pid, "embedding", "w1", "indexed", [*claimed.document_ids, "nope"], [*claimed.fencing_tokens, 7]
    )
    assert result.outcomes == [TransitionOutcome.MOVED] * 4 + [TransitionOutcome.NOT_FOUND]
    assert all(new > old for new, old in zip(result.fencing_tokens[:4], claimed.fencing_tokens, strict=True))
    # w2's documents are not w1's to move
    wrong = await stores.leases.transition(
        pid, "embedding", "w1", "indexed", other.document_ids[:2], other.fencing_tokens[:2]
    )
    assert wrong.outcomes == [TransitionOutcome.NOT_HELD] * 2
    assert (
        await counters(stores.db, pid) == {"embedding": 6, "indexed": 4} == await full_count(stores.db, pid)
    )

    state = await stores.documents.describe(pid, claimed.document_ids[0])
    assert state.stage == "indexed"
    assert state.claimed_by is None
    assert state.attempts == 1


async def test_heartbeat_extends_only_held_leases(stores: Stores) -> None:
    pid = await new_pipeline(stores, lease_seconds=10)
    await stage(stores, pid, ["a", "b", "c"])
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 2, "w1"))
    first, second = claimed.document_ids
    stores.clock.advance(5)
    beat = await stores.leases.heartbeat(
        pid,
        "embedding",
        "w1",
        [first, second, "c", first],
        [claimed.fencing_tokens[0], claimed.fencing_tokens[1] - 1, 0, 0],
        lease_seconds=30,
    )
    assert beat.extended == [True, False, False, True]
    assert beat.expires_at == stores.clock.now + (beat.expires_at - stores.clock.now)
    stores.clock.advance(20)  # first is still live (30 s), second expired (10 s)
    again = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w2"))
    assert sorted(again.document_ids) == sorted([second, "c"])
    assert again.expired == 1
    lost = await stores.leases.heartbeat(pid, "embedding", "w1", [second], [claimed.fencing_tokens[1]])
    assert lost.extended == [False]


async def test_stale_lease_recovery_and_fencing(stores: Stores) -> None:
    pid = await new_pipeline(stores, lease_seconds=10, max_attempts=5)
    await stage(stores, pid, ["x"])
    first = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "crashed"))
    stores.clock.advance(11)
    second = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "alive"))
    assert second.document_ids == ["x"]
    assert second.fencing_tokens[0] > first.fencing_tokens[0]
    assert second.attempts == [2]
    # the crashed worker comes back: every write with its token is rejected
    late = await stores.leases.transition(pid, "embedding", "crashed", "indexed", ["x"], first.fencing_tokens)
    assert late.outcomes == [TransitionOutcome.NOT_HELD]
    stale = await stores.leases.transition(pid, "embedding", "alive", "indexed", ["x"], first.fencing_tokens)
    assert stale.outcomes == [TransitionOutcome.NOT_HELD]
    done = await stores.leases.transition(pid, "embedding", "alive", "indexed", ["x"], second.fencing_tokens)
    assert done.outcomes == [TransitionOutcome.MOVED]


async def test_poison_document_goes_to_failed(stores: Stores) -> None:
    pid = await new_pipeline(stores, lease_seconds=10, max_attempts=2)
    await stage(stores, pid, ["poison", "fine"])
    await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "w"))
    stores.clock.advance(11)
    again = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "w"))
    victim = again.document_ids[0]
    stores.clock.advance(11)
    third = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 5, "w"))
    assert third.poisoned == 1
    assert victim not in third.document_ids
    state = await stores.documents.describe(pid, victim)
    assert state.stage == "failed"
    assert "lease expired 2 times" in state.last_error
    assert await counters(stores.db, pid) == await full_count(stores.db, pid)
    assert (await counters(stores.db, pid))["failed"] == 1


async def test_restage_resets_and_returns_previous_backing(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    tokens = await stage(stores, pid, ["r"])
    packs = await packs_of(stores, pid)
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1, "w"))
    staged = await stores.documents.record_staged(pid, [StagedRecord("r", "h2", f"{packs}new#0:9", 3)])
    assert staged.results[0].previous_backing == f"{packs}r#0:1"
    results = staged.results
    assert results[0].fencing_token > claimed.fencing_tokens[0] > tokens["r"]
    lost = await stores.leases.transition(pid, "embedding", "w", "indexed", ["r"], claimed.fencing_tokens)
    assert lost.outcomes == [TransitionOutcome.NOT_HELD]
    state = await stores.documents.describe(pid, "r")
    assert (state.stage, state.attempts, state.chunk_count, state.claimed_by) == ("pending", 0, 3, None)
    assert await counters(stores.db, pid) == {"pending": 1}


async def test_release_failed_and_worker_stages(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    await stage(stores, pid, ["a", "b", "c"])
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "extract", 3, "cpu"))
    tok = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
    released = await stores.leases.transition(pid, "extract", "cpu", "pending", ["a"], [tok["a"]], "busy")
    failed = await stores.leases.transition(pid, "extract", "cpu", "failed", ["b"], [tok["b"]], "bad pdf")
    moved = await stores.leases.transition(pid, "extract", "cpu", "embed-ready", ["c"], [0])
    assert [r.outcomes[0] for r in (released, failed, moved)] == [TransitionOutcome.MOVED] * 3
    assert (await stores.documents.describe(pid, "b")).last_error == "bad pdf"
    gpu = await stores.leases.claim(ClaimRequest(pid, "embed-ready", "embedding", 10, "gpu"))
    assert gpu.document_ids == ["c"]
    assert await counters(stores.db, pid) == {"pending": 1, "failed": 1, "embedding": 1}
    hashes = await stores.documents.content_hashes(pid, ["a", "b", "c", "zz"])
    assert hashes == {"a": "h-a", "c": "h-c"}


async def test_paused_pipeline_hands_out_nothing(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    await stage(stores, pid, ["a"])
    await stores.pipelines.update(pid, {"paused": True})
    assert len(await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 5, "w"))) == 0
    await stores.pipelines.update(pid, {"paused": False})
    assert len(await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 5, "w"))) == 1


async def test_scan_forget_and_describe(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    ids = [f"k{i:04d}" for i in range(25)] + ["other-1", "é-1"]
    await stage(stores, pid, ids)
    seen = [s.document_id async for batch in stores.documents.scan(pid, batch=7) for s in batch]
    assert seen == sorted(ids, key=lambda s: s.encode())
    prefixed = [
        s.document_id async for batch in stores.documents.scan(pid, id_prefix="k001", batch=4) for s in batch
    ]
    assert prefixed == [f"k{i:04d}" for i in range(10, 20)]
    packs = await packs_of(stores, pid)
    backings, deleted, released = await stores.documents.forget(pid, ["k0000", "k0001", "missing"])
    assert released == [f"{packs}k0000", f"{packs}k0001"]
    assert deleted == 2
    assert sorted(backings) == [f"{packs}k0000#0:1", f"{packs}k0001#0:1"]
    with pytest.raises(NotFound):
        await stores.documents.describe(pid, "k0000")
    assert await counters(stores.db, pid) == {"pending": len(ids) - 2}


async def test_row_enqueue_skip_unchanged(stores: Stores) -> None:
    pid = await new_pipeline(stores, backend="row")
    totals = await stores.documents.enqueue(batches(pid, ["a", "b", "a"], ["1", "2", "1"]))
    assert (totals.enqueued, totals.unchanged, totals.segments_created) == (2, 0, 0)
    again = await stores.documents.enqueue(batches(pid, ["a", "b", "c"], ["1", "3", ""], skip_unchanged=True))
    assert (again.enqueued, again.unchanged) == (2, 1)
    assert await counters(stores.db, pid) == {"pending": 3}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ClaimRequest("p-x", "pending", "embedding", 0, "w"), "limit"),
        (ClaimRequest("p-x", "pending", "embedding", 10001, "w"), "limit"),
        (ClaimRequest("p-x", "pending", "embedding", 5, ""), "worker_id"),
        (ClaimRequest("p-x", "pending", "indexed", 5, "w"), "claim_stage"),
        (ClaimRequest("p-x", "embedding", "embedding", 5, "w"), "claim_stage"),
        (ClaimRequest("p-x", "indexed", "embedding", 5, "w"), "stage"),
        (ClaimRequest("p-x", "Bad Stage", "embedding", 5, "w"), "stage"),
        (ClaimRequest("p-x", "pending", "embedding", 5, "w", 90000), "lease_seconds"),
        (ClaimRequest("P_X", "pending", "embedding", 5, "w"), "pipeline_id"),
    ],
)
async def test_claim_validation(stores: Stores, request_: ClaimRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await stores.leases.claim(request_)
    assert [v.field for v in caught.value.violations] == [field]


async def test_unknown_pipeline_not_found(stores: Stores) -> None:
    with pytest.raises(NotFound):
        await stores.leases.claim(ClaimRequest("no-such-pipeline", "pending", "embedding", 5, "w"))
    with pytest.raises(NotFound):
        await stores.leases.transition("no-such-pipeline", "embedding", "w", "indexed", ["a"], [1])


async def test_released_objects_and_skip_unchanged(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    docs = stores.documents
    packs = await packs_of(stores, pid)
    p1, p2, p3 = (f"{packs}p{i}" for i in (1, 2, 3))
    first = await docs.record_staged(
        pid, [StagedRecord("a", "ha", f"{p1}#0:5"), StagedRecord("b", "hb", f"{p1}#5:5")]
    )
    assert first.released_objects == []
    moved = await docs.record_staged(pid, [StagedRecord("a", "ha2", f"{p2}#0:5")])
    assert (moved.results[0].previous_backing, moved.released_objects) == (f"{p1}#0:5", [])
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 2, "w"))
    token = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
    assert sorted(token) == ["a", "b"]
    same = await docs.record_staged(
        pid,
        [StagedRecord("a", "ha2", f"{p3}#0:5"), StagedRecord("b", "hb2", f"{p3}#5:5")],
        skip_unchanged=True,
    )
    assert [r.unchanged for r in same.results] == [True, False]
    assert same.results[0].fencing_token == token["a"]  # the lease is kept
    assert same.results[0].previous_backing == ""
    assert same.released_objects == [p1]  # b was p1's last document
    kept = await stores.leases.check(pid, "w", "embedding", ["a", "b"], [token["a"], token["b"]])
    assert kept.held == [True, False]  # b's lease ended with its re-staging
    backings, deleted, released = await docs.forget(pid, ["a", "b"])
    assert (sorted(backings), deleted, released) == ([f"{p2}#0:5", f"{p3}#5:5"], 2, [p2, p3])


async def test_dimension_is_set_once(stores: Stores) -> None:
    pid = await new_pipeline(stores)
    with pytest.raises(InvalidArgument) as invalid:
        await stores.pipelines.update(pid, {"dimension": 0})
    assert [v.field for v in invalid.value.violations] == ["pipeline.dimension"]
    assert (await stores.pipelines.update(pid, {"dimension": 384})).dimension == 384
    assert (await stores.pipelines.update(pid, {"dimension": 384, "paused": True})).paused
    with pytest.raises(FailedPrecondition) as fixed:
        await stores.pipelines.update(pid, {"dimension": 768, "paused": False})
    assert "already has dimension 384" in fixed.value.message
    assert (await stores.pipelines.get(pid)).paused, "a refused update changes nothing"
    with pytest.raises(NotFound):
        await stores.pipelines.update("no-such-pipeline", {"dimension": 8})
