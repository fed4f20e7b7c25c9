"""The segmented queue against real PostgreSQL and real S3 (SeaweedFS):
segment rows, manifests, splits, expiry, poison, and nothing left behind."""

from __future__ import annotations

from collections.abc import Sequence

from claimer.stores import Stores, batches, counters, full_count, keys, new_pipeline, packs_of, stage

from hevlayer.claimer.leases import ClaimRequest
from hevlayer.claimer.manifests import decode_manifest, encode_manifest
from hevlayer.client.enums import TransitionOutcome
from hevlayer.client.types import StagedRecord


async def segment_rows(stores: Stores, pipeline_id: str) -> int:
    async with stores.db.acquire() as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM queue_segments WHERE pipeline_id = $1", pipeline_id)
        )


def test_manifest_roundtrip() -> None:
    ids = ["a", "é", "b c", "x" * 500]
    assert decode_manifest(encode_manifest(ids)).ids == ids
    with_hashes = decode_manifest(encode_manifest(ids, ["1", "", "3", "4"]))
    assert with_hashes.hashes == ["1", "", "3", "4"]
    assert decode_manifest(encode_manifest([])).ids == []


async def test_enqueue_claim_split_complete_leaves_nothing(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    ids = [f"id-{i:03d}" for i in range(95)]
    totals = await stores.documents.enqueue(batches(pid, ids))
    assert (totals.enqueued, totals.segments_created) == (95, 10)
    assert await segment_rows(stores, pid) == 10
    assert len(await keys(stores, pid)) == 10
    assert await counters(stores.db, pid) == {"pending": 95} == await full_count(stores.db, pid)

    # 25 = two whole segments and a split of the third
    first = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 25, "w1"))
    assert len(first) == 25
    assert len(set(first.fencing_tokens)) == 3
    assert await segment_rows(stores, pid) == 11  # 10 - 1 split + 2 halves
    assert len(await keys(stores, pid)) == 11  # the superseded manifest is gone
    assert (
        await counters(stores.db, pid) == {"pending": 70, "embedding": 25} == await full_count(stores.db, pid)
    )

    rest = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 1000, "w2"))
    assert len(rest) == 70
    assert sorted(first.document_ids + rest.document_ids) == ids

    # complete in two halves: the first half leaves partially done segments
    half = len(first) // 2
    done = await stores.leases.transition(
        pid, "embedding", "w1", "indexed", first.document_ids[:half], first.fencing_tokens[:half]
    )
    assert done.outcomes == [TransitionOutcome.MOVED] * half
    again = await stores.leases.transition(
        pid, "embedding", "w1", "indexed", first.document_ids[:3], first.fencing_tokens[:3]
    )
    assert again.outcomes == [TransitionOutcome.NOT_HELD] * 3
    wrong_worker = await stores.leases.transition(
        pid, "embedding", "w2", "indexed", first.document_ids[half:], first.fencing_tokens[half:]
    )
    assert set(wrong_worker.outcomes) == {TransitionOutcome.NOT_HELD}
    await stores.leases.transition(
        pid, "embedding", "w1", "indexed", first.document_ids[half:], first.fencing_tokens[half:]
    )
    await stores.leases.transition(pid, "embedding", "w2", "indexed", rest.document_ids, rest.fencing_tokens)
    assert await counters(stores.db, pid) == {"indexed": 95}
    assert await full_count(stores.db, pid, {"indexed": 95}) == {"indexed": 95}
    assert await segment_rows(stores, pid) == 0
    assert await keys(stores, pid) == []
    async with stores.db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM segment_garbage") == 0
        assert await conn.fetchval("SELECT count(*) FROM documents WHERE pipeline_id = $1", pid) == 0


