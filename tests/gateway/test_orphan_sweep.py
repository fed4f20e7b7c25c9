"""The sweep of orphan pack objects: real claimer and gateway processes, real S3.

A pack is orphaned when a gateway dies between writing it and recording its
documents with the claimer. The sweep lists a pipeline's packs, keeps those
younger than the age limit and those the claimer reports live, condemns the
rest (``CondemnObjects``: RecordStaged refuses them from then on) and deletes
them. The Stager runs in the test process here, against the stack's claimer
and S3, so that a staging can be held between its pack write and RecordStaged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import grpc
import pytest
from grpc import aio
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline
from support.rpc_errors import violations
from support.s3 import gateway_s3_settings, pack_keys
from support.stacks import GatewayStack
from support.staging import document, get_document, stage

from hevlayer.api.claimer.v1 import document_state_pb2, document_state_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.client.naming import object_key_of
from hevlayer.client.types import StagedRecord, StagedResult
from hevlayer.common.config import ConfigError, load_settings
from hevlayer.common.errors import Unavailable, status_from_rpc_error
from hevlayer.devstack.testing import claimer_metadata
from hevlayer.gateway.cache import NoCache, ResilientCache
from hevlayer.gateway.chunkstore import ChunkStore, new_pack_key, open_s3_client
from hevlayer.gateway.claimer_client import ClaimerClient
from hevlayer.gateway.settings import StagingSettings
from hevlayer.gateway.staging import Stager, pack_created_ns

HOUR_NS = 3600 * 10**9


@pytest.fixture
async def stager(gateway_stack: GatewayStack) -> AsyncIterator[Stager]:
    async with AsyncExitStack() as stack:
        client = await open_s3_client(gateway_s3_settings(gateway_stack.s3, gateway_stack.bucket), stack)
        channel = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
        stack.push_async_callback(channel.close)
        yield Stager(
            ClaimerClient(channel),
            ChunkStore(client, gateway_stack.bucket),
            ResilientCache(NoCache()),
            load_settings(StagingSettings, {}),
        )


def put(stack: GatewayStack, key: str) -> None:
    status, body = stack.s3.request("PUT", f"/{stack.bucket}/{key}", b"not a real pack")
    assert status == 200, body[:200]


async def test_old_packs_no_document_points_into_are_swept(
    channel: aio.Channel, gateway_stack: GatewayStack, stager: Stager
) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("a"), document("b")])
    [live] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    prefix = live.rsplit("/", 1)[0] + "/"
    old = f"{prefix}{time.time_ns() - 2 * HOUR_NS:016x}-{'ab' * 6}.pack"
    young = new_pack_key(prefix)
    for key in (old, young):
        put(gateway_stack, key)
    assert pack_created_ns(old) is not None
    assert pack_created_ns(f"{prefix}notes.txt") is None
    info = await stager.claimer.pipeline(pid)

    # an hour's age limit: only the two-hour-old orphan goes
    assert await stager.sweep_orphan_packs(info, min_age_seconds=3600) == 1
    assert sorted(pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)) == sorted([live, young])
    # no age limit: the young orphan goes too, the live pack stays (the claimer says so)
    assert await stager.sweep_orphan_packs(info, min_age_seconds=0) == 1
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == [live]
    # the periodic form (every pipeline, the configured hour) finds nothing more
    assert await stager.sweep_all_orphan_packs() == 0


async def test_get_live_objects_validates_and_answers_in_order(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("x")])
    [live] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    direct = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
    try:
        stub = document_state_pb2_grpc.DocumentStateServiceStub(direct)
        answer = await stub.GetLiveObjects(
            document_state_pb2.GetLiveObjectsRequest(pipeline_id=pid, object_keys=["nope", live, live])
        )
        assert list(answer.live_object_keys) == [live]
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.GetLiveObjects(
                document_state_pb2.GetLiveObjectsRequest(pipeline_id=pid, object_keys=[""])
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == ["object_keys[0]"]
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.GetLiveObjects(
                document_state_pb2.GetLiveObjectsRequest(pipeline_id="no-such", object_keys=[live])
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        await direct.close()


def test_sweep_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_PACK_ORPHAN_AGE_SECONDS"):
        load_settings(StagingSettings, {"GATEWAY_PACK_ORPHAN_AGE_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="GATEWAY_PACK_SWEEP_SECONDS"):
        load_settings(StagingSettings, {"GATEWAY_PACK_SWEEP_SECONDS": "-1"})
    assert load_settings(StagingSettings, {"GATEWAY_PACK_SWEEP_SECONDS": "0"}).pack_sweep_seconds == 0


async def test_a_pack_swept_while_its_staging_is_in_flight_is_written_again(
    channel: aio.Channel, gateway_stack: GatewayStack, stager: Stager
) -> None:
    """Two gateways: the first has written a pack and is held before RecordStaged; the second's
    sweep (no age limit) condemns and deletes it; the first's RecordStaged is then refused, and
    it writes its documents into a new pack, which they point into and read from."""
    pid = await create_pipeline(channel)
    info = await stager.claimer.pipeline(pid)
    held, release = asyncio.Event(), asyncio.Event()
    recorded = stager.claimer.record_staged
    backings: list[list[str]] = []

    async def held_once(
        pipeline_id: str, records: Sequence[StagedRecord], *, skip_unchanged: bool
    ) -> tuple[list[StagedResult], list[str]]:
        backings.append([record.backing for record in records])
        if len(backings) == 1:
            held.set()
            await release.wait()
        return await recorded(pipeline_id, records, skip_unchanged=skip_unchanged)

    stager.claimer.record_staged = held_once  # type: ignore[method-assign]
    staging = asyncio.create_task(stager.stage(pid, [document("a", chunks=2), document("b", chunks=1)]))
    await held.wait()
    [first] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)  # written, not recorded

    sweeper = Stager(stager.claimer, stager.store, stager.cache, stager.settings)  # another gateway
    assert await sweeper.sweep_orphan_packs(info, min_age_seconds=0) == 1
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []

    release.set()
    outcomes = await staging
    assert [(o.document_id, o.outcome) for o in outcomes] == [("a", "staged"), ("b", "staged")]
    assert len(backings) == 2, backings
    assert {object_key_of(b) for b in backings[0]} == {first}
    [second] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert second != first
    assert {object_key_of(b) for b in backings[1]} == {second}
    # The new pack is live: the sweep keeps it, and the gateway reads the chunks from it (S3:
    # the in-process stager cached nothing).
    assert await sweeper.sweep_orphan_packs(info, min_age_seconds=0) == 0
    leases = await claim(channel, pid)
    read = {r.document_id: [c.id for c in r.chunks] for r in await read_chunks(channel, pid, leases)}
    assert read == {"a": ["a-0", "a-1"], "b": ["b-0"]}


async def test_record_staged_refuses_a_condemned_pack_and_records_nothing(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("live")])
    [live] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    orphan = new_pack_key(live.rsplit("/", 1)[0] + "/")
    direct = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
    try:
        stub = document_state_pb2_grpc.DocumentStateServiceStub(direct)
        answer = await stub.CondemnObjects(
            document_state_pb2.CondemnObjectsRequest(pipeline_id=pid, object_keys=[live, orphan, orphan])
        )
        assert list(answer.condemned_object_keys) == [orphan]  # the live pack is kept
        record = document_state_pb2.StagedRecord(
            document_id="late", content_hash="h", backing=f"{orphan}#0:10", chunk_count=1
        )
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.RecordStaged(document_state_pb2.RecordStagedRequest(pipeline_id=pid, records=[record]))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert violations(refused.value) == ["records[0].backing"]
        assert "PACK_CONDEMNED" in str(status_from_rpc_error(refused.value).details)
        with pytest.raises(aio.AioRpcError) as missing:
            await stub.DescribeDocument(
                document_state_pb2.DescribeDocumentRequest(pipeline_id=pid, document_id="late")
            )
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        # Condemning again answers the same; the live pack still serves its document.
        answer = await stub.CondemnObjects(
            document_state_pb2.CondemnObjectsRequest(pipeline_id=pid, object_keys=[orphan, live])
        )
        assert list(answer.condemned_object_keys) == [orphan]
        live_answer = await stub.GetLiveObjects(
            document_state_pb2.GetLiveObjectsRequest(pipeline_id=pid, object_keys=[live])
        )
        assert list(live_answer.live_object_keys) == [live]
        for keys, field in (([""], "object_keys[0]"), ([live, "x\x00"], "object_keys[1]")):
            with pytest.raises(aio.AioRpcError) as bad:
                await stub.CondemnObjects(
                    document_state_pb2.CondemnObjectsRequest(pipeline_id=pid, object_keys=keys)
                )
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert violations(bad.value) == [field]
    finally:
        await direct.close()


@pytest.mark.parametrize("committed", [True, False], ids=["recorded-answer-lost", "never-recorded"])
async def test_a_pack_whose_staging_outcome_is_unknown_is_kept_or_deleted_by_the_claimer(
    channel: aio.Channel, gateway_stack: GatewayStack, stager: Stager, committed: bool
) -> None:
    """RecordStaged fails UNAVAILABLE (the claimer may have committed): the pack is a suspect;
    its check condemns it only if no document points into it."""
    pid = await create_pipeline(channel)
    recorded = stager.claimer.record_staged

    async def answer_lost(
        pipeline_id: str, records: Sequence[StagedRecord], *, skip_unchanged: bool
    ) -> tuple[list[StagedResult], list[str]]:
        if committed:
            await recorded(pipeline_id, records, skip_unchanged=skip_unchanged)
        raise Unavailable("connection lost before the answer")

    stager.claimer.record_staged = answer_lost  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await stager.stage(pid, [document("u", chunks=2)])
    [key] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert stager.suspects == [key]
    await stager.check_suspects(force=True)
    assert stager.suspects == []
    if committed:
        assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == [key]
        leases = await claim(channel, pid)
        read = [c.id for r in await read_chunks(channel, pid, leases) for c in r.chunks]
        assert read == ["u-0", "u-1"]
    else:
        assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []
        with pytest.raises(aio.AioRpcError) as unknown:
            await get_document(channel, pid, "u")
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
