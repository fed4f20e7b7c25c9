"""StagingService.WatchDocuments end to end: client -> gateway -> claimer (WatchChanges) ->
PostgreSQL's change log (triggers, LISTEN/NOTIFY); every hop a real process.

Changes arrive as they commit, in commit order with consecutive numbers, never for a rolled
back transaction; a cursor resumes after a restart of the gateway and the claimer without
missing or repeating a change; a cursor that cannot be continued resyncs with a snapshot."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from support.leases import CLAIM_STAGE, WORKER, claim
from support.pipelines import create_pipeline
from support.processes import start_claimer, start_gateway
from support.rpc_errors import violations
from support.stacks import GatewayStack
from support.staging import document, stage_documents

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2 as st
from hevlayer.api.staging.v1 import staging_pb2_grpc
from hevlayer.client import Client, NotFound
from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3

READ_TIMEOUT = 60.0
"""How long a test waits for a message that must come (a failure detector, not a timing check)."""


class Watch:
    """One WatchDocuments stream, read message by message."""

    def __init__(self, channel: aio.Channel, pipeline_id: str, **fields: Any) -> None:
        stub = staging_pb2_grpc.StagingServiceStub(channel)
        self.call = stub.WatchDocuments(st.WatchDocumentsRequest(pipeline_id=pipeline_id, **fields))
        self._messages: AsyncIterator[st.WatchDocumentsResponse] = self.call.__aiter__()
        self.cursor = ""

    async def next(self) -> st.WatchDocumentsResponse:
        message = await asyncio.wait_for(self._messages.__anext__(), READ_TIMEOUT)
        if message.cursor:
            self.cursor = message.cursor
        return message

    async def snapshot(self) -> list[st.DocumentChange]:
        """The snapshot the stream starts with (every message up to snapshot_complete)."""
        documents: list[st.DocumentChange] = []
        while True:
            message = await self.next()
            assert message.snapshot, message
            documents.extend(message.changes)
            if message.snapshot_complete:
                assert message.cursor
                return documents

    async def changes(self, count: int) -> list[st.DocumentChange]:
        """The next ``count`` changes (messages that only move the cursor are skipped)."""
        found: list[st.DocumentChange] = []
        while len(found) < count:
            message = await self.next()
            assert not message.snapshot, message
            found.extend(message.changes)
        assert len(found) == count, [(c.document_id, c.stage) for c in found]
        return found

    def close(self) -> None:
        self.call.cancel()


def sequence_of(cursor: str) -> int:
    return int(cursor.rsplit(".", 1)[1])


async def transition(
    channel: aio.Channel, pipeline_id: str, leases: dict[str, int], to_stage: str, reason: str = ""
) -> None:
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    response = await stub.TransitionDocuments(
        lease_pb2.TransitionDocumentsRequest(
            pipeline_id=pipeline_id,
            documents=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases.items()],
            from_stage=CLAIM_STAGE,
            worker_id=WORKER,
            to_stage=to_stage,
            reason=reason,
        )
    )
    assert all(r.outcome == lease_pb2.TRANSITION_OUTCOME_MOVED for r in response.results), response


async def rolled_back_move_to_indexed(database_url: str, pipeline_id: str) -> None:
    """Move the pipeline's documents to indexed in a transaction that rolls back."""
    conn = await asyncpg.connect(database_url)
    try:
        tr = conn.transaction()
        await tr.start()
        moved = await conn.execute(
            """UPDATE documents SET stage = 'indexed', fencing_token = nextval('fencing_token_seq')
               WHERE pipeline_id = $1""",
            pipeline_id,
        )
        assert moved == "UPDATE 1"
        await tr.rollback()
    finally:
        await conn.close()


async def error_ending(watch: Watch) -> aio.AioRpcError:
    """Read the watch until it fails; the error (its messages must carry no changes)."""
    while True:
        try:
            message = await watch.next()
        except aio.AioRpcError as error:
            return error
        assert not message.changes, [(c.document_id, c.stage) for c in message.changes]


async def delete(channel: aio.Channel, pipeline_id: str, ids: Sequence[str]) -> None:
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    await stub.DeleteDocuments(st.DeleteDocumentsRequest(pipeline_id=pipeline_id, document_ids=list(ids)))


async def test_snapshot_then_each_committed_change_in_commit_order(channel: aio.Channel) -> None:
    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document("a", chunks=1), document("b", chunks=1)])
    watch = Watch(channel, pid)
    try:
        snapshot = await watch.snapshot()
        assert [(d.document_id, d.stage) for d in snapshot] == [("a", "pending"), ("b", "pending")]
        start = sequence_of(watch.cursor)
        assert {d.sequence for d in snapshot} == {start}

        leases = await claim(channel, pid)
        await transition(channel, pid, {"a": leases["a"]}, "indexed")
        await transition(channel, pid, {"b": leases["b"]}, "failed", reason="no vectors for b")
        await delete(channel, pid, ["a"])
        changes = await watch.changes(5)
    finally:
        watch.close()
    assert [(c.document_id, c.stage, c.deleted) for c in changes] == [
        ("a", CLAIM_STAGE, False),
        ("b", CLAIM_STAGE, False),
        ("a", "indexed", False),
        ("b", "failed", False),
        ("a", "", True),
    ]
    assert [c.sequence for c in changes] == list(range(start + 1, start + 6))
    assert [c.fencing_token for c in changes[:2]] == [leases["a"], leases["b"]]
    assert changes[2].fencing_token > leases["a"]
    assert changes[3].fencing_token > leases["b"]
    assert changes[3].last_error == "no vectors for b"
    assert changes[4].fencing_token == changes[2].fencing_token
    assert changes[2].content_hash == snapshot[0].content_hash != ""
    assert sequence_of(watch.cursor) == start + 5


