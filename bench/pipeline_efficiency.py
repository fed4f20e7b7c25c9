"""Pipeline efficiency: end-to-end chunks/s (stage → indexed) ÷ raw Triton chunks/s.

Every service is a real process: PostgreSQL, SeaweedFS S3, the claimer, the
gateway (Milvus Lite), a real ``tritonserver`` (the nvidia-pytriton binary,
CPU, started with :class:`hevlayer.triton.local.LocalTriton`) and one
embedder whose worker loop claims, reads, embeds and writes. The workload is
the Python standard library source cut into 100 to 250 token chunks (the
realistic workload of ``bench/triton_serving.py``), grouped into documents
of ``--chunks-per-document`` consecutive chunks.

In each round, on the same Triton server and the same chunks:

* **raw Triton**: the chunks embedded with ``tritonclient.grpc.aio`` directly,
  ``--batch`` texts per request, ``--concurrency`` requests in flight
  (``RawTriton`` of ``bench/triton_serving.py``);
* **pipeline**: the documents staged into a fresh pipeline through the
  gateway (StageDocuments), timed until every document is ``indexed``. The
  embedder flushes ``--batch`` chunks at a time with ``--concurrency``
  flushes in flight (EMBEDDER_WORKER_BATCH_SIZE, EMBEDDER_MAX_IN_FLIGHT);
* the serving overhead: in-process onnxruntime at the same batch size
  (spinning off and on; ``run_in_process`` of ``bench/triton_serving.py``) and
  raw Triton, on realistic and short chunks.

Prints both figures and the ratio (goal ≥ 0.90), where the rest of the time
goes (start: staging until the first flush; embedding busy; gaps with no
flush in flight; tail: last vector until the last document is indexed; CPU
seconds of every component, from /proc; the worker's per-stage timings from
its /metrics), and the serving overhead ratio raw Triton ÷ in-process (goal
≥ 0.8). On a shared machine, load from outside the suite moves both rates:
each round runs raw and pipeline back to back (order alternating) and the
median of the rounds' ratios is the figure; chunks per Triton CPU second
(pipeline ÷ raw) is printed as a cross-check that such load does not move.

    .venv/bin/python bench/pipeline_efficiency.py            # as recorded in docs/benchmarks.md
    .venv/bin/python bench/pipeline_efficiency.py --quick    # a smaller run

``--triton-url HOST:PORT`` runs the same rounds against a Triton server that
is already running (the ``deploy/triton`` ensemble on a GPU:
``bench/gpu_check.sh``) instead of starting the CPU one; the serving-overhead
rounds (in-process onnxruntime on the CPU) and the per-Triton-CPU-second
cross-check are left out then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

import grpc
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families
from support.staging import stage_documents
from triton_serving import RawTriton, make_workloads, run_in_process

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.auth import generate_internal_token
from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3, ServiceProcess
from hevlayer.devstack.ports import free_port
from hevlayer.triton.local import LocalModel, LocalTriton
from hevlayer.triton.onnx_model import OnnxEmbedder, RuntimeOptions, minilm_files

INTERNAL_TOKEN = generate_internal_token()
"""The shared secret of the claimer this bench starts and the gateway in front of it."""

STAGES = ("read", "embed", "write", "transition", "heartbeat")


# -- the suite: every service a real process ------------------------------------------------------


@dataclass(frozen=True)
class ExternalTriton:
    """A Triton server this benchmark did not start (``--triton-url``)."""

    url: str
    pid: int | None = None


@dataclass
class Suite:
    """PostgreSQL, S3, claimer, gateway and Triton; embedders started with :meth:`start_embedder`."""

    triton: LocalTriton | ExternalTriton
    gateway_address: str
    tmp: Path
    common_env: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)
    roots: dict[int, str] = field(default_factory=dict)
    """pid -> component, for :func:`cpu_seconds` (a process counts for its nearest listed ancestor)."""

    def start(self, command: str, env: dict[str, str]) -> tuple[ServiceProcess, str]:
        """Start a service process; wait until it serves; return it with its HTTP address."""
        grpc_address = f"127.0.0.1:{free_port()}"
        http_address = f"127.0.0.1:{free_port()}"
        process = ServiceProcess(
            command,
            name=command,
            env={
                **self.common_env,
                # The plaintext path: the gateway's shared secret for the claimer, no API tokens
                # (the secured path is measured beside it; docs/security.md).
                "CLAIMER_INTERNAL_TOKEN": INTERNAL_TOKEN,
                "GATEWAY_AUTH": "off",
                "HEVLAYER_GRPC_ADDRESS": grpc_address,
                "HEVLAYER_HTTP_ADDRESS": http_address,
                **env,
            },
            log_path=self.tmp / f"{command}-{len(self.processes)}.log",
            grpc_address=grpc_address,
        ).start()
        self.processes.append(process)
        if process.pid is not None:
            self.roots[process.pid] = command.removeprefix("hevlayer-")
        process.wait_ready(timeout=120)
        return process, http_address

    def start_embedder(
        self, pipelines: Sequence[str], env: dict[str, str] | None = None
    ) -> tuple[ServiceProcess, str]:
        """An embedder whose worker works ``pipelines``; with its HTTP (metrics) address."""
        return self.start(
            "hevlayer-embedder",
            {
                "EMBEDDER_TRITON_URL": self.triton.url,
                "EMBEDDER_GATEWAY_ADDRESS": self.gateway_address,
                "EMBEDDER_WORKER_PIPELINES": ",".join(pipelines),
                **(env or {}),
            },
        )


@contextmanager
def running_suite(model: LocalModel, *, log_level: str = "warning", triton_url: str = "") -> Iterator[Suite]:
    """Start everything but the embedder in a temporary directory; stop it all at exit.

    ``triton_url``: use that running Triton server instead of starting the CPU one."""
    with (
        tempfile.TemporaryDirectory(prefix="hevlayer-bench-") as tmp_text,
        PostgresServer(settings=TEST_SETTINGS) as postgres,
        SeaweedS3() as s3,
        contextlib.ExitStack() as stack,
    ):
        triton: LocalTriton | ExternalTriton = (
            ExternalTriton(triton_url)
            if triton_url
            else stack.enter_context(LocalTriton([model], workdir=Path(tmp_text) / "triton"))
        )
        tmp = Path(tmp_text)
        database_url = postgres.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(bucket)
        s3_env = s3.client_env(bucket)
        suite = Suite(triton, "", tmp, {"HEVLAYER_LOG_LEVEL": log_level, "HEVLAYER_LOG_FORMAT": "text"})
        suite.roots[os.getpid()] = "bench"
        suite.roots[int((postgres.data_dir / "postmaster.pid").read_text().split()[0])] = "postgres"
        if s3.pid is not None:
            suite.roots[s3.pid] = "s3"
        if triton.pid is not None:
            suite.roots[triton.pid] = "triton"
        try:
            claimer, _ = suite.start("hevlayer-claimer", {"DATABASE_URL": database_url, **s3_env})
            gateway, _ = suite.start(
                "hevlayer-gateway",
                {
                    "CLAIMER_ADDRESS": claimer.env["HEVLAYER_GRPC_ADDRESS"],
                    "GATEWAY_CACHE_DIR": str(tmp / "cache"),
                    "GATEWAY_MILVUS_LITE_PATH": str(tmp / "vectors.db"),
                    **s3_env,
                },
            )
            suite.gateway_address = gateway.env["HEVLAYER_GRPC_ADDRESS"]
            yield suite
        finally:
            for process in reversed(suite.processes):
                process.stop(grace=20)


def cpu_seconds(roots: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the suite's processes, summed by component
    (a process counts for its nearest ancestor in ``roots``), and by the rest of the machine
    ("other": its busy time from /proc/stat minus the suite's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    totals: dict[str, float] = {}
    for pid, seconds in used.items():
        owner = pid
        while owner not in roots and owner > 1:
            owner = parents.get(owner, 0)
        if owner in roots:
            totals[roots[owner]] = totals.get(roots[owner], 0.0) + seconds
    # Everything else from the machine's busy time (processes that exit keep counting there).
    busy = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    machine = (sum(busy[:3]) + sum(busy[5:8])) / ticks  # user nice system (idle iowait) irq softirq steal
    totals["other"] = machine - sum(totals.values())
    return totals


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds per component during a run of ``wall`` seconds."""

    used: dict[str, float]
    wall: float

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float], wall: float) -> CpuUse:
        return cls({k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}, wall)

    @property
    def triton(self) -> float:
        return self.used.get("triton", 0.0)

    @property
    def other(self) -> float:
        """CPU seconds of processes outside the suite (other users of the machine)."""
        return self.used.get("other", 0.0)

    def __str__(self) -> str:
        return cpu_line(self.used, self.wall)


