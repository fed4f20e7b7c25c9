"""Claim priority (``EnqueuedDocument.priority``) end to end: ids enqueued through
``hevlayer.client.staging.enqueue`` on the gateway, which forwards them to the claimer, and
claimed back with ``ClaimDocuments`` on the gateway. Claims take unleased documents by
priority (lower first), then age (the document that entered its stage first); the priority
stays with a document through its transitions. Both queue backends honour it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hevlayer.api.pipeline.v1.pipeline_pb2 import (
    QUEUE_BACKEND_ROW,
    QUEUE_BACKEND_SEGMENT,
    Pipeline,
    QueueBackend,
)
from hevlayer.client import Client
from hevlayer.client.enums import TransitionOutcome
from hevlayer.client.staging import EnqueueEntry
from hevlayer.client.types import Claim

EXTRACT = "extract"
EXTRACTING = "extracting"


@pytest.fixture
def client(channel: aio.Channel) -> Client:
    """A client on the channel to the module's gateway (tests/gateway/conftest.py)."""
    return Client(channel)


async def new_pipeline(client: Client, queue_backend: QueueBackend.ValueType = QUEUE_BACKEND_ROW) -> str:
    """A new pipeline of its own for one test (row backend unless asked)."""
    pipeline_id = f"prio-{uuid.uuid4().hex[:8]}"
    await client.pipelines.create(Pipeline(id=pipeline_id, queue_backend=queue_backend))
    return pipeline_id


async def enqueue_one_by_one(client: Client, pipeline_id: str, entries: Sequence[EnqueueEntry]) -> None:
    """One EnqueueDocuments message per id, in order: each message is its own transaction, so
    the ids enter the stage in this order (their age)."""

    async def batches() -> AsyncIterator[list[EnqueueEntry]]:
        for entry in entries:
            yield [entry]

    response = await client.staging.enqueue(pipeline_id, batches(), stage=EXTRACT, skip_unchanged=False)
    assert response.enqueued == len(entries)


def extract_claim(pipeline_id: str) -> Claim:
    return Claim(pipeline_id=pipeline_id, worker_id="extractor-1", from_stage=EXTRACT, claim_stage=EXTRACTING)


async def claim_ids(client: Client, claim: Claim, limit: int) -> list[str]:
    return [lease.document_id for lease in await client.leases.claim(claim, limit)]


async def test_a_high_priority_id_enqueued_last_is_claimed_first(client: Client) -> None:
    pipeline_id = await new_pipeline(client)
    backlog = [(f"low-{i:03d}", "", 10) for i in range(200)]

    async def batches() -> AsyncIterator[list[EnqueueEntry]]:
        yield list(backlog[:100])
        yield list(backlog[100:])
        yield [("urgent", "", -1)]

    response = await client.staging.enqueue(pipeline_id, batches(), stage=EXTRACT, skip_unchanged=False)
    assert response.enqueued == 201

    claim = extract_claim(pipeline_id)
    assert await claim_ids(client, claim, 1) == ["urgent"]
    # then the backlog, oldest message first
    assert set(await claim_ids(client, claim, 100)) == {doc for doc, _, _ in backlog[:100]}


async def test_equal_priorities_are_claimed_oldest_first(client: Client) -> None:
    pipeline_id = await new_pipeline(client)
    # ids in reverse byte order, so that neither id order nor insertion by id explains the result
    order = ["zeta", "mu", "alpha", "beta"]
    await enqueue_one_by_one(client, pipeline_id, [(doc, "") for doc in order])

    claim = extract_claim(pipeline_id)
    assert [(await claim_ids(client, claim, 1))[0] for _ in order] == order
    assert await claim_ids(client, claim, 1) == []


async def test_priority_stays_through_transitions(client: Client) -> None:
    """Ids enqueued for extract with priorities keep them in pending: the extract worker moves
    them on in an order of its own, and the embedder's claims still follow the priorities."""
    pipeline_id = await new_pipeline(client)
    await enqueue_one_by_one(client, pipeline_id, [("b", "", 5), ("a", "", 0), ("c", "", -5)])
    claim = extract_claim(pipeline_id)
    leases = await client.leases.claim(claim, 3)
    assert sorted(lease.document_id for lease in leases) == ["a", "b", "c"]  # one claim: any order
    # moved to pending one by one, lowest priority first: their age in pending is reversed
    by_id = {lease.document_id: lease for lease in leases}
    for doc in ["b", "a", "c"]:
        (moved,) = await client.leases.transition_claimed(claim, [by_id[doc]], "pending")
        assert moved.outcome is TransitionOutcome.MOVED

    embed = Claim(
        pipeline_id=pipeline_id, worker_id="embedder-1", from_stage="pending", claim_stage="embedding"
    )
    assert [(await claim_ids(client, embed, 1))[0] for _ in range(3)] == ["c", "a", "b"]


async def test_enqueueing_again_sets_the_new_priority(client: Client) -> None:
    pipeline_id = await new_pipeline(client)
    await enqueue_one_by_one(client, pipeline_id, [("first", "", 0), ("second", "", 0)])
    await enqueue_one_by_one(client, pipeline_id, [("first", "", 3)])

    claim = extract_claim(pipeline_id)
    assert await claim_ids(client, claim, 1) == ["second"]
    assert await claim_ids(client, claim, 1) == ["first"]


async def test_segment_pipelines_claim_by_priority_too(client: Client) -> None:
    """The default backend honours priorities: an enqueue writes one segment per priority and
    claims take segments by (priority, enqueue order)."""
    pipeline_id = await new_pipeline(client, QUEUE_BACKEND_SEGMENT)

    async def batches() -> AsyncIterator[list[EnqueueEntry]]:
        yield [("plain", ""), ("urgent", "", -1), ("later", "", 4)]
        yield [("plain-2", "", 0)]

    response = await client.staging.enqueue(pipeline_id, batches(), stage=EXTRACT, skip_unchanged=False)
    assert response.enqueued == 4
    claim = extract_claim(pipeline_id)
    assert await claim_ids(client, claim, 1) == ["urgent"]
    assert await claim_ids(client, claim, 2) == ["plain", "plain-2"]
    assert await claim_ids(client, claim, 2) == ["later"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    priorities=st.lists(st.integers(min_value=-3, max_value=3), min_size=1, max_size=12),
    limit=st.integers(min_value=1, max_value=5),
)
async def test_claims_follow_priority_then_age(client: Client, priorities: list[int], limit: int) -> None:
    """Whatever the priorities, successive claims of ``limit`` take the ids in the order of
    (priority, enqueue order), ``limit`` at a time. (One client for every example: it holds
    no state between calls.)"""
    pipeline_id = await new_pipeline(client)
    ids = [f"doc-{i:02d}" for i in range(len(priorities))]
    await enqueue_one_by_one(
        client, pipeline_id, [(doc, "", p) for doc, p in zip(ids, priorities, strict=True)]
    )
    expected = [doc for _, _, doc in sorted(zip(priorities, range(len(ids)), ids, strict=True))]
    claim = extract_claim(pipeline_id)
    for start in range(0, len(ids), limit):
        assert set(await claim_ids(client, claim, limit)) == set(expected[start : start + limit])
    assert await claim_ids(client, claim, limit) == []
    await client.pipelines.delete(pipeline_id)
