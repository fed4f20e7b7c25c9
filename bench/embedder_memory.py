"""Embedder memory against the backlog: RSS with 100,000 pending documents ÷ RSS with 1,000.

The suite of ``bench/pipeline_efficiency.py`` (PostgreSQL, SeaweedFS S3,
claimer, gateway with Milvus Lite, a real ``tritonserver`` on the CPU), two
pipelines: ``--small`` (1,000) and ``--large`` (100,000) pending documents of
one short chunk each, staged in bulk through StageDocuments. Then, for each
pipeline in turn, a fresh embedder process whose worker works only that
pipeline runs until it has indexed ``--processed`` documents (all of the
small backlog); its resident set is sampled from ``/proc/<pid>/status``
every 0.1 s. Printed per case: the peak (``VmHWM``) and the last sample
(``VmRSS``); the ratio large ÷ small (goal ≤ 1.2). Memory is bounded by
design: the worker holds at most ``EMBEDDER_WORKER_MAX_DOCUMENTS`` leases and
a chunk queue of batch size x ``EMBEDDER_WORKER_QUEUE_BATCHES`` chunks,
whatever the backlog.

    .venv/bin/python bench/embedder_memory.py            # as recorded in docs/benchmarks.md
    .venv/bin/python bench/embedder_memory.py --large 20000 --processed 500   # a smaller run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

from pipeline_efficiency import Suite, create_pipelines, indexed_count, running_suite
from support.staging import stage_documents

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client.channel import open_channel
from hevlayer.triton.local import LocalModel

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def tiny_documents(count: int, prefix: str) -> list[document_pb2.Document]:
    """``count`` documents of one short chunk each."""
    documents = []
    for i in range(count):
        document = document_pb2.Document(id=f"{prefix}-{i:06d}")
        words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))
        document.chunks.add(id="0", text=f"note {i}: {words}")
        documents.append(document)
    return documents


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Case:
    pending: int
    processed: int
    seconds: float
    peak_kib: int
    last_kib: int
    samples: list[tuple[int, int]]
    """(documents indexed, RSS KiB) checkpoints."""


async def stage_all(gateway_address: str, pipeline_id: str, count: int, streams: int = 4) -> float:
    """Stage ``count`` tiny documents over ``streams`` StageDocuments streams; seconds taken."""
    documents = tiny_documents(count, pipeline_id)
    parts = [documents[i::streams] for i in range(streams)]
    started = time.perf_counter()
    async with open_channel(gateway_address) as channel:
        await asyncio.gather(*(stage_documents(channel, pipeline_id, part, batch=500) for part in parts))
    return time.perf_counter() - started


async def run_case(suite: Suite, env: dict[str, str], pipeline_id: str, pending: int, processed: int) -> Case:
    """A fresh embedder on ``pipeline_id`` until ``processed`` documents are indexed."""
    embedder, _ = suite.start_embedder([pipeline_id], env)
    pid = embedder.pid
    assert pid is not None
    target = min(processed, pending)
    samples: list[tuple[int, int]] = []
    next_checkpoint = 0
    started = time.perf_counter()
    last = 0
    async with open_channel(suite.gateway_address) as channel:
        while True:
            await asyncio.sleep(0.1)
            last = status_kib(pid)["VmRSS"]
            indexed = await indexed_count(channel, pipeline_id)
            if indexed >= next_checkpoint:
                samples.append((indexed, last))
                next_checkpoint = indexed + max(1, target // 5)
            if indexed >= target:
                break
    seconds = time.perf_counter() - started
    peak = status_kib(pid)["VmHWM"]
    embedder.stop(grace=30)
    return Case(pending, target, seconds, peak, last, samples)


async def measure(args: argparse.Namespace) -> None:
    model = LocalModel(max_batch_size=args.batch)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; batch {args.batch}; "
        f"pending documents {args.small} and {args.large}, one short chunk each; each embedder runs until "
        f"{args.processed} documents are indexed"
    )
    env = {"EMBEDDER_WORKER_BATCH_SIZE": str(args.batch)}
    with running_suite(model) as suite:
        create_pipelines(suite.gateway_address, ["mem-small", "mem-large"])
        for pipeline_id, count in (("mem-small", args.small), ("mem-large", args.large)):
            seconds = await stage_all(suite.gateway_address, pipeline_id, count)
            print(f"staged {count} documents into {pipeline_id} in {seconds:.1f} s ({count / seconds:.0f}/s)")
        cases = [
            await run_case(suite, env, pipeline_id, count, args.processed)
            for pipeline_id, count in (("mem-small", args.small), ("mem-large", args.large))
        ]
    for case in cases:
        checkpoints = ", ".join(f"{n}: {kib / 1024:.0f}" for n, kib in case.samples)
        print(
            f"{case.pending:>7} pending: peak RSS {case.peak_kib / 1024:6.1f} MiB, "
            f"last {case.last_kib / 1024:6.1f} MiB after {case.processed} indexed in {case.seconds:.1f} s "
            f"(RSS MiB by documents indexed: {checkpoints})"
        )
    small, large = cases
    ratio = large.peak_kib / small.peak_kib
    print(
        f"RSS ratio {large.pending} ÷ {small.pending} pending: peak {ratio:.3f}, last "
        f"{large.last_kib / small.last_kib:.3f} (goal ≤ 1.2: {'met' if ratio <= 1.2 else 'NOT met'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--processed", type=int, default=1000, help="documents indexed before measuring")
    parser.add_argument("--batch", type=int, default=32)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
