"""Extraction throughput: ``hevlayer-extractor`` processes against ``hevlayer add``'s in-process workers.

Brings up a local suite the way ``make run`` does (``hevlayer up --detach`` with its data
directory in /tmp) but **without the embedder** (``--no-embedder --no-summarizer``: no Triton,
no embedder worker), so nothing embeds: what is measured is extraction alone (claim, read,
convert, split, stage), and no embedding competes with it for the CPUs. Staged documents stay in
``pending``. Authentication is off (``GATEWAY_AUTH=off``, as in the tests' shared suite), so the
extract workers need no token.

Corpus: the ``make run`` corpus (the standard library files ``hevlayer demo`` picks with its
defaults, ``hevlayer.cli.corpus``), copied once under the data directory's parent.

Variants, each on a new pipeline (so nothing is ``unchanged``), the Artifact Cache off everywhere
(every file is converted), back to back, ``--rounds`` times in turn:

- ``in-process``: ``hevlayer add --no-wait --artifact-cache-mb 0 --workers W CORPUS``: enumerate,
  enqueue and extract with ``W`` extract loops inside ``add`` (``--workers``, default 4, ``add``'s
  default);
- ``N extractor(s)`` for N in ``--extractors`` (default 1 2 4): N ``hevlayer-extractor`` processes
  (``EXTRACTOR_CONCURRENCY`` loops each, default 4: the worker's default) started on the pipeline
  and ready (``/readyz``) before the clock starts, then ``hevlayer add --no-wait --remote-workers
  --artifact-cache-mb 0 CORPUS``: enumerate and enqueue, the extractors extract.

``add --no-wait`` returns once no document of the pipeline is in ``extract`` or ``extracting``.
The time measured for every variant is ``add``'s own clock (its ``took N s`` line, 0.1 s
resolution): from connecting to the gateway through enumeration, enqueueing and the extraction
of every file until the last one is staged. The command's wall time is printed next to it; it
adds the CLI's start (Python imports: seconds on a loaded machine, the same for every variant).
Afterwards the pipeline's stage counts are read: every file must be ``pending`` (staged) or
``failed``.

    .venv/bin/python bench/extract.py                        # as in docs/benchmarks.md
    .venv/bin/python bench/extract.py --rounds 2 --extractors 1 2 4 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from memory import make_run_corpus

from hevlayer.api.pipeline.v1.pipeline_pb2 import Pipeline
from hevlayer.cli.stack import UpState
from hevlayer.client import Client
from hevlayer.common.errors import Unauthenticated
from hevlayer.devstack import free_ports

BIN = Path(sys.executable).parent
HEVLAYER = BIN / "hevlayer"
EXTRACTOR = BIN / "hevlayer-extractor"
READY_TIMEOUT = 60.0


@dataclass
class Suite:
    data_dir: Path
    gateway: str
    env: dict[str, str]

    def hevlayer(self, *args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
        argv = [str(HEVLAYER), "--data-dir", str(self.data_dir), "--gateway", self.gateway, *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)


def bring_up(data_dir: Path) -> Suite:
    env = {**os.environ, "GATEWAY_AUTH": "off"}
    argv = [str(HEVLAYER), "--data-dir", str(data_dir), "up", "--detach", "--no-embedder", "--no-summarizer"]
    started = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        log = data_dir / "logs" / "up.log"
        detail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise SystemExit(f"hevlayer up failed ({started.returncode}): {started.stderr}\n{detail}")
    state = UpState.read(data_dir)
    if state is None:
        raise SystemExit(f"hevlayer up --detach returned, but recorded no state in {data_dir}")
    return Suite(data_dir, state.gateway, env)


async def check_ours(gateway: str) -> None:
    """Exit unless the gateway answers without a token (this suite has authentication off)."""
    client = Client.connect(gateway)
    try:
        await client.pipelines.list()
    except Unauthenticated as error:
        # Another suite on this machine answers at that address (its gateway restarted on the
        # port this one was given): the figures would not be this suite's.
        raise SystemExit(
            f"the gateway at {gateway} is not this suite's (it wants a token): {error}"
        ) from None
    finally:
        await client.close()


def wait_ready(http: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"hevlayer-extractor exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://{http}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"hevlayer-extractor at {http} not ready within {READY_TIMEOUT:.0f} s: {log}")


def start_extractors(
    suite: Suite, pipeline_id: str, count: int, concurrency: int
) -> list[subprocess.Popen[bytes]]:
    processes = []
    ports = free_ports(2 * count)
    for index in range(count):
        grpc, http = f"127.0.0.1:{ports[2 * index]}", f"127.0.0.1:{ports[2 * index + 1]}"
        env = {
            **suite.env,
            "EXTRACTOR_GATEWAY_ADDRESS": suite.gateway,
            "EXTRACTOR_PIPELINES": pipeline_id,
            "EXTRACTOR_CONCURRENCY": str(concurrency),
            "EXTRACTOR_POLL_SECONDS": "0.2",
            "EXTRACTOR_ARTIFACT_CACHE": "",
            "HEVLAYER_GRPC_ADDRESS": grpc,
            "HEVLAYER_HTTP_ADDRESS": http,
        }
        log = suite.data_dir / "logs" / f"bench-extractor-{pipeline_id}-{index}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([str(EXTRACTOR)], env=env, stdout=out, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_ready(http, process, log)
    return processes


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def create_pipeline(gateway: str, pipeline_id: str) -> None:
    client = Client.connect(gateway)
    try:
        await client.pipelines.create(Pipeline(id=pipeline_id))
    finally:
        await client.close()


async def stage_counts(gateway: str, pipeline_id: str) -> dict[str, int]:
    client = Client.connect(gateway)
    try:
        status = await client.pipelines.status(pipeline_id)
        return {stage: n for stage, n in status.counts.items() if n}
    finally:
        await client.close()


TOOK = re.compile(r"^took ([0-9.]+) s", re.MULTILINE)


@dataclass
class Result:
    variant: str
    seconds: list[float] = field(default_factory=list)
    """``add``'s own clock ("took N s"): from connecting to the gateway until the last file is staged."""
    wall: list[float] = field(default_factory=list)
    """The ``add`` command's wall time: the above plus the CLI's start (imports)."""

    def files_per_second(self, files: int) -> float:
        return files / statistics.median(self.seconds)


