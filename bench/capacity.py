"""Inputs of the capacity model (docs/scaling.md): CPU per document of every process, and what replicas cost.

Two parts, each printing its figures; ``--part all`` (the default) runs both.

``--part suite``: the whole local suite on the ``make run`` corpus, the way ``make run`` does it
(``hevlayer up --detach``, then ``hevlayer add``), sampling every process's CPU time (user +
system, from ``/proc``) every ``--interval`` seconds, grouped by service (processes labelled as
bench/memory.py labels them; PostgreSQL counts the postmaster, its backends and the backends
that exited). Prints, per service, CPU seconds over the run, CPU milliseconds per document and
per chunk, and the documents per second one core of that service would serve if it did nothing
else (1000 / ms per document) — the model server (Triton on CPU here) included, with the caveat
that on a GPU its CPU is not the limit.

``--part replicas``: the model held out, so that what remains is the suite's own work. On one
PostgreSQL and one SeaweedFS, first 1 claimer + 1 gateway, then 2 claimers + 2 gateways (gateway
*i* forwards to claimer *i*; the sink is the local fake of Turbopuffer's API, served from this
process, because Milvus Lite has a single owner and no Turbopuffer server runs here). Each round
stages ``--documents`` documents of 10 chunks of ~500 bytes through the gateways (split evenly),
then ``--workers`` workers claim (StreamLeases, columns), read the chunks (ReadChunks) and write
random 384-dimension vectors (WriteVectors, which moves each document to ``indexed``), spread
over the gateways. Per phase (staging, processing) and per process: CPU milliseconds per
document, and documents per second. The **ratio per core** compares the two layouts' CPU per
document (2 replicas / 1; 1.00 = a replica costs nothing extra, so the rate scales with cores
until PostgreSQL saturates) and their documents per second per CPU-second of the whole suite.
The fake sink's CPU is printed apart and left out of the totals; the processing phase's wall rate
is bound by it (a Python server decoding every vector from JSON), not by the suite, so read the
CPU figures, not that rate. The workers' time per step (claim, read, write) is printed per round.

    .venv/bin/python bench/capacity.py                          # both parts, as in docs/benchmarks.md
    .venv/bin/python bench/capacity.py --part replicas --documents 2000 --rounds 2
    .venv/bin/python bench/capacity.py --part suite --files 200 --file-tokens 300

CPU time, unlike wall time, hardly depends on what else runs on the machine, which is why the
model is built on it; wall rates are printed beside it with the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

from claims import postgres_cpu_seconds
from memory import HEVLAYER, Sampler, chosen_corpus
from staging import make_documents
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.processes import start_claimer, start_gateway

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client import Client
from hevlayer.client.options import ClientOptions
from hevlayer.client.types import Claim, DocumentVectors, Lease
from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.tokens import read_admin_token

TICK = os.sysconf("SC_CLK_TCK")
DIMENSION = 384


def process_ticks(pid: int) -> int:
    """User + system clock ticks of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# -- part 1: the whole suite -----------------------------------------------------------------------


@dataclass
class CpuSampler:
    """Per service label, the CPU ticks its processes used since they were first seen."""

    labels: Sampler
    first: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    label_of: dict[int, str] = field(default_factory=dict)

    def sample(self) -> None:
        for pid, label in self.labels.labelled().items():
            if label == "postgres (all processes)":
                continue  # counted from the postmaster, exited backends included
            ticks = process_ticks(pid)
            if not ticks and pid not in self.last:
                continue
            self.first.setdefault(pid, ticks)
            self.label_of[pid] = label
            self.last[pid] = max(self.last.get(pid, 0), ticks)

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, label in self.label_of.items():
            group = label.split(":")[0]
            totals[group] = totals.get(group, 0.0) + (self.last[pid] - self.first[pid]) / TICK
        return totals


def postgres_dir(data_dir: Path) -> Path | None:
    for path in data_dir.rglob("postmaster.pid"):
        return path.parent
    return None


async def indexed_counts(gateway: str, pipeline_id: str, token: str | None) -> tuple[int, int]:
    """(documents indexed, their chunks) of a pipeline (``token``: the suite's admin token)."""
    documents = chunks = 0
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with Client.connect(gateway, ClientOptions(metadata=metadata)) as client:
        async for state in client.staging.list_documents(pipeline_id, stage="indexed"):
            documents += 1
            chunks += state.chunk_count
    return documents, chunks


