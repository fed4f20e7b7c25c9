"""The embedder's readiness follows Triton: NOT_SERVING / 503 naming it while Triton does not
answer (a Triton of this test's own is stopped), SERVING / 200 and embeddings again once it is
back. Every wait is a bounded poll."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from support.polling import eventually
from support.readiness import health, readyz
from support.service_http import metric_samples

from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.testing import ServiceFactory
from hevlayer.triton.local import LocalModel, LocalTriton

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[LocalTriton]:
    """A Triton on a fixed port, so it can be stopped and started again."""
    server = LocalTriton([LocalModel(max_batch_size=8)], workdir=tmp_path / "triton")
    try:
        server.start().wait_ready()
        yield server
    finally:
        server.cleanup()


async def test_readiness_follows_triton(own_triton: LocalTriton, service_factory: ServiceFactory) -> None:
    http_address = f"127.0.0.1:{free_port()}"
    embedder = service_factory(
        "hevlayer-embedder",
        name="embedder",
        env={
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "EMBEDDER_TRITON_URL": own_triton.url,
            "HEVLAYER_READINESS_INTERVAL_SECONDS": "0.5",
            "HEVLAYER_READINESS_TIMEOUT_SECONDS": "0.5",
        },
        ready_timeout=90,
    )
    address = embedder.grpc_address
    assert address is not None
    status, body = readyz(http_address)
    assert (status, body["dependencies"]) == (200, {"triton": {"up": True}}), body
    assert metric_samples(http_address, "hevlayer_embedder_dependency_up") == [
        ({"dependency": "triton"}, 1.0)
    ]

    own_triton.stop()
    seen: dict[str, Any] = {}

    async def down() -> bool:
        status, body = readyz(http_address)
        seen.update(body)
        return status == 503 and body.get("down") == ["triton"]

    await eventually(down, timeout=60, what="/readyz 503 naming triton")
    assert seen["dependencies"]["triton"]["error"], seen
    assert await health(address) == NOT_SERVING
    assert metric_samples(http_address, "hevlayer_embedder_dependency_up") == [
        ({"dependency": "triton"}, 0.0)
    ]

    own_triton.start().wait_ready()

    async def ready() -> bool:
        return readyz(http_address)[0] == 200

    await eventually(ready, timeout=60, what="/readyz 200 once Triton is back")
    assert await health(address) == SERVING
    async with aio.insecure_channel(address) as channel:
        call = embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(timeout=60)
        await call.write(embedding_pb2.EmbedRequest(texts=["back again"]))
        await call.done_writing()
        reply = await call.read()
    assert isinstance(reply, embedding_pb2.EmbedResponse)
    assert len(reply.embeddings) == 1