def cpu_line(used: dict[str, float], wall: float) -> str:
    """CPU seconds per component."""
    order = ["triton", "embedder", "gateway", "claimer", "postgres", "s3", "bench", "other"]
    total = sum(used.values())
    parts = [f"{k} {used[k]:.1f}" for k in order if used.get(k, 0.0) >= 0.05]
    capacity = wall * (os.cpu_count() or 1)
    return f"{', '.join(parts)} (CPU s; {total:.1f} of {capacity:.1f} available in {wall:.1f} s)"


def create_pipelines(gateway_address: str, pipelines: Sequence[str]) -> None:
    """Create the pipelines (a blocking channel: this runs inside the benches' event loops)."""
    with grpc.insecure_channel(gateway_address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        for pipeline_id in pipelines:
            stub.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id)), timeout=30
            )


def scrape(http_address: str) -> dict[str, float]:
    """Every sample of a service's /metrics, keyed ``name{label=value,...}``."""
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def indexed_count(channel: aio.Channel, pipeline_id: str) -> int:
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    response = await stub.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id))
    counts = dict(response.status.counts)
    if counts.get("failed"):
        raise RuntimeError(f"{counts['failed']} documents failed in {pipeline_id}")
    return int(counts.get("indexed", 0))


def as_documents(chunks: Sequence[str], per_document: int, prefix: str) -> list[document_pb2.Document]:
    """Consecutive chunks grouped into documents (a source file is several chunks)."""
    documents = []
    for number, start in enumerate(range(0, len(chunks), per_document)):
        document = document_pb2.Document(id=f"{prefix}-{number:05d}")
        for offset, text in enumerate(chunks[start : start + per_document]):
            chunk = document.chunks.add(id=f"{start + offset}", text=text)
            chunk.metadata.update({"position": offset, "source": "python-stdlib"})
        documents.append(document)
    return documents