def run_suite(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="hevlayer-capacity-", dir="/tmp"))
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    corpus, what = chosen_corpus(data_dir / "corpus", args.files, args.file_tokens)
    print(f"\n== part suite: {what}; data dir {data_dir}", flush=True)
    up = subprocess.run([*HEVLAYER, "--data-dir", str(data_dir), "up", "--detach"], env=env, check=False)
    if up.returncode != 0:
        print(f"hevlayer up failed ({up.returncode}); logs in {data_dir}", file=sys.stderr)
        return 1
    try:
        state = json.loads((data_dir / "hevlayer-up.json").read_text())
        pg_dir = postgres_dir(data_dir)
        sampler = CpuSampler(Sampler(data_dir))
        sampler.sample()
        pg_before = postgres_cpu_seconds(pg_dir) if pg_dir else 0.0
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(args.interval):
                try:
                    sampler.sample()
                except (OSError, ValueError, KeyError):
                    continue  # the state file being rewritten

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        load_start = load()
        started = time.monotonic()
        pipeline_id = "capacity"
        add = subprocess.Popen(
            [*HEVLAYER, "--data-dir", str(data_dir), "add", "--plain", "-p", pipeline_id, str(corpus)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        sampler.labels.client_pid = add.pid
        code = add.wait()
        wall = time.monotonic() - started
        stop.set()
        thread.join()
        sampler.sample()
        pg_seconds = (postgres_cpu_seconds(pg_dir) if pg_dir else 0.0) - pg_before
        if code != 0:
            print(f"hevlayer add exited with {code}; logs in {data_dir}", file=sys.stderr)
            return code
        documents, chunks = asyncio.run(
            indexed_counts(state["gateway"], pipeline_id, read_admin_token(data_dir))
        )
        seconds = sampler.seconds()
        seconds["postgres"] = pg_seconds
        print(
            f"hevlayer add: {documents} documents, {chunks} chunks indexed in {wall:.1f} s "
            f"({documents / wall:.2f} documents/s); load average at start {load_start}, at end {load()}"
        )
        rows = []
        total = sum(seconds.values())
        for label, cpu in sorted(seconds.items(), key=lambda item: -item[1]):
            per_doc = 1000 * cpu / max(documents, 1)
            per_chunk = 1000 * cpu / max(chunks, 1)
            rows.append(
                [
                    label,
                    f"{cpu:.1f}",
                    f"{100 * cpu / total:.0f} %",
                    f"{per_doc:.1f}",
                    f"{per_chunk:.2f}",
                    f"{1000 / per_doc:,.0f}" if per_doc else "-",
                ]
            )
        table(["process", "CPU s", "share", "CPU ms/doc", "CPU ms/chunk", "docs/s per core"], rows)
        print(f"all processes: {total:.1f} CPU s, {1000 * total / max(documents, 1):.1f} CPU ms per document")
        return 0
    finally:
        subprocess.run([*HEVLAYER, "--data-dir", str(data_dir), "down"], env=env, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


# -- part 2: replicas without the model ------------------------------------------------------------


@dataclass
class Layout:
    """A running set of claimers and gateways (gateway i in front of claimer i)."""

    claimers: list[ServiceProcess]
    gateways: list[ServiceProcess]
    gateway_addresses: list[str]
    sink_pid: int | None


def serve_sink(connection: Connection) -> None:
    """The Turbopuffer fake in a process of its own (so that it does not share this process's
    interpreter with the workers); answers its base URL and API key, serves until told to stop."""
    sink = FakeTurbopufferThread()
    connection.send((sink.start(), sink.fake.api_key))
    connection.recv()
    sink.stop()


@dataclass
class Sink:
    """The running fake: its base URL and API key."""

    base_url: str
    api_key: str
    pid: int | None


@contextmanager
def running_sink() -> Iterator[Sink]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_sink, args=(theirs,), daemon=True)
    process.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the Turbopuffer fake did not start within 60 s")
        base_url, api_key = ours.recv()
        yield Sink(base_url, api_key, process.pid)
    finally:
        ours.send("stop")
        process.join(timeout=30)


@contextmanager
def running_layout(
    replicas: int, postgres: PostgresServer, s3: SeaweedS3, sink: Sink, tmp: Path
) -> Iterator[Layout]:
    database = f"capacity_{uuid.uuid4().hex[:8]}"
    dsn = postgres.create_database(database)
    bucket = f"capacity-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    traces = tmp / f"traces-{replicas}.jsonl"
    claimers: list[ServiceProcess] = []
    gateways: list[ServiceProcess] = []
    addresses: list[str] = []
    try:
        claimer_addresses = []
        for _ in range(replicas):
            process, address, _http = start_claimer(
                dsn,
                tmp,
                traces,
                CLAIMER_AUTH="off",
                PIPELINE_DEFAULT_SINK="turbopuffer",
                HEVLAYER_TRACES_EXPORTER="none",
                **s3_env,
            )
            claimers.append(process)
            claimer_addresses.append(address)
        for process in claimers:
            process.wait_ready(timeout=120)
        for claimer_address in claimer_addresses:
            process, address, _http = start_gateway(
                claimer_address,
                tmp,
                traces,
                GATEWAY_DEFAULT_SINK="turbopuffer",
                GATEWAY_TURBOPUFFER_API_KEY=sink.api_key,
                GATEWAY_TURBOPUFFER_BASE_URL=sink.base_url,
                HEVLAYER_TRACES_EXPORTER="none",
                **s3_env,
            )
            gateways.append(process)
            addresses.append(address)
        for process in gateways:
            process.wait_ready(timeout=120)
        yield Layout(claimers, gateways, addresses, sink.pid)
    finally:
        for process in [*gateways, *claimers]:
            process.stop(grace=10)
        postgres.drop_database(database)


VECTOR_POOL = 64
"""Random vectors drawn once and reused, so that the workers (in this process) stay cheap."""


def vector_pool(rng: random.Random) -> list[list[float]]:
    return [[rng.uniform(-1, 1) for _ in range(DIMENSION)] for _ in range(VECTOR_POOL)]


def random_vectors(
    chunks: Sequence[document_pb2.Chunk], pool: list[list[float]]
) -> list[document_pb2.Vector]:
    return [document_pb2.Vector(id=c.id, values=pool[hash(c.id) % len(pool)]) for c in chunks]


async def stage_through(
    clients: Sequence[Client], pipeline_id: str, documents: list[document_pb2.Document]
) -> None:
    """Stage ``documents`` split evenly over the gateways, one stream each, at the same time."""

    async def one(client: Client, part: list[document_pb2.Document]) -> None:
        results = await client.staging.stage(pipeline_id, part)
        rejected = [r for r in results if r.HasField("error")]
        if rejected:
            raise RuntimeError(f"staging rejected {len(rejected)} documents: {rejected[0].error.message}")

    await asyncio.gather(*(one(c, documents[i :: len(clients)]) for i, c in enumerate(clients)))


async def process_through(
    clients: Sequence[Client], pipeline_id: str, total: int, workers: int, batch: int, rng: random.Random
) -> None:
    """``workers`` workers, spread over the gateways, claim, read and write until ``total`` are indexed."""
    done = 0
    finished = asyncio.Event()
    pool = vector_pool(rng)
    spent = {"claim": 0.0, "read": 0.0, "write": 0.0}

    async def worker(index: int) -> None:
        nonlocal done
        client = clients[index % len(clients)]
        name = f"capacity-worker-{index}"
        claim = Claim(pipeline_id, name, "pending", "embedding", 120)
        credits: asyncio.Queue[int | None] = asyncio.Queue()

        async def credit_stream() -> AsyncIterator[int]:
            while (value := await credits.get()) is not None:
                yield value

        stream = client.leases.stream_leases(claim, credit_stream(), batch)
        asked = time.monotonic()
        try:
            async for leases in stream:
                spent["claim"] += time.monotonic() - asked
                await work(client, name, leases)
                done += len(leases)
                if done >= total:
                    finished.set()
                    break
                asked = time.monotonic()
                await credits.put(len(leases))
        finally:
            await credits.put(None)
            await stream.aclose()

    async def work(client: Client, name: str, leases: list[Lease]) -> None:
        chunks: dict[str, list[document_pb2.Chunk]] = {}
        started = time.monotonic()
        async for response in client.staging.read_chunks(
            pipeline_id, worker_id=name, stage="embedding", leases=leases
        ):
            if response.HasField("error"):
                raise RuntimeError(f"ReadChunks: {response.document_id}: {response.error.message}")
            chunks.setdefault(response.document_id, []).extend(response.chunks)
        documents = [
            DocumentVectors(lease, random_vectors(chunks.get(lease.document_id, []), pool))
            for lease in leases
        ]
        written = time.monotonic()
        spent["read"] += written - started
        results = await client.index.write_vectors(
            pipeline_id, documents, worker_id=name, from_stage="embedding"
        )
        spent["write"] += time.monotonic() - written
        for result in results:
            if result.error:
                raise RuntimeError(f"WriteVectors: {result.document_id}: {result.error}")

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    waiter = asyncio.create_task(finished.wait())
    remaining: set[asyncio.Future[Any]] = {*tasks, waiter}
    try:
        while not finished.is_set():
            completed, remaining = await asyncio.wait(remaining, return_when=asyncio.FIRST_COMPLETED)
            for task in completed:
                if task is not waiter and (error := task.exception()) is not None:
                    raise error
            if remaining == {waiter}:
                raise RuntimeError(f"the workers stopped after {done} of {total} documents")
    finally:
        for task in [*tasks, waiter]:
            task.cancel()
        await asyncio.gather(*tasks, waiter, return_exceptions=True)
    print(
        "  workers' time (summed over the workers): "
        + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in spent.items()),
        flush=True,
    )


@dataclass
class Phase:
    """CPU seconds per process and wall seconds of one phase."""

    wall: float
    cpu: dict[str, float]


def layout_cpu(layout: Layout, postgres: PostgresServer) -> dict[str, float]:
    cpu = {"postgres": postgres_cpu_seconds(postgres.data_dir)}
    cpu["gateways"] = sum(process_ticks(p.pid) for p in layout.gateways if p.pid) / TICK
    cpu["claimers"] = sum(process_ticks(p.pid) for p in layout.claimers if p.pid) / TICK
    cpu["sink (the fake; not in 'all')"] = process_ticks(layout.sink_pid) / TICK if layout.sink_pid else 0.0
    return cpu


async def settle(layout: Layout, postgres: PostgresServer, quiet: float = 0.05, limit: float = 20.0) -> None:
    """Wait until the servers use (almost) no CPU: background work of a phase counts in that phase."""
    deadline = time.monotonic() + limit
    before = layout_cpu(layout, postgres)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = layout_cpu(layout, postgres)
        if sum(now.values()) - sum(before.values()) < quiet:
            return
        before = now


IDLE_SECONDS = 3.0


async def idle_rates(layout: Layout, postgres: PostgresServer) -> dict[str, float]:
    """CPU seconds per second each process group uses doing nothing (health checks, timers)."""
    before = layout_cpu(layout, postgres)
    await asyncio.sleep(IDLE_SECONDS)
    after = layout_cpu(layout, postgres)
    return {k: max(0.0, (after[k] - before[k]) / IDLE_SECONDS) for k in after}


async def timed(
    layout: Layout, postgres: PostgresServer, idle: dict[str, float], action: Awaitable[None]
) -> Phase:
    """Run ``action``; its wall time, and the CPU the servers used for it until they were quiet
    again (less what they use when idle over the same time)."""
    before = layout_cpu(layout, postgres)
    started = time.monotonic()
    await action
    wall = time.monotonic() - started
    await settle(layout, postgres)
    elapsed = time.monotonic() - started
    after = layout_cpu(layout, postgres)
    return Phase(wall, {k: max(0.0, after[k] - before[k] - idle[k] * elapsed) for k in after})


async def one_round(
    layout: Layout, postgres: PostgresServer, documents: int, workers: int, batch: int, seed: int
) -> tuple[Phase, Phase]:
    pipeline_id = f"capacity-{uuid.uuid4().hex[:8]}"
    clients = [Client.connect(address) for address in layout.gateway_addresses]
    try:
        await clients[0].pipelines.create(
            pipeline_pb2.Pipeline(id=pipeline_id, dimension=DIMENSION, default_lease_seconds=120)
        )
        docs = make_documents(documents, seed=seed, prefix=pipeline_id)
        await settle(layout, postgres)
        idle = await idle_rates(layout, postgres)
        staging = await timed(layout, postgres, idle, stage_through(clients, pipeline_id, docs))
        processing = await timed(
            layout,
            postgres,
            idle,
            process_through(clients, pipeline_id, documents, workers, batch, random.Random(seed)),
        )
        indexed = 0
        async for _state in clients[0].staging.list_documents(pipeline_id, stage="indexed"):
            indexed += 1
        if indexed != documents:
            raise RuntimeError(f"{indexed} of {documents} documents indexed")
        return staging, processing
    finally:
        for client in clients:
            await client.close()


def run_replicas(args: argparse.Namespace) -> int:
    print(
        f"\n== part replicas: {args.documents} documents of 10 chunks per round, {args.workers} workers "
        f"(batches of {args.batch}), {args.rounds} rounds per layout",
        flush=True,
    )
    results: dict[int, list[tuple[Phase, Phase]]] = {1: [], 2: []}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hevlayer-capacity-")))
        postgres = stack.enter_context(PostgresServer(tmp / "pg", settings=TEST_SETTINGS))
        s3 = stack.enter_context(SeaweedS3(tmp / "s3"))
        sink = stack.enter_context(running_sink())
        load_start = load()
        for round_index in range(args.rounds):
            for replicas in (1, 2) if round_index % 2 == 0 else (2, 1):
                with running_layout(replicas, postgres, s3, sink, tmp) as layout:
                    phases = asyncio.run(
                        one_round(
                            layout,
                            postgres,
                            args.documents,
                            args.workers,
                            args.batch,
                            args.seed + round_index,
                        )
                    )
                results[replicas].append(phases)
                staging, processing = phases
                print(
                    f"round {round_index + 1}, {replicas} claimer(s) + {replicas} gateway(s): staging "
                    f"{args.documents / staging.wall:,.0f} docs/s, processing "
                    f"{args.documents / processing.wall:,.0f} docs/s; load {load()}",
                    flush=True,
                )
        print(f"load average at start {load_start}, at end {load()}; {os.cpu_count()} CPUs")

    processes = ("gateways", "claimers", "postgres")

    def per_doc(replicas: int, phase: int, key: str) -> float:
        return float(statistics.median(1000 * r[phase].cpu[key] / args.documents for r in results[replicas]))

    def all_per_doc(replicas: int, phase: int) -> float:
        return sum(per_doc(replicas, phase, key) for key in processes)

    def rate(replicas: int, phase: int) -> float:
        return float(statistics.median(args.documents / r[phase].wall for r in results[replicas]))

    phase_names = ((0, "staging"), (1, "claim+read+write"))
    rows = []
    for phase, name in phase_names:
        for key in (*processes, "sink (the fake; not in 'all')"):
            one, two = per_doc(1, phase, key), per_doc(2, phase, key)
            rows.append([f"{name}: {key}", f"{one:.3f}", f"{two:.3f}", f"{two / one:.2f}" if one else "-"])
        one, two = all_per_doc(1, phase), all_per_doc(2, phase)
        rows.append([f"{name}: all", f"{one:.3f}", f"{two:.3f}", f"{two / one:.2f}"])
    print("\nCPU ms per document (median of the rounds)")
    table(["phase: process", "1 + 1", "2 + 2", "ratio 2/1"], rows)
    print("\ndocuments per second (median of the rounds; wall time on a shared machine)")
    table(
        ["phase", "1 + 1", "2 + 2", "docs per CPU-s, 1 + 1", "docs per CPU-s, 2 + 2", "ratio per core 2/1"],
        [
            [
                name,
                f"{rate(1, phase):,.0f}",
                f"{rate(2, phase):,.0f}",
                f"{1000 / all_per_doc(1, phase):,.0f}",
                f"{1000 / all_per_doc(2, phase):,.0f}",
                f"{all_per_doc(1, phase) / all_per_doc(2, phase):.2f}",
            ]
            for phase, name in phase_names
        ],
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("suite", "replicas", "all"), default="all")
    parser.add_argument(
        "--files", type=int, default=0, help="suite: generated corpus of N files (0: make run's)"
    )
    parser.add_argument("--file-tokens", type=int, default=300, help="suite: tokens per generated file")
    parser.add_argument("--interval", type=float, default=0.5, help="suite: seconds between CPU samples")
    parser.add_argument("--documents", type=int, default=2000, help="replicas: documents per round")
    parser.add_argument("--workers", type=int, default=4, help="replicas: workers")
    parser.add_argument("--batch", type=int, default=50, help="replicas: leases per claim")
    parser.add_argument(
        "--rounds", type=int, default=2, help="replicas: rounds per layout (order alternating)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    code = 0
    if args.part in ("suite", "all"):
        code = run_suite(args)
    if args.part in ("replicas", "all") and code == 0:
        code = run_replicas(args)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
