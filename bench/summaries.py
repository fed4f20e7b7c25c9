"""The Job Lane's scheduling: provider utilisation under a gate, and fairness between jobs.

The summarizer's job runner (``hevlayer.summarizer.jobs.JobRunner``: the
per-job depth heaps, the round-robin dispatcher, the fold workers, the
Transformation Cache on a temporary directory, the job journal) runs in this
process with a **fixed-latency fake provider**: every summary call sleeps
``--latency`` seconds and records how long it was busy. Summaries go to an
in-memory stager, so what is measured is scheduling, not staging.

1. **Utilisation**: one large tree (``--fanout`` top directories, each with
   ``--fanout`` sub-directories of ``--leaves`` leaf directories of
   ``--files`` files) through a ``summary_gate`` of ``--gate`` N; utilisation
   = provider busy time / (N x wall time). Goal: >= 0.9. ``--workers`` fold
   workers (SUMMARIZER_WORKERS) feed the gate: a fold's cache look-up and
   write, journal and staging happen outside the gate, so it stays full only
   with several times N workers (on a loaded machine, where each thread hop
   is slow, 4 x N).
2. **A small job behind a large one**: the large tree is submitted, then at
   once a small job (one directory of three files, then its root: two
   directories); the small job's completion time, next to the large job's
   and to the small job alone.

    .venv/bin/python bench/summaries.py [--gate 8] [--workers 32] [--latency 0.1] [--fanout 10] [--leaves 8]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hevlayer.ingest.transform import TransformationCache
from hevlayer.summarizer.gates import Gate
from hevlayer.summarizer.jobs import JobRunner, JobState, SubmitBatch
from hevlayer.summarizer.journal import JobJournal
from hevlayer.summarizer.providers import ChildInput, SummaryProvider
from hevlayer.summarizer.staging import MemoryStager
from hevlayer.summarizer.tree import ObjectSpec


class FixedLatencyProvider(SummaryProvider):
    """Answers every summary after ``latency`` seconds; sums the time it was busy."""

    model = "fixed-latency"
    prompt_version = "bench-1"

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.busy = 0.0
        self.calls = 0

    async def summarize(self, children: Sequence[ChildInput]) -> str:
        started = time.perf_counter()
        await asyncio.sleep(self.latency)
        self.busy += time.perf_counter() - started
        self.calls += 1
        return f"{len(children)} children: " + ", ".join(c.name for c in children[:5])


def large_tree(prefix: str, fanout: int, leaves: int, files: int) -> list[ObjectSpec]:
    objects = []
    for a in range(fanout):
        for b in range(fanout):
            for c in range(leaves):
                for f in range(files):
                    path = f"{prefix}t{a}/s{b}/l{c}/f{f}.py"
                    objects.append(ObjectSpec(path=path, content_hash=path, kind="code", text=f"file {path}"))
    return objects


async def run_job(runner: JobRunner, job_id: str, objects: list[ObjectSpec]) -> float:
    """Submit a job; seconds until it ends."""
    started = time.perf_counter()
    runner.submit(SubmitBatch(job_id, "bench", objects, enumeration_complete=True))
    async for event in runner.watch(job_id):
        if event.job.state.ended:
            assert event.job.state is JobState.SUCCEEDED, event.job
    return time.perf_counter() - started


async def make_runner(directory: Path, provider: SummaryProvider, gate: int, workers: int) -> JobRunner:
    cache = TransformationCache(location=directory / "transformations", max_bytes=1 << 30)
    runner = JobRunner(
        provider,
        cache,
        MemoryStager(),
        gate=Gate("summary", gate),
        workers=workers,
        journal=JobJournal(directory / "cache" / "jobs"),
    )
    await runner.start()
    return runner


async def main(args: argparse.Namespace) -> None:
    objects = large_tree("", args.fanout, args.leaves, args.files)
    directories = 1 + args.fanout + args.fanout**2 + args.fanout**2 * args.leaves
    print(
        f"large tree: {len(objects)} files, {directories} directories; gate {args.gate}, "
        f"fixed latency {args.latency * 1000:.0f} ms, {args.workers} fold workers"
    )

    with tempfile.TemporaryDirectory() as tmp:
        provider = FixedLatencyProvider(args.latency)
        runner = await make_runner(Path(tmp) / "1", provider, args.gate, args.workers)
        try:
            wall = await run_job(runner, "large", objects)
        finally:
            await runner.stop()
        utilisation = provider.busy / (args.gate * wall)
        ideal = directories * args.latency / args.gate
        print(
            f"utilisation: {provider.calls} provider calls in {wall:.2f} s (ideal {ideal:.2f} s): "
            f"busy {provider.busy:.1f} s / ({args.gate} x {wall:.2f} s) = {utilisation:.3f} "
            f"(goal >= 0.9: {'met' if utilisation >= 0.9 else 'NOT met'})"
        )

        small = [ObjectSpec(path=f"small/f{i}.md", content_hash=f"s{i}", text=f"note {i}") for i in range(3)]
        provider = FixedLatencyProvider(args.latency)
        runner = await make_runner(Path(tmp) / "2", provider, args.gate, args.workers)
        try:
            alone = await run_job(runner, "small-alone", small)
        finally:
            await runner.stop()

        provider = FixedLatencyProvider(args.latency)
        runner = await make_runner(Path(tmp) / "3", provider, args.gate, args.workers)
        try:
            large_task = asyncio.create_task(run_job(runner, "large", large_tree("x", *_shape(args))))
            await asyncio.sleep(0)  # the large job is submitted first
            small_time = await run_job(runner, "small", small)
            large_time = await large_task
        finally:
            await runner.stop()
        print(
            f"small job (2 directories) behind the large one: done in {small_time:.3f} s "
            f"(alone: {alone:.3f} s; the large job took {large_time:.2f} s)"
        )


def _shape(args: argparse.Namespace) -> tuple[int, int, int]:
    return args.fanout, args.leaves, args.files


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gate", type=int, default=8, help="summary_gate: provider calls in flight")
    parser.add_argument(
        "--workers", type=int, default=32, help="fold workers (SUMMARIZER_WORKERS): cache look-ups, staging"
    )
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per provider call")
    parser.add_argument("--fanout", type=int, default=10, help="top directories, and sub-directories of each")
    parser.add_argument("--leaves", type=int, default=8, help="leaf directories per sub-directory")
    parser.add_argument("--files", type=int, default=3, help="files per leaf directory")
    asyncio.run(main(parser.parse_args()))