def run_variant(
    suite: Suite, corpus: Path, files: int, extractors: int, args: argparse.Namespace
) -> tuple[float, float]:
    """One ``add``: its own seconds until the last file is staged, and its wall time."""
    pipeline_id = f"bx-{extractors}-{uuid4().hex[:6]}"
    asyncio.run(create_pipeline(suite.gateway, pipeline_id))
    processes = start_extractors(suite, pipeline_id, extractors, args.concurrency) if extractors else []
    try:
        options = ["--remote-workers"] if extractors else ["--workers", str(args.workers)]
        started = time.perf_counter()
        added = suite.hevlayer(
            "add",
            "-p",
            pipeline_id,
            "--no-wait",
            "--artifact-cache-mb",
            "0",
            "--plain",
            *options,
            str(corpus),
        )
        wall = time.perf_counter() - started
    finally:
        stop(processes)
    if added.returncode != 0:
        raise SystemExit(f"hevlayer add ({pipeline_id}) failed: {added.stdout[-3000:]}{added.stderr[-3000:]}")
    counts = asyncio.run(stage_counts(suite.gateway, pipeline_id))
    staged = counts.get("pending", 0) + counts.get("indexed", 0)
    if staged + counts.get("failed", 0) != files or counts.get("extract") or counts.get("extracting"):
        raise SystemExit(f"{pipeline_id}: expected {files} files staged or failed, stages {counts}")
    took = TOOK.search(added.stdout)
    if took is None:
        raise SystemExit(f"hevlayer add ({pipeline_id}) printed no 'took N s' line: {added.stdout[-3000:]}")
    seconds = max(float(took.group(1)), 0.05)
    label = f"{extractors} extractor(s)" if extractors else "in-process"
    print(
        f"  {label:<16} {seconds:6.1f} s ({wall:5.1f} s wall)  {files / seconds:6.1f} files/s"
        f"  stages {counts}",
        flush=True,
    )
    return seconds, wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--extractors", type=int, nargs="+", default=[1, 2, 4], help="extractor processes")
    parser.add_argument("--workers", type=int, default=4, help="add's in-process extract loops (--workers)")
    parser.add_argument("--concurrency", type=int, default=4, help="EXTRACTOR_CONCURRENCY of each extractor")
    parser.add_argument("--rounds", type=int, default=1, help="times every variant runs, in turn")
    parser.add_argument("--keep", action="store_true", help="leave the data directory (and stop the suite)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hevlayer-bench-extract-"))
    data_dir = work / "data"
    corpus, files, tokens = make_run_corpus(work / "corpus")
    print(f"corpus: {files} files ({tokens} tokens) in {corpus}")
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    suite = bring_up(data_dir)
    print(f"suite: {data_dir} (no embedder), gateway {suite.gateway}", flush=True)
    results = {0: Result("in-process")} | {n: Result(f"{n} extractor(s)") for n in args.extractors}
    try:
        asyncio.run(check_ours(suite.gateway))
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", flush=True)
            for extractors, result in results.items():
                seconds, wall = run_variant(suite, corpus, files, extractors, args)
                result.seconds.append(seconds)
                result.wall.append(wall)
    finally:
        subprocess.run(
            [str(HEVLAYER), "--data-dir", str(data_dir), "down"],
            env=suite.env,
            capture_output=True,
            timeout=300,
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    base = results[0].files_per_second(files)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'variant':<18} {'median s':>9} {'files/s':>8} {'vs in-process':>14} {'median wall s':>14}")
    for result in results.values():
        rate = result.files_per_second(files)
        print(
            f"{result.variant:<18} {statistics.median(result.seconds):9.1f} {rate:8.1f} {rate / base:13.2f}x"
            f" {statistics.median(result.wall):14.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