async def test_segments_mix_with_rows_and_report_pending(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    await stage(stores, pid, ["staged-1", "staged-2"])
    await stores.documents.enqueue(batches(pid, [f"l{i}" for i in range(15)], [f"h{i}" for i in range(15)]))
    status = await stores.pipelines.status(pid)
    assert status.pending_count == 17
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 5, "w"))
    assert claimed.document_ids[:2] == ["staged-1", "staged-2"]  # rows first
    assert claimed.chunk_counts == [1, 1, 0, 0, 0]
    assert claimed.content_hashes[2:] == ["h" + doc[1:] for doc in claimed.document_ids[2:]]
    check = await stores.leases.check(pid, "w", "embedding", claimed.document_ids, claimed.fencing_tokens)
    assert check.held == [True] * 5
    packs = await packs_of(stores, pid)
    assert check.backings[:2] == [f"{packs}staged-1#0:1", f"{packs}staged-2#0:1"]
    wrong = await stores.leases.check(pid, "w", "embedding", ["l9"], [claimed.fencing_tokens[-1]])
    assert wrong.held == [False]


async def test_release_fail_and_move_segment_ids(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    ids = [f"m{i}" for i in range(10)]
    await stores.documents.enqueue(batches(pid, ids))
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "extract", 10, "cpu"))
    tokens = claimed.fencing_tokens
    release = await stores.leases.transition(pid, "extract", "cpu", "pending", ids[:3], tokens[:3], "later")
    failed = await stores.leases.transition(pid, "extract", "cpu", "failed", ids[3:5], tokens[3:5], "broken")
    onward = await stores.leases.transition(pid, "extract", "cpu", "embed-ready", ids[5:], tokens[5:])
    for result in (release, failed, onward):
        assert set(result.outcomes) == {TransitionOutcome.MOVED}
    assert await counters(stores.db, pid) == {"pending": 3, "failed": 2, "embed-ready": 5}
    assert await counters(stores.db, pid) == await full_count(stores.db, pid)
    assert (await stores.documents.describe(pid, "m3")).last_error == "broken"
    assert await segment_rows(stores, pid) == 2  # the released and the moved ids
    assert len(await keys(stores, pid)) == 2
    gpu = await stores.leases.claim(ClaimRequest(pid, "embed-ready", "embedding", 10, "gpu"))
    assert sorted(gpu.document_ids) == ids[5:]


async def test_expired_segment_is_taken_back_then_poisoned(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment", max_attempts=2, lease_seconds=10)
    ids = [f"e{i}" for i in range(10)]
    await stores.documents.enqueue(batches(pid, ids))
    first = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w1"))
    await stores.leases.transition(pid, "embedding", "w1", "indexed", ids[:4], first.fencing_tokens[:4])
    beat = await stores.leases.heartbeat(pid, "embedding", "w1", ids[3:6], first.fencing_tokens[3:6])
    assert beat.extended == [False, True, True]
    stores.clock.advance(11)
    second = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w2"))
    assert sorted(second.document_ids) == ids[4:]
    assert second.expired == 6
    assert second.attempts == [2] * 6
    late = await stores.leases.transition(
        pid, "embedding", "w1", "indexed", ids[4:], first.fencing_tokens[4:]
    )
    assert set(late.outcomes) == {TransitionOutcome.NOT_HELD}
    stores.clock.advance(11)
    third = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w3"))
    assert len(third) == 0
    assert third.poisoned == 6
    assert await counters(stores.db, pid) == {"indexed": 4, "failed": 6}
    assert await full_count(stores.db, pid, {"indexed": 4}) == {"indexed": 4, "failed": 6}
    assert "lease expired 2 times" in (await stores.documents.describe(pid, "e7")).last_error
    assert await keys(stores, pid) == []


async def test_delete_pipeline_removes_prefix(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    await stores.documents.enqueue(batches(pid, [f"z{i}" for i in range(45)]))
    await stage(stores, pid, ["row-doc"])
    await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 13, "w"))
    assert len(await keys(stores, pid)) == 6
    documents, segments = await stores.pipelines.delete(pid)
    assert (documents, segments) == (1, 6)
    assert await keys(stores, pid) == []
    async with stores.db.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM pipeline_stage_counts WHERE pipeline_id = $1", pid) == 0
        )


