"""Failures around staging: the claimer dies between the pack write and
RecordStaged. The call fails (gRPC UNAVAILABLE, REST 500), and once the
claimer is back the gateway checks the packs it could not account for and
deletes those no document points into."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc import aio
from support.pipelines import create_pipeline
from support.polling import eventually
from support.s3 import pack_keys
from support.service_http import http_json
from support.stacks import GatewayStack, start_stack
from support.staging import document, stage

from hevlayer.devstack import SeaweedS3


@pytest.fixture(scope="module")
def gateway_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayStack]:
    stack = start_stack(database_url, s3, tmp_path_factory.mktemp("failures"))
    try:
        yield stack
    finally:
        stack.stop()


async def test_a_lost_claimer_leaves_no_orphan_pack(gateway_stack: GatewayStack) -> None:
    stack = gateway_stack
    # No client-side retries: each failed call is one attempt (one pack) at the gateway.
    channel = aio.insecure_channel(stack.gateway_address)
    try:
        pid = await create_pipeline(channel)
        await stage(channel, pid, [document("kept")])
        [kept] = pack_keys(stack.s3, stack.bucket, pid)

        stack.claimer.kill()
        with pytest.raises(aio.AioRpcError) as caught:
            await stage(channel, pid, [document("lost-grpc")])
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        status, body = http_json(
            "PUT",
            f"{stack.base_url}/v2/pipelines/{pid}/documents/lost-rest",
            {"chunks": [{"id": "c", "text": "t"}]},
        )
        assert status == 500, body
        assert body["error"]["status"] == "UNAVAILABLE"
        # The packs are written but unaccounted for: the gateway keeps them until it can check.
        assert len(pack_keys(stack.s3, stack.bucket, pid)) == 3

        stack.restart_claimer()

        async def only_the_kept_pack() -> bool:
            return pack_keys(stack.s3, stack.bucket, pid) == [kept]

        await eventually(only_the_kept_pack, timeout=60, what="deletion of the unaccounted packs")
        [again] = await stage(channel, pid, [document("lost-grpc")])
        assert again.document_id == "lost-grpc"
    finally:
        await channel.close()
