"""The encoder's graph fused (hevlayer.triton.graph_fusion) against the file's graph, in process.

Both embedders run the same texts with the same runtime options (one run at a time, one
onnxruntime thread, so CPU seconds are the encoder's own); the rounds alternate which goes
first. Prints CPU seconds and texts per CPU second of each, the ratio fused / file's, and the
largest difference between their vectors.

    .venv/bin/python bench/encoder_fusion.py                # 256 texts of the standard library
    .venv/bin/python bench/encoder_fusion.py --texts 64 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sysconfig
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hevlayer.triton.onnx_model import OnnxEmbedder, RuntimeOptions, minilm_files


def stdlib_texts(count: int, chars: int = 900) -> list[str]:
    """``count`` texts of ``chars`` characters cut from the standard library's modules."""
    texts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(errors="replace")
        texts += [source[i : i + chars] for i in range(0, len(source), chars)]
        if len(texts) >= count:
            break
    return texts[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="texts per round (default 256)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    args = parser.parse_args()
    texts = stdlib_texts(args.texts)
    one_thread = RuntimeOptions(parallel_runs=1, intra_op_threads=1)
    embedders = {
        "file's graph": OnnxEmbedder(minilm_files(), replace(one_thread, fuse_graph=False)),
        "fused": OnnxEmbedder(minilm_files(), one_thread),
    }
    print(f"{len(texts)} texts; fused: {embedders['fused'].fusion}; load average {os.getloadavg()[0]:.2f}")
    for embedder in embedders.values():
        embedder.embed(texts[:8])  # warm up
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    vectors = {}
    for round_ in range(args.rounds):
        order = list(embedders) if round_ % 2 == 0 else list(reversed(embedders))
        for name in order:
            started = time.process_time()
            vectors[name] = embedders[name].embed(texts)
            seconds[name].append(time.process_time() - started)
            print(f"round {round_ + 1}  {name:13s} {seconds[name][-1]:7.2f} CPU s")
    for name, values in seconds.items():
        best = min(values)
        print(f"{name:13s} best {best:7.2f} CPU s  {len(texts) / best:6.1f} texts per CPU s")
    ratio = min(seconds["file's graph"]) / min(seconds["fused"])
    median_ratio = statistics.median(
        a / b for a, b in zip(seconds["file's graph"], seconds["fused"], strict=True)
    )
    difference = float(np.abs(vectors["fused"] - vectors["file's graph"]).max())
    print(
        f"ratio fused / file's graph, texts per CPU s: best {ratio:.3f}, median of rounds {median_ratio:.3f}"
    )
    print(
        f"largest difference of a vector component: {difference:.1e}; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