# -- one pipeline run -----------------------------------------------------------------------------


@dataclass
class PipelineRun:
    """Timings of one stage → indexed run (seconds from the first StageDocuments message)."""

    chunks: int
    wall: float
    staged: float
    first_flush: float
    all_embedded: float
    metrics: dict[str, float]
    cpu: CpuUse | None = None

    @property
    def rate(self) -> float:
        return self.chunks / self.wall

    @property
    def busy(self) -> float:
        return self.metrics["hevlayer_embedder_worker_embed_busy_seconds_total{}"]

    def breakdown(self) -> str:
        start = self.first_flush
        tail = self.wall - self.all_embedded
        gaps = max(0.0, self.wall - start - tail - self.busy)
        return (
            f"wall {self.wall:.1f} s = start {start:.2f} s (staging → first flush) + embedding busy "
            f"{self.busy:.1f} s + gaps without a flush in flight {gaps:.2f} s + tail {tail:.2f} s "
            f"(last vector → last document indexed); staging itself took {self.staged:.2f} s"
        )

    def stages(self) -> str:
        parts = []
        for stage in STAGES:
            total = self.metrics.get(f"hevlayer_embedder_worker_stage_seconds_sum{{stage={stage}}}", 0.0)
            count = self.metrics.get(f"hevlayer_embedder_worker_stage_seconds_count{{stage={stage}}}", 0.0)
            if count:
                parts.append(
                    f"{stage} {total:.2f} s / {int(count)} calls ({total / count * 1000:.0f} ms each)"
                )
        return "; ".join(parts)

    def flushes(self) -> str:
        full = self.metrics.get("hevlayer_embedder_worker_flushes_total{trigger=full}", 0.0)
        idle = self.metrics.get("hevlayer_embedder_worker_flushes_total{trigger=idle}", 0.0)
        chunks = self.metrics.get("hevlayer_embedder_worker_flush_chunks_sum{}", 0.0)
        wait = self.metrics.get("hevlayer_embedder_worker_slot_wait_seconds_total{}", 0.0)
        retries = sum(
            v for k, v in self.metrics.items() if k.startswith("hevlayer_embedder_worker_flush_retries")
        )
        return (
            f"{int(full)} full + {int(idle)} idle flushes, {chunks / max(1.0, full + idle):.1f} chunks each; "
            f"ready batches waited {wait:.1f} s for a flush slot (Triton saturated); {int(retries)} retries"
        )


