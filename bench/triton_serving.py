"""Triton serving overhead: raw Triton (tritonclient gRPC aio) vs in-process onnxruntime.

The same model (all-MiniLM-L6-v2 int8, the same tokenization, pooling and
normalization code) embeds the same chunks at the same batch size twice:

* in-process: :class:`hevlayer.triton.onnx_model.OnnxEmbedder` called in a
  loop, measured with onnxruntime's thread spinning off and on; the faster of
  the two is the baseline;
* through a real ``tritonserver`` (the nvidia-pytriton binary, Python backend,
  started here by :class:`hevlayer.triton.local.LocalTriton`), called
  with ``tritonclient.grpc.aio`` keeping ``--concurrency`` requests in flight.

Two workloads: short chunks (single lines of Python standard library source,
about 5 to 25 tokens) and realistic chunks (the standard library source cut
into 100 to 250 token pieces). Prints chunks/s and tokens/s of each path and
the ratio raw Triton ÷ in-process (goal ≥ 0.8 on realistic chunks).

    .venv/bin/python bench/triton_serving.py            # defaults as recorded in docs/benchmarks.md
    .venv/bin/python bench/triton_serving.py --quick    # a smaller run

``--triton-url HOST:PORT`` measures a Triton server that is already running
(for instance the ``deploy/triton`` ensemble on a GPU, ``bench/gpu_check.sh``)
instead of starting the CPU one; ``--skip-in-process`` leaves out the
in-process runs (on a GPU server they are no baseline) and prints the raw
Triton rates alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio

from hevlayer.triton.local import LocalModel, LocalTriton
from hevlayer.triton.onnx_model import OnnxEmbedder, RuntimeOptions, minilm_files


@dataclass(frozen=True)
class Workload:
    name: str
    chunks: list[str]
    tokens: int


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def make_workloads(embedder: OnnxEmbedder, count: int, short_count: int) -> tuple[Workload, Workload]:
    """Short and realistic chunks from the standard library, deterministic."""
    short: list[str] = []
    realistic: list[str] = []
    for path in stdlib_sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        short.extend(s for s in (line.strip() for line in lines) if 20 <= len(s) <= 80)
        block: list[str] = []
        size = 0
        candidates: list[str] = []
        for line in lines:
            block.append(line)
            size += len(line) + 1
            if size >= 700:
                candidates.append("\n".join(block))
                block, size = [], 0
        counts = embedder.token_counts(candidates)
        realistic.extend(c for c, n in zip(candidates, counts, strict=True) if 100 <= n <= 250)
        if len(realistic) >= count and len(short) >= short_count:
            break
    short = short[:short_count]
    realistic = realistic[:count]
    return (
        Workload("short", short, sum(embedder.token_counts(short))),
        Workload("realistic", realistic, sum(embedder.token_counts(realistic))),
    )


def batches(chunks: Sequence[str], size: int) -> list[list[str]]:
    return [list(chunks[i : i + size]) for i in range(0, len(chunks), size)]


def run_in_process(embedder: OnnxEmbedder, work: Workload, batch: int) -> float:
    """Chunks/s embedding every chunk, one batch after the other."""
    start = time.perf_counter()
    for chunk_batch in batches(work.chunks, batch):
        vectors = embedder.embed(chunk_batch)
        assert vectors.shape == (len(chunk_batch), embedder.dimension)
    return len(work.chunks) / (time.perf_counter() - start)


class RawTriton:
    """tritonclient.grpc.aio against one model: BYTES ``TEXT`` in, FP32 ``EMBEDDING`` out."""

    def __init__(self, url: str, model: str) -> None:
        self.client = triton_aio.InferenceServerClient(url)
        self.model = model

    async def infer(self, texts: list[str]) -> npt.NDArray[np.float32]:
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        tensor = triton_aio.InferInput("TEXT", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        result = await self.client.infer(self.model, [tensor])
        vectors: npt.NDArray[np.float32] = result.as_numpy("EMBEDDING")
        assert vectors.shape[0] == len(texts)
        return vectors

    async def run(self, work: Workload, batch: int, concurrency: int) -> float:
        """Chunks/s embedding every chunk with ``concurrency`` requests in flight."""
        queue = batches(work.chunks, batch)
        start = time.perf_counter()

        async def worker() -> None:
            while queue:
                await self.infer(queue.pop(0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(work.chunks) / (time.perf_counter() - start)


async def measure(args: argparse.Namespace) -> None:
    files = minilm_files()
    runtimes = {
        "spin off": RuntimeOptions(intra_op_threads=args.threads, allow_spinning=False),
        "spin on": RuntimeOptions(intra_op_threads=args.threads, allow_spinning=True),
    }
    embedders = {label: OnnxEmbedder(files, runtime) for label, runtime in runtimes.items()}
    workloads = make_workloads(embedders["spin off"], args.realistic, args.short)
    if args.skip_in_process:
        embedders = {}
    max_batch_size = args.max_batch_size or args.batch
    served = (
        f"Triton at {args.triton_url}, model {args.model_name!r}"
        if args.triton_url
        else f"Triton 2.51 (Python backend, CPU): {args.instances} instance(s), max_batch_size "
        f"{max_batch_size}, queue delay {args.queue_delay_us} us, "
        f"onnxruntime spinning {'on' if args.triton_spinning else 'off'}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"model: all-MiniLM-L6-v2 int8 ONNX ({files.dimension} dims); "
        f"batch {args.batch}; {args.rounds} rounds\n{served}, {args.concurrency} requests in flight"
    )
    for work in workloads:
        per_chunk = work.tokens / len(work.chunks)
        print(f"workload {work.name}: {len(work.chunks)} chunks, {per_chunk:.0f} tokens/chunk")
    model = LocalModel(
        files=files,
        max_batch_size=max_batch_size,
        instances=args.instances,
        queue_delay_us=args.queue_delay_us,
        runtime=RuntimeOptions(intra_op_threads=args.threads, allow_spinning=args.triton_spinning),
    )
    rates: dict[tuple[str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        if args.triton_url:
            raw = RawTriton(args.triton_url, args.model_name)
        else:
            server = stack.enter_context(LocalTriton([model]))
            raw = RawTriton(server.url, model.name)
        try:
            for work in workloads:
                for embedder in embedders.values():
                    embedder.embed(work.chunks[: args.batch])  # warm up
                await raw.infer(work.chunks[: args.batch])
                # Rounds interleave the paths so that load from other processes hits them alike.
                for _ in range(args.rounds):
                    for label, embedder in embedders.items():
                        rates.setdefault((work.name, label), []).append(
                            run_in_process(embedder, work, args.batch)
                        )
                    rates.setdefault((work.name, "triton"), []).append(
                        await raw.run(work, args.batch, args.concurrency)
                    )
        finally:
            await raw.client.close()

    print()
    if not embedders:
        for work in workloads:
            rate = statistics.median(rates[(work.name, "triton")])
            per_chunk = work.tokens / len(work.chunks)
            print(f"{work.name:<10} raw Triton {rate:>9.1f} ch/s {rate * per_chunk:>10.0f} tokens/s")
        print("medians over the rounds (no in-process baseline: --skip-in-process)")
        return
    header = ("workload", "in-process spin off", "in-process spin on", "raw Triton", "ratio")
    print(f"{header[0]:<10} {header[1]:>20} {header[2]:>19} {header[3]:>12} {header[4]:>6}")
    for work in workloads:
        med = {
            label: statistics.median(rates[(work.name, label)]) for label in ("spin off", "spin on", "triton")
        }
        base = max(med["spin off"], med["spin on"])
        print(
            f"{work.name:<10} {med['spin off']:>15.1f} ch/s {med['spin on']:>14.1f} ch/s "
            f"{med['triton']:>7.1f} ch/s {med['triton'] / base:>6.2f}"
        )
    print(
        "medians over the rounds; ratio = raw Triton ÷ the faster in-process setting, same batch size "
        "(goal ≥ 0.8 on realistic chunks)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="chunks per request / per in-process call")
    parser.add_argument("--realistic", type=int, default=128, help="realistic chunks (100-250 tokens)")
    parser.add_argument("--short", type=int, default=2048, help="short chunks")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--concurrency", type=int, default=2, help="Triton requests in flight")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per CPU)")
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    parser.add_argument("--max-batch-size", type=int, default=0, help="Triton max_batch_size (0: --batch)")
    parser.add_argument("--triton-spinning", action="store_true", help="let onnxruntime spin inside Triton")
    parser.add_argument("--quick", action="store_true", help="64 realistic and 1024 short chunks, 2 rounds")
    parser.add_argument(
        "--triton-url", default="", help="a running Triton (host:port) instead of the CPU one"
    )
    parser.add_argument("--model-name", default="minilm", help="the model to call with --triton-url")
    parser.add_argument("--skip-in-process", action="store_true", help="raw Triton rates only")
    args = parser.parse_args()
    if args.quick:
        args.realistic, args.short, args.rounds = 64, 1024, 2
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