async def test_reclaimed_segment_completes_whole(seg_stores: Stores) -> None:
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment", max_attempts=5, lease_seconds=10)
    ids = [f"r{i}" for i in range(10)]
    await stores.documents.enqueue(batches(pid, ids))
    first = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w1"))
    await stores.leases.transition(pid, "embedding", "w1", "indexed", ids[2:5], first.fencing_tokens[2:5])
    stores.clock.advance(11)
    second = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w2"))
    assert second.document_ids == ids[:2] + ids[5:]
    # all remaining ids, in the order given: moved together
    done = await stores.leases.transition(
        pid, "embedding", "w2", "indexed", second.document_ids, second.fencing_tokens
    )
    assert set(done.outcomes) == {TransitionOutcome.MOVED}
    assert len(set(done.fencing_tokens)) == 1
    # the same ids in another order, on a fresh segment: moved one by one
    await stores.documents.enqueue(batches(pid, ids))
    third = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w3"))
    order = list(reversed(range(10)))
    moved = await stores.leases.transition(
        pid,
        "embedding",
        "w3",
        "indexed",
        [third.document_ids[i] for i in order] + ["not-there"],
        [third.fencing_tokens[i] for i in order] + [third.fencing_tokens[0]],
    )
    assert moved.outcomes == [TransitionOutcome.MOVED] * 10 + [TransitionOutcome.NOT_HELD]
    assert await counters(stores.db, pid) == {"indexed": 20}
    assert await keys(stores, pid) == []


async def test_staging_ends_segment_leases(seg_stores: Stores) -> None:
    """The Object Lane: ids enqueued into ``extract``, claimed, then staged with
    their lease tokens leave their segments (counted once, never claimed again)."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    ids = [f"s{i}" for i in range(14)]
    await stores.documents.enqueue(batches(pid, ids, stage="extract", per_message=14))
    assert await segment_rows(stores, pid) == 2
    claimed = await stores.leases.claim(ClaimRequest(pid, "extract", "extracting", 12, "cpu"))
    assert len(claimed) == 12  # one whole segment and a split of the other
    assert len(set(claimed.fencing_tokens)) == 2
    token = dict(zip(claimed.document_ids, claimed.fencing_tokens, strict=True))
    first = [doc for doc in claimed.document_ids if token[doc] == claimed.fencing_tokens[0]]
    second = [doc for doc in claimed.document_ids if token[doc] != claimed.fencing_tokens[0]]

    packs = await packs_of(stores, pid)

    def records(names: Sequence[str], *, with_tokens: bool = True) -> list[StagedRecord]:
        return [
            StagedRecord(doc, f"h-{doc}", f"{packs}{doc}#0:1", 1, token[doc] if with_tokens else 0)
            for doc in names
        ]

    # part of the first segment, then the rest of it and the other segment's ids in one batch
    await stores.documents.record_staged(pid, records(first[:4]))
    assert await counters(stores.db, pid) == {"extract": 2, "extracting": 8, "pending": 4}
    assert await counters(stores.db, pid) == await full_count(stores.db, pid)
    await stores.documents.record_staged(pid, records(first[4:] + second))
    assert await counters(stores.db, pid) == {"extract": 2, "pending": 12}
    assert await counters(stores.db, pid) == await full_count(stores.db, pid)
    assert await segment_rows(stores, pid) == 1  # only the unclaimed half is left
    assert len(await keys(stores, pid)) == 1

    # a token that names no current lease (its lease already ended) is ignored
    again = await stores.documents.record_staged(pid, records(first[:2]), skip_unchanged=True)
    assert [r.unchanged for r in again.results] == [True, True]
    assert await counters(stores.db, pid) == {"extract": 2, "pending": 12}

    rest = await stores.leases.claim(ClaimRequest(pid, "extract", "extracting", 10, "cpu"))
    token.update(zip(rest.document_ids, rest.fencing_tokens, strict=True))
    assert sorted(rest.document_ids + claimed.document_ids) == sorted(ids)
    # staged without its token: the row is pending, and the claimed slot stays until it is ended
    await stores.documents.record_staged(pid, records(rest.document_ids[:1], with_tokens=False))
    assert await counters(stores.db, pid) == {"extracting": 2, "pending": 13}
    # an unchanged document staged with its token still ends its lease
    await stores.documents.record_staged(pid, records(rest.document_ids), skip_unchanged=True)
    assert await counters(stores.db, pid) == {"pending": 14} == await full_count(stores.db, pid)
    assert await segment_rows(stores, pid) == 0
    assert await keys(stores, pid) == []
    embed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "gpu"))
    assert sorted(embed.document_ids) == sorted(ids)


async def test_whole_segment_leases_move_by_token(seg_stores: Stores) -> None:
    """TransitionDocuments.segment_leases: one token moves every id still held under it."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment", lease_seconds=10)
    ids = [f"t{i:02d}" for i in range(30)]
    await stores.documents.enqueue(batches(pid, ids, per_message=30))
    claimed = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 25, "w1"))
    tokens = list(dict.fromkeys(claimed.fencing_tokens))
    assert len(tokens) == 3  # two whole segments and a split of the third
    first = [d for d, t in zip(claimed.document_ids, claimed.fencing_tokens, strict=True) if t == tokens[0]]

    # one id of the first lease moved on its own; the lease then moves the other nine
    one = await stores.leases.transition(pid, "embedding", "w1", "indexed", first[:1], [tokens[0]] * 1)
    assert one.outcomes == [TransitionOutcome.MOVED]
    # another worker, the wrong stage, a made-up token and a repeated token move nothing
    assert (
        await stores.leases.transition_segment_leases(pid, "embedding", "w2", "indexed", tokens)
    ).moved == [
        0,
        0,
        0,
    ]
    assert (await stores.leases.transition_segment_leases(pid, "other", "w1", "indexed", tokens)).moved == [
        0
    ] * 3
    result = await stores.leases.transition_segment_leases(
        pid, "embedding", "w1", "indexed", [tokens[0], 999_999_999, tokens[1], tokens[0]]
    )
    assert result.moved == [9, 0, 10, 0]
    assert result.new_fencing_token > max(tokens)
    assert await counters(stores.db, pid) == {"pending": 5, "embedding": 5, "indexed": 20}
    assert await counters(stores.db, pid) == await full_count(stores.db, pid, {"indexed": 20})

    # to a worker stage: a new queued segment holding exactly the lease's ids
    onward = await stores.leases.transition_segment_leases(pid, "embedding", "w1", "review", [tokens[2]])
    assert onward.moved == [5]
    review = await stores.leases.claim(ClaimRequest(pid, "review", "reviewing", 100, "w3"))
    split = [d for d, t in zip(claimed.document_ids, claimed.fencing_tokens, strict=True) if t == tokens[2]]
    assert sorted(review.document_ids) == sorted(split)
    failed = await stores.leases.transition_segment_leases(
        pid, "reviewing", "w3", "failed", review.fencing_tokens[:1], "bad batch"
    )
    assert failed.moved == [5]
    assert (await stores.documents.describe(pid, split[0])).last_error == "bad batch"

    # an expired lease is not held any more
    rest = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 100, "w1"))
    stores.clock.advance(11)
    late = await stores.leases.transition_segment_leases(
        pid, "embedding", "w1", "indexed", rest.fencing_tokens[:1]
    )
    assert late.moved == [0]
    assert late.new_fencing_token == 0
    assert await counters(stores.db, pid) == {"embedding": 5, "indexed": 20, "failed": 5}