async def run_pipeline(
    suite: Suite, embedder_http: str, pipeline_id: str, documents: Sequence[document_pb2.Document]
) -> PipelineRun:
    """Stage ``documents`` and time them until every one is indexed.

    The end is seen through WatchPipelineStatus (pushed, no polling); the
    embedder's metrics are read before and after, and every 50 ms only until
    its first flush, so that measuring costs the suite next to no CPU."""
    chunks = sum(len(d.chunks) for d in documents)
    before = scrape(embedder_http)
    flushes_before = sum(
        v for k, v in before.items() if k.startswith("hevlayer_embedder_worker_flushes_total")
    )
    cpu_before = cpu_seconds(suite.roots)
    async with open_channel(suite.gateway_address) as channel:
        watch = pipeline_pb2_grpc.PipelineServiceStub(channel).WatchPipelineStatus(
            pipeline_pb2.WatchPipelineStatusRequest(pipeline_id=pipeline_id, min_interval_ms=20)
        )
        updates = aiter(watch)
        await anext(updates)  # the stream is open: the current status
        started = time.perf_counter()
        started_wall = time.time()
        staging = asyncio.create_task(stage_documents(channel, pipeline_id, documents, batch=16))
        staged: list[float] = []
        staging.add_done_callback(lambda _: staged.append(time.perf_counter() - started))

        async def first_flush() -> float:
            while True:
                samples = await asyncio.to_thread(scrape, embedder_http)
                flushes = sum(
                    v for k, v in samples.items() if k.startswith("hevlayer_embedder_worker_flushes_total")
                )
                if flushes > flushes_before:
                    return time.perf_counter() - started
                await asyncio.sleep(0.05)

        first = asyncio.create_task(first_flush())
        async for update in updates:
            counts = dict(update.status.counts)
            if counts.get("failed"):
                raise RuntimeError(f"{counts['failed']} documents failed in {pipeline_id}")
            if counts.get("indexed", 0) == len(documents):
                break
        wall = time.perf_counter() - started
        watch.cancel()
        await staging
        first_at = await first
    cpu = CpuUse.between(cpu_before, cpu_seconds(suite.roots), wall)
    after = scrape(embedder_http)
    metrics = {key: delta(after, before, key) for key in after}
    all_embedded = after["hevlayer_embedder_worker_last_embedded_timestamp_seconds{}"] - started_wall
    return PipelineRun(chunks, wall, staged[0], first_at, all_embedded, metrics, cpu)


