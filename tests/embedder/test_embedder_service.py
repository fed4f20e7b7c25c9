"""EmbeddingService through a real embedder process, a real channel and the real Triton."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import service_error_from_rpc_error
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import health_status
from hevlayer.devstack.testing import ServiceFactory
from hevlayer.triton.local import LocalModel, LocalTriton

PARAPHRASES = ("a cat sits on the mat", "a kitten is on the rug")
UNRELATED = "the stock market fell sharply today"


def vectors(response: embedding_pb2.EmbedResponse) -> npt.NDArray[np.float32]:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


async def test_describe_model(embedder_address: str) -> None:
    async with open_channel(embedder_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.DescribeModel(embedding_pb2.DescribeModelRequest())
    assert response.model == "minilm"
    assert response.dimension == 384
    assert response.max_batch_size == 1024
    assert response.normalized is True


async def test_embed_stream_answers_every_request_in_order(embedder_address: str) -> None:
    batches = [
        [*PARAPHRASES, UNRELATED],
        [f"chunk {i} of a longer document about embeddings" for i in range(40)],
        ["one"],
        [UNRELATED, PARAPHRASES[0]],
    ]

    async def requests() -> AsyncIterator[embedding_pb2.EmbedRequest]:
        for i, texts in enumerate(batches):
            input_type = embedding_pb2.INPUT_TYPE_QUERY if i == 2 else embedding_pb2.INPUT_TYPE_DOCUMENT
            yield embedding_pb2.EmbedRequest(texts=texts, input_type=input_type)

    async with open_channel(embedder_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        responses = [r async for r in stub.Embed(requests())]
    assert [len(r.embeddings) for r in responses] == [len(b) for b in batches]
    for response in responses:
        v = vectors(response)
        assert v.shape[1] == 384
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    cat, kitten, market = vectors(responses[0])
    assert float(cat @ kitten) > float(cat @ market) + 0.3
    market_again, cat_again = vectors(responses[3])
    assert float(cat @ cat_again) > 0.99
    assert float(market @ market_again) > 0.99


async def test_an_empty_request_is_invalid(embedder_address: str) -> None:
    async def requests() -> AsyncIterator[embedding_pb2.EmbedRequest]:
        yield embedding_pb2.EmbedRequest(texts=[])

    async with open_channel(embedder_address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            _ = [r async for r in stub.Embed(requests())]
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = service_error_from_rpc_error(raised.value)
    assert [v.field for v in error.violations] == ["texts"]


async def test_triton_down_gives_unavailable_then_the_embedder_recovers(
    service_factory: ServiceFactory,
) -> None:
    port = free_port()
    process = service_factory(
        "hevlayer-embedder",
        wait=False,
        env={
            "EMBEDDER_TRITON_URL": f"127.0.0.1:{port}",
            "EMBEDDER_MODEL_NAME": "down",
            "EMBEDDER_TRITON_RETRY_ATTEMPTS": "2",
            "EMBEDDER_TRITON_RETRY_INITIAL_BACKOFF_SECONDS": "0.05",
            "EMBEDDER_TRITON_RETRY_MAX_BACKOFF_SECONDS": "0.2",
        },
    )
    address = process.grpc_address
    assert address is not None

    async def one_request() -> AsyncIterator[embedding_pb2.EmbedRequest]:
        yield embedding_pb2.EmbedRequest(texts=list(PARAPHRASES))

    async with aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as described:
            await stub.DescribeModel(embedding_pb2.DescribeModelRequest())
        with pytest.raises(aio.AioRpcError) as embedded:
            _ = [r async for r in stub.Embed(one_request())]
        for raised in (described, embedded):
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            status = rpc_status.from_call(raised.value)
            assert status is not None
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        assert health_status(address).startswith("NOT_SERVING")

        server = LocalTriton([LocalModel(name="down", max_batch_size=8)], grpc_port=port)
        try:
            server.start().wait_ready()
            process.wait_ready(timeout=60)
            responses = [r async for r in stub.Embed(one_request())]
        finally:
            server.cleanup()
    assert len(responses[0].embeddings) == 2
