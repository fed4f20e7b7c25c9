"""EnqueueDocuments in the columnar form (``document_ids`` with ``content_hashes`` and
``priorities``) through the gateway's public gRPC API: relayed to the claimer as sent, on both
queue backends; a bad entry refused INVALID_ARGUMENT naming it, nothing enqueued."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from support.leases import claim
from support.pipelines import create_pipeline
from support.rpc_errors import violations
from support.stacks import GatewayStack

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2 as st
from hevlayer.api.staging.v1 import staging_pb2_grpc


async def enqueue(channel: aio.Channel, *requests: st.EnqueueDocumentsRequest) -> st.EnqueueDocumentsResponse:
    async def stream() -> AsyncIterator[st.EnqueueDocumentsRequest]:
        for request in requests:
            yield request

    response: st.EnqueueDocumentsResponse = await staging_pb2_grpc.StagingServiceStub(
        channel
    ).EnqueueDocuments(stream())
    return response


async def pending(channel: aio.Channel, pipeline_id: str) -> int:
    got = await pipeline_pb2_grpc.PipelineServiceStub(channel).GetPipelineStatus(
        pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
    )
    return int(got.status.pending_count)


@pytest.mark.parametrize("backend", [pipeline_pb2.QUEUE_BACKEND_ROW, pipeline_pb2.QUEUE_BACKEND_SEGMENT])
async def test_columns_are_relayed_on_both_backends(
    channel: aio.Channel, gateway_stack: GatewayStack, backend: int
) -> None:
    pid = await create_pipeline(channel, queue_backend=backend)
    ids = [f"c-{i}" for i in range(6)]
    result = await enqueue(
        channel,
        st.EnqueueDocumentsRequest(
            pipeline_id=pid,
            document_ids=ids[:4],
            content_hashes=["h0", "", "h2", ""],
            priorities=[0, 0, -1, 0],
        ),
        st.EnqueueDocumentsRequest(pipeline_id=pid, document_ids=ids[4:]),
    )
    assert result.enqueued == 6
    assert set(await claim(channel, pid, 1)) == {"c-2"}  # priority -1 first
    assert set(await claim(channel, pid, 10)) == set(ids) - {"c-2"}


async def test_a_bad_column_entry_is_named_and_nothing_is_enqueued(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel, queue_backend=pipeline_pb2.QUEUE_BACKEND_SEGMENT)
    for request, field in (
        (st.EnqueueDocumentsRequest(pipeline_id=pid, document_ids=["ok", "bad\x00id"]), "document_ids[1]"),
        (st.EnqueueDocumentsRequest(pipeline_id=pid, document_ids=["a", "b"], priorities=[1]), "priorities"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await enqueue(channel, request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
    assert await pending(channel, pid) == 0
