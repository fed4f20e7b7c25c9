"""Every server of the live suite (gateway, claimer, embedder: as ``hevlayer up`` runs them,
default settings) refuses a message over HEVLAYER_GRPC_MAX_MESSAGE_BYTES with gRPC's own
RESOURCE_EXHAUSTED, and a refused request writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.common.interceptors import client_interceptors
from hevlayer.common.limits import MAX_MESSAGE_BYTES
from hevlayer.devstack.testing import LiveSuite

OVER = MAX_MESSAGE_BYTES + 1024


def _wide_channel(address: str, metadata: list[tuple[str, str]] | None = None) -> aio.Channel:
    """A channel that sends messages larger than the servers accept (``metadata`` on every call)."""
    limit = 2 * MAX_MESSAGE_BYTES
    return aio.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
        interceptors=client_interceptors(metadata or [], traced=False),
    )


@pytest.mark.parametrize("server", ["gateway", "claimer"])
async def test_an_oversized_create_pipeline_is_refused_and_creates_nothing(
    live_suite: LiveSuite, server: str
) -> None:
    pipeline_id = f"oversized-{uuid.uuid4().hex[:6]}"
    # The claimer answers only its gateway: the test sends the suite's internal token.
    metadata = live_suite.claimer_metadata() if server == "claimer" else []
    async with _wide_channel(live_suite.services[server], metadata) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        pipeline = pipeline_pb2.Pipeline(id=pipeline_id, target_namespace="x" * OVER)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.CreatePipeline(pipeline_pb2.CreatePipelineRequest(pipeline=pipeline), timeout=120)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(aio.AioRpcError) as missing:
            await stub.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_oversized_embed_request_is_refused(live_suite: LiveSuite) -> None:
    async with _wide_channel(live_suite.services["embedder"]) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        async def requests() -> AsyncIterator[embedding_pb2.EmbedRequest]:
            yield embedding_pb2.EmbedRequest(texts=["x" * OVER])

        with pytest.raises(aio.AioRpcError) as refused:
            async for _ in stub.Embed(requests(), timeout=120):
                pass
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server still serves a request under the limit.
        model = await stub.DescribeModel(embedding_pb2.DescribeModelRequest())
        assert model.dimension > 0