# -- the benchmark ----------------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> None:
    files = minilm_files()
    runtimes = {
        "spin off": RuntimeOptions(intra_op_threads=0, allow_spinning=False),
        "spin on": RuntimeOptions(intra_op_threads=0, allow_spinning=True),
    }
    embedders = {label: OnnxEmbedder(files, runtime) for label, runtime in runtimes.items()}
    short, realistic = make_workloads(embedders["spin off"], args.chunks, args.short)
    pipelines = [f"bench-{round_}" for round_ in range(args.rounds)]
    model = LocalModel(files=files, max_batch_size=args.batch, queue_delay_us=2000)
    served = (
        f"on the Triton at {args.triton_url} (model {args.model_name!r})"
        if args.triton_url
        else f"on tritonserver 2.51 (Python backend, CPU), max_batch_size {args.batch}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; model all-MiniLM-L6-v2 "
        f"{served}\n"
        f"realistic: {len(realistic.chunks)} chunks of Python stdlib source, "
        f"{realistic.tokens / len(realistic.chunks):.0f} tokens/chunk, {args.chunks_per_document} chunks per "
        f"document; short: {len(short.chunks)} chunks, {short.tokens / len(short.chunks):.0f} tokens/chunk\n"
        f"batch {args.batch}, {args.concurrency} requests (raw) / flushes (worker) in flight; "
        f"{args.rounds} efficiency rounds (raw and pipeline back to back, order alternating), "
        f"{args.serving_rounds} serving rounds"
    )
    env = {
        "EMBEDDER_WORKER_BATCH_SIZE": str(args.batch),
        "EMBEDDER_MAX_IN_FLIGHT": str(args.concurrency),
    }
    rates: dict[str, list[float]] = {}
    runs: list[PipelineRun] = []
    raw_cpu: list[CpuUse] = []
    if args.triton_url:
        env["EMBEDDER_MODEL_NAME"] = args.model_name
    with running_suite(model, triton_url=args.triton_url) as suite:
        create_pipelines(suite.gateway_address, pipelines)
        _, embedder_http = suite.start_embedder(pipelines, env)
        raw = RawTriton(suite.triton.url, args.model_name if args.triton_url else model.name)

        async def raw_run() -> float:
            cpu_before = cpu_seconds(suite.roots)
            started = time.perf_counter()
            rate = await raw.run(realistic, args.batch, args.concurrency)
            raw_cpu.append(
                CpuUse.between(cpu_before, cpu_seconds(suite.roots), time.perf_counter() - started)
            )
            return rate

        try:
            await raw.infer(realistic.chunks[: args.batch])  # warm up
            await raw.infer(short.chunks[: args.batch])
            for embedder in embedders.values():
                embedder.embed(realistic.chunks[: args.batch])
            # Efficiency: raw Triton and the pipeline back to back on the same chunks, the order
            # alternating, so that load from outside the suite hits both alike.
            for round_, pipeline_id in enumerate(pipelines):
                documents = as_documents(realistic.chunks, args.chunks_per_document, f"r{round_}")
                if round_ % 2:
                    run = await run_pipeline(suite, embedder_http, pipeline_id, documents)
                    raw_rate = await raw_run()
                else:
                    raw_rate = await raw_run()
                    run = await run_pipeline(suite, embedder_http, pipeline_id, documents)
                runs.append(run)
                assert run.cpu is not None
                # An external Triton's CPU is not counted (it is not a child of this process).
                cpu_ratio = raw_cpu[-1].triton / run.cpu.triton if run.cpu.triton else float("nan")
                rates.setdefault("raw", []).append(raw_rate)
                rates.setdefault("pipeline", []).append(run.rate)
                rates.setdefault("ratio", []).append(run.rate / raw_rate)
                rates.setdefault("cpu ratio", []).append(cpu_ratio)
                print(
                    f"round {round_ + 1}: raw Triton {raw_rate:.1f} ch/s, pipeline {run.rate:.1f} ch/s, "
                    f"ratio {run.rate / raw_rate:.3f}; per Triton CPU second {cpu_ratio:.3f}; CPU s used "
                    f"outside the suite: {raw_cpu[-1].other:.1f} (raw), {run.cpu.other:.1f} (pipeline)"
                )
            # Serving overhead: raw Triton vs in-process onnxruntime, same batch size.
            workloads = [realistic] if args.skip_short else [realistic, short]
            for _ in range(args.serving_rounds):
                for work in workloads:
                    rates.setdefault(f"{work.name} raw", []).append(
                        await raw.run(work, args.batch, args.concurrency)
                    )
                    for label, embedder in embedders.items():
                        rates.setdefault(f"{work.name} {label}", []).append(
                            run_in_process(embedder, work, args.batch)
                        )
        finally:
            await raw.client.close()

    med = {key: statistics.median(values) for key, values in rates.items()}
    print()
    if args.serving_rounds:
        print(
            f"{'workload':<10} {'in-process spin off':>20} {'spin on':>10} {'raw Triton':>11} {'overhead':>9}"
        )
        for work in (realistic, short):
            if f"{work.name} raw" not in med:
                continue
            off, on, triton = (med[f"{work.name} {k}"] for k in ("spin off", "spin on", "raw"))
            print(
                f"{work.name:<10} {off:>15.1f} ch/s {on:>10.1f} {triton:>11.1f} {triton / max(off, on):>9.2f}"
            )
        print(
            "serving overhead (ch/s, medians): raw Triton ÷ the faster in-process setting, "
            "goal ≥ 0.8 on realistic chunks"
        )
    ratio = med["ratio"]
    print(
        f"\npipeline efficiency: pipeline {med['pipeline']:.1f} ch/s, raw Triton {med['raw']:.1f} ch/s "
        f"(medians); median of the rounds' ratios {ratio:.3f}, ratio of the medians "
        f"{med['pipeline'] / med['raw']:.3f} (goal ≥ 0.90: {'met' if ratio >= 0.9 else 'NOT met'})"
    )
    print(
        f"chunks per Triton CPU second, pipeline ÷ raw (insensitive to load from outside the suite): "
        f"median {med['cpu ratio']:.3f}"
    )
    median = sorted(range(len(runs)), key=lambda i: rates["ratio"][i])[len(runs) // 2]
    median_run = runs[median]
    print(f"where the time goes (the median round, round {median + 1}):")
    print(f"  {median_run.breakdown()}")
    print(f"  CPU during the pipeline run: {median_run.cpu}")
    print(f"  CPU during the raw Triton run: {raw_cpu[median]}")
    print(f"  worker stages (summed over concurrent calls): {median_run.stages()}")
    print(f"  {median_run.flushes()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="chunks per Triton request and per worker flush"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="requests / flushes in flight")
    parser.add_argument("--chunks", type=int, default=128, help="realistic chunks (100-250 tokens)")
    parser.add_argument("--chunks-per-document", type=int, default=8)
    parser.add_argument("--short", type=int, default=1024, help="short chunks (serving overhead only)")
    parser.add_argument("--rounds", type=int, default=8, help="efficiency rounds")
    parser.add_argument("--serving-rounds", type=int, default=2, help="serving overhead rounds")
    parser.add_argument("--skip-short", action="store_true", help="no short-chunk serving figures")
    parser.add_argument("--quick", action="store_true", help="64 realistic chunks, 3 rounds, 1 serving round")
    parser.add_argument(
        "--triton-url", default="", help="a running Triton (host:port) instead of the CPU one"
    )
    parser.add_argument("--model-name", default="minilm", help="the model to call with --triton-url")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.short, args.rounds, args.serving_rounds = 64, 512, 3, 1
    if args.triton_url:
        args.serving_rounds = 0
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