async def test_an_id_queued_twice_is_claimed_once_per_claim(seg_stores: Stores) -> None:
    """An EnqueueDocuments retried after its answer was lost queues its ids again, in another
    segment. One claim never returns an id twice (a stager sends one lease per id, and the
    gateway refuses a duplicate with INVALID_ARGUMENT): the claim ends before the segment that
    repeats it, and the next claim takes that segment, duplicate included."""
    stores = seg_stores
    pid = await new_pipeline(stores, backend="segment")
    await stores.documents.enqueue(batches(pid, ["a", "b", "c"], per_message=3))
    await stores.documents.enqueue(batches(pid, ["c", "d"], per_message=2))
    assert await segment_rows(stores, pid) == 2

    first = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w1"))
    assert first.document_ids == ["a", "b", "c"]
    second = await stores.leases.claim(ClaimRequest(pid, "pending", "embedding", 10, "w1"))
    assert second.document_ids == ["c", "d"]
    assert set(second.fencing_tokens).isdisjoint(first.fencing_tokens)
    for claim in (first, second):
        done = await stores.leases.transition(
            pid, "embedding", "w1", "indexed", claim.document_ids, claim.fencing_tokens
        )
        assert set(done.outcomes) == {TransitionOutcome.MOVED}
    assert await segment_rows(stores, pid) == 0