async def test_prefix_and_stages_filter_snapshot_and_changes(channel: aio.Channel) -> None:
    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document(i, chunks=1) for i in ("x-1", "x-2", "y-1")])
    leases = await claim(channel, pid)
    await transition(channel, pid, {"x-1": leases["x-1"]}, "indexed")
    watch = Watch(channel, pid, id_prefix="x-", stages=["indexed", "failed"])
    try:
        snapshot = await watch.snapshot()
        assert [(d.document_id, d.stage) for d in snapshot] == [("x-1", "indexed")]
        await transition(channel, pid, {"y-1": leases["y-1"]}, "indexed")
        await transition(channel, pid, {"x-2": leases["x-2"]}, "failed", reason="bad")
        await delete(channel, pid, ["y-1", "x-1"])
        changes = await watch.changes(2)
    finally:
        watch.close()
    # y-1 is outside the prefix; deletions pass the stage filter.
    assert [(c.document_id, c.stage, c.deleted) for c in changes] == [
        ("x-2", "failed", False),
        ("x-1", "", True),
    ]


async def test_a_rolled_back_change_is_never_sent(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document("a", chunks=1)])
    watch = Watch(channel, pid)
    try:
        await watch.snapshot()
        start = sequence_of(watch.cursor)
        await rolled_back_move_to_indexed(gateway_stack.database_url, pid)
        await claim(channel, pid)
        [change] = await watch.changes(1)
    finally:
        watch.close()
    assert (change.document_id, change.stage, change.sequence) == ("a", CLAIM_STAGE, start + 1)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"pipeline_id": ""}, "pipeline_id"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"stages": ["indexed", "Not A Stage!"]}, "stages[1]"),
        ({"id_prefix": "x" * 600}, "id_prefix"),
        ({"id_prefix": "a\x00"}, "id_prefix"),
    ],
)
async def test_invalid_arguments_name_the_field(
    channel: aio.Channel, fields: dict[str, Any], field: str
) -> None:
    pid = await create_pipeline(channel)
    request: dict[str, Any] = {"pipeline_id": pid, **fields}
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as raised:
        async for _ in stub.WatchDocuments(st.WatchDocumentsRequest(**request)):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == [field]


async def test_an_unknown_pipeline_is_not_found_and_a_deleted_one_ends_the_watch(
    channel: aio.Channel,
) -> None:
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as raised:
        async for _ in stub.WatchDocuments(
            st.WatchDocumentsRequest(pipeline_id=f"gone-{uuid.uuid4().hex[:6]}")
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document("a", chunks=1)])
    watch = Watch(channel, pid)
    try:
        await watch.snapshot()
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
        await pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(pipeline_id=pid))
        # The pipeline's deletion logs no document changes; the watch ends NOT_FOUND.
        ended = await error_ending(watch)
        assert ended.code() == grpc.StatusCode.NOT_FOUND
    finally:
        watch.close()


async def test_a_cursor_that_cannot_be_continued_resyncs_with_a_snapshot(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document("a", chunks=1)])
    watch = Watch(channel, pid)
    try:
        await watch.snapshot()
        old = watch.cursor
        await claim(channel, pid)
        await watch.changes(1)
    finally:
        watch.close()
    # The retention sweep deleted the change after the cursor: the resumed watch resyncs.
    conn = await asyncpg.connect(gateway_stack.database_url)
    try:
        await conn.execute("DELETE FROM document_changes WHERE pipeline_id = $1", pid)
    finally:
        await conn.close()
    resumed = Watch(channel, pid, cursor=old)
    try:
        snapshot = await resumed.snapshot()
        assert [(d.document_id, d.stage) for d in snapshot] == [("a", CLAIM_STAGE)]
    finally:
        resumed.close()

    # A cursor of an earlier pipeline of the same id: another incarnation, a snapshot.
    pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(pipeline_id=pid))
    await create_pipeline(channel, pid)
    again = Watch(channel, pid, cursor=old)
    try:
        assert await again.snapshot() == []
    finally:
        again.close()


