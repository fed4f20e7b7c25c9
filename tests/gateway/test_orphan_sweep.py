"""The sweep of orphan pack objects: real claimer and gateway processes, real S3.

A pack is orphaned when a gateway dies between writing it and recording its
documents with the claimer. The sweep lists a pipeline's packs, keeps those
younger than the age limit (their RecordStaged may still be in flight) and
those the claimer reports live (``GetLiveObjects``), and deletes the rest.
The Stager runs in the test process here, against the stack's claimer and S3,
so that the age limit can be set below the gateway's floor of 60 s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest
from gateway.conftest import GatewayStack
from gateway.helpers import create_pipeline, document, pack_keys, stage, violations
from gateway.test_chunkstore import s3_settings
from grpc import aio

from hevlayer.api.claimer.v1 import document_state_pb2, document_state_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.config import ConfigError, load_settings
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
        client = await open_s3_client(s3_settings(gateway_stack.s3, gateway_stack.bucket), stack)
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
        load_settings(StagingSettings, {"GATEWAY_PACK_ORPHAN_AGE_SECONDS": "5"})
    with pytest.raises(ConfigError, match="GATEWAY_PACK_SWEEP_SECONDS"):
        load_settings(StagingSettings, {"GATEWAY_PACK_SWEEP_SECONDS": "-1"})
    assert load_settings(StagingSettings, {"GATEWAY_PACK_SWEEP_SECONDS": "0"}).pack_sweep_seconds == 0
