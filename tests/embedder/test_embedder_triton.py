"""The Triton client against a real tritonserver: discovery, vectors, batching, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hevlayer.common.errors import FailedPrecondition, Unavailable
from hevlayer.common.metrics import REGISTRY
from hevlayer.devstack.ports import free_port
from hevlayer.embedder.triton_client import RetryPolicy, TritonEmbeddingClient
from hevlayer.triton.local import LocalModel, LocalTriton
from hevlayer.triton.onnx_model import OnnxEmbedder
from hevlayer.triton.repository import prepare_repository

DEPLOY_REPOSITORY = Path(__file__).resolve().parents[2] / "deploy" / "triton" / "model_repository"
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)

PARAPHRASES = ("a cat sits on the mat", "a kitten is on the rug")
UNRELATED = "the stock market fell sharply today"


def test_the_served_model_runs_the_fused_encoder_graph(triton: LocalTriton) -> None:
    log = triton.log_path.read_text(errors="replace")
    assert "hevlayer: encoder model.onnx: 6 of 6 attention layers and 6 GELUs fused" in log


async def test_the_model_is_discovered_from_triton(triton: LocalTriton) -> None:
    client = TritonEmbeddingClient(triton.url, "minilm")
    try:
        info = await client.model_info()
    finally:
        await client.close()
    assert info.dimension == 384
    assert (info.input_name, info.output_name) == ("TEXT", "EMBEDDING")
    assert info.triton_max_batch_size == 32
    assert info.batch_size == 32
    assert info.text_extra_dims == 1


async def test_triton_vectors_are_unit_length_and_match_in_process(
    triton: LocalTriton, onnx_embedder: OnnxEmbedder
) -> None:
    client = TritonEmbeddingClient(triton.url, "minilm")
    texts = [*PARAPHRASES, UNRELATED, "", "naïve café 東京"]
    try:
        vectors = await client.embed(texts)
    finally:
        await client.close()
    assert vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cat, kitten, market = vectors[:3]
    assert float(cat @ kitten) > float(cat @ market) + 0.3
    reference = onnx_embedder.embed(texts)
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.99


async def test_requests_are_cut_to_the_batch_size_and_keep_the_order(triton: LocalTriton) -> None:
    texts = [f"sentence {i}: {'cats ' * (i % 5)}and dogs" for i in range(45)]
    small = TritonEmbeddingClient(triton.url, "minilm", max_batch_size=8, max_in_flight=3)
    whole = TritonEmbeddingClient(triton.url, "minilm")
    try:
        assert (await small.model_info()).batch_size == 8
        batched = await small.embed(texts)
        reversed_order = await whole.embed(texts[::-1])
    finally:
        await small.close()
        await whole.close()
    assert batched.shape == (45, 384)
    assert np.min(np.sum(batched * reversed_order[::-1], axis=1)) > 0.99


def triton_requests(model: str) -> float:
    """Requests recorded by ``hevlayer_embedder_triton_request_seconds`` for ``model`` so far."""
    return (
        REGISTRY.get_sample_value("hevlayer_embedder_triton_request_seconds_count", {"model": model}) or 0.0
    )


async def test_every_triton_request_is_timed_once(triton: LocalTriton) -> None:
    client = TritonEmbeddingClient(triton.url, "minilm", max_batch_size=8, max_in_flight=3)
    try:
        await client.model_info()
        before = triton_requests("minilm")
        await client.embed([f"text {i}" for i in range(20)])  # requests of 8, 8 and 4 texts
        after = triton_requests("minilm")
    finally:
        await client.close()
    assert after - before == 3
    total = REGISTRY.get_sample_value("hevlayer_embedder_triton_request_seconds_sum", {"model": "minilm"})
    assert total is not None
    assert total > 0


async def test_a_dimension_that_does_not_match_the_model_is_refused(triton: LocalTriton) -> None:
    client = TritonEmbeddingClient(triton.url, "minilm", dimension=768)
    try:
        with pytest.raises(FailedPrecondition, match="768"):
            await client.model_info()
    finally:
        await client.close()


async def test_an_unknown_model_is_a_failed_precondition(triton: LocalTriton) -> None:
    client = TritonEmbeddingClient(triton.url, "no-such-model", retry=FAST_RETRY)
    try:
        with pytest.raises(FailedPrecondition):
            await client.embed(["text"])
    finally:
        await client.close()


async def test_triton_down_is_unavailable_after_the_retries() -> None:
    client = TritonEmbeddingClient(f"127.0.0.1:{free_port()}", "minilm", retry=FAST_RETRY)
    try:
        with pytest.raises(Unavailable) as raised:
            await client.embed(["text"])
        assert await client.ready() is False
    finally:
        await client.close()
    assert raised.value.retry_after == FAST_RETRY.max_backoff
    assert raised.value.metadata["triton_status"] == "UNAVAILABLE"


async def test_an_outage_shorter_than_the_retries_loses_nothing() -> None:
    server = LocalTriton([LocalModel(name="outage", max_batch_size=8)])
    server.start().wait_ready()
    client = TritonEmbeddingClient(
        server.url, "outage", retry=RetryPolicy(attempts=60, initial_backoff=0.05, max_backoff=0.5)
    )
    try:
        before = await client.embed(PARAPHRASES)
        server.kill()
        pending = asyncio.create_task(client.embed(PARAPHRASES))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await asyncio.to_thread(server.restart)
        after = await asyncio.wait_for(pending, timeout=60)
    finally:
        await client.close()
        server.cleanup()
    np.testing.assert_allclose(after, before, atol=1e-5)


async def test_the_deploy_ensemble_runs_on_the_cpu_server(
    tmp_path: Path, onnx_embedder: OnnxEmbedder
) -> None:
    """deploy/triton's ensemble (tokenizer -> encoder -> pooling) on the real tritonserver,
    with the onnxruntime-backend encoder run by a Python model (the only backend here)."""
    repository = prepare_repository(DEPLOY_REPOSITORY, tmp_path / "repository", cpu=True)
    texts = [*PARAPHRASES, UNRELATED, "a longer text " * 40]
    with LocalTriton(model_repository=repository, workdir=tmp_path / "server") as server:
        client = TritonEmbeddingClient(server.url, "minilm")
        try:
            info = await client.model_info()
            vectors = await client.embed(texts)
        finally:
            await client.close()
    assert (info.dimension, info.triton_max_batch_size) == (384, 64)
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(vectors * onnx_embedder.embed(texts), axis=1)) > 0.99