def _stack(database_url: str, s3: SeaweedS3, bucket: str, tmp: Path, **claimer_env: str) -> Any:
    """A claimer and a gateway of their own (stopped by the caller)."""
    traces = tmp / "traces.jsonl"
    s3_env = s3.client_env(bucket)
    claimer, claimer_address, _ = start_claimer(database_url, tmp, traces, **s3_env, **claimer_env)
    claimer.wait_ready(timeout=60)
    gateway, gateway_address, _ = start_gateway(
        claimer_address,
        tmp,
        traces,
        **s3_env,
        GATEWAY_CACHE_DIR=str(tmp / "cache"),
        GATEWAY_MILVUS_LITE_PATH=str(tmp / "vectors.db"),
    )
    gateway.wait_ready(timeout=60)
    return claimer, gateway, gateway_address


async def test_resume_after_a_gateway_and_claimer_restart_misses_nothing(
    database_url: str, s3: SeaweedS3, tmp_path: Path
) -> None:
    bucket = f"watch-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    claimer, gateway, address = _stack(database_url, s3, bucket, tmp_path / "one", CLAIMER_MAX_WATCHES="2")
    try:
        channel = open_channel(address)
        pid = await create_pipeline(channel)
        await stage_documents(channel, pid, [document("a", chunks=1)])
        watch = Watch(channel, pid)
        await watch.snapshot()
        leases = await claim(channel, pid)
        [claimed] = await watch.changes(1)
        cursor = watch.cursor

        # Bounded: a third watch of this claimer (CLAIMER_MAX_WATCHES=2) is refused.
        second = Watch(channel, pid)
        await second.snapshot()
        third = Watch(channel, pid, cursor=cursor)
        with pytest.raises(aio.AioRpcError) as refused:
            await third.next()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        second.close()
        watch.close()
        await channel.close()
    finally:
        gateway.stop(grace=5)
        claimer.stop(grace=5)

    # Changes committed through the next claimer and gateway before the watcher reconnects.
    claimer, gateway, address = _stack(database_url, s3, bucket, tmp_path / "two")
    try:
        channel = open_channel(address)
        await transition(channel, pid, {"a": leases["a"]}, "indexed")
        await stage_documents(channel, pid, [document("b", chunks=1)])
        resumed = Watch(channel, pid, cursor=cursor)
        try:
            changes = await resumed.changes(2)
        finally:
            resumed.close()
        await channel.close()
    finally:
        gateway.stop(grace=5)
        claimer.stop(grace=5)
    assert [(c.document_id, c.stage) for c in changes] == [("a", "indexed"), ("b", "pending")]
    assert [c.sequence for c in changes] == [claimed.sequence + 1, claimed.sequence + 2]


async def test_segment_queue_ids_moved_to_indexed_or_failed_are_changes(channel: aio.Channel) -> None:
    """Ids of the segmented queue have no document rows while queued: their moves to indexed
    are logged by the claimer itself, those to failed by the rows they become."""
    pid = await create_pipeline(channel, queue_backend=pipeline_pb2.QUEUE_BACKEND_SEGMENT)
    staging = staging_pb2_grpc.StagingServiceStub(channel)

    async def enqueue() -> AsyncIterator[st.EnqueueDocumentsRequest]:
        yield st.EnqueueDocumentsRequest(
            pipeline_id=pid,
            documents=[st.EnqueuedDocument(document_id=d, content_hash=f"h-{d}") for d in ("s1", "s2", "s3")],
        )

    assert (await staging.EnqueueDocuments(enqueue())).enqueued == 3
    watch = Watch(channel, pid)
    try:
        assert await watch.snapshot() == []  # queued ids have no rows
        leases = await claim(channel, pid)
        assert sorted(leases) == ["s1", "s2", "s3"]
        await transition(channel, pid, {"s1": leases["s1"], "s3": leases["s3"]}, "indexed")
        await transition(channel, pid, {"s2": leases["s2"]}, "failed", reason="unreadable")
        changes = await watch.changes(3)
    finally:
        watch.close()
    assert [(c.document_id, c.stage) for c in changes] == [
        ("s1", "indexed"),
        ("s3", "indexed"),
        ("s2", "failed"),
    ]
    assert [c.content_hash for c in changes] == ["h-s1", "h-s3", "h-s2"]
    assert changes[2].last_error == "unreadable"


async def test_the_python_client_watches_and_resumes(
    gateway_stack: GatewayStack, channel: aio.Channel
) -> None:
    pid = await create_pipeline(channel)
    await stage_documents(channel, pid, [document("a", chunks=1)])
    client = Client.connect(gateway_stack.gateway_address)
    try:
        stream = client.staging.watch_documents(pid, stages=["indexed"])
        first = await asyncio.wait_for(stream.__anext__(), READ_TIMEOUT)
        assert (first.snapshot, first.snapshot_complete, list(first.changes)) == (True, True, [])
        await stream.aclose()
        leases = await claim(channel, pid)
        await transition(channel, pid, leases, "indexed")
        resumed = client.staging.watch_documents(pid, stages=["indexed"], cursor=first.cursor)
        update = await asyncio.wait_for(resumed.__anext__(), READ_TIMEOUT)
        assert [(c.document_id, c.stage) for c in update.changes] == [("a", "indexed")]
        await resumed.aclose()
        with pytest.raises(NotFound):
            async for _ in client.staging.watch_documents(f"gone-{uuid.uuid4().hex[:6]}"):
                pass
    finally:
        await client.close()
