"""Claim + transition throughput through the public gRPC API, against two
baselines on the same PostgreSQL in the same run.

1. **gRPC**: worker processes call ``LeaseService.ClaimDocuments`` (batches of
   ``--batch``) and ``TransitionDocuments`` (to ``indexed``) on a real gateway
   process, which forwards to a real claimer process, which runs the claim and
   transition statements on PostgreSQL.
2. **bare asyncpg**: the same number of worker processes run the claimer's
   own two statements (``CLAIM_SQL`` and ``TRANSITION_SQL``, the same
   parameters, the same schema and triggers) on asyncpg directly, without
   gRPC or the claimer in between: the limit on this machine.
3. **procrastinate** (PyPI): jobs deferred in bulk, then worker processes
   (``--workers``) with ``concurrency`` and LISTEN/NOTIFY run a no-op task;
   jobs/s. Skipped when procrastinate is not installed.

Prints docs/s, the ratios (goals: gRPC >= 0.8 x bare, >= 50 x procrastinate)
and the client-side claim latency p50/p99.

    .venv/bin/python bench/claims.py [--docs 100000] [--workers 4] [--batch 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from hevlayer.devstack import TEST_SETTINGS, PostgresServer, ServiceProcess
from hevlayer.devstack.ports import free_port

PROCRASTINATE_JOBS = 4000


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- setup -----------------------------------------------------------------------------


async def create_pipeline(address: str, pipeline_id: str, backend: str = "row") -> None:
    from grpc import aio

    from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
    from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc

    backends = {"row": ppb.QUEUE_BACKEND_ROW, "segment": ppb.QUEUE_BACKEND_SEGMENT}
    async with aio.insecure_channel(address) as channel:
        await pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
            ppb.CreatePipelineRequest(
                pipeline=ppb.Pipeline(
                    id=pipeline_id,
                    queue_backend=backends[backend],
                    default_lease_seconds=600,
                )
            )
        )


async def load_documents(dsn: str, pipeline_id: str, count: int) -> None:
    """``count`` pending documents (as RecordStaged would leave them), loaded in SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO documents (pipeline_id, document_id, stage, fencing_token, content_hash,
                                      backing, chunk_count)
               SELECT $1, 'doc-' || lpad(g::text, 9, '0'), 'pending', nextval('fencing_token_seq'),
                      'hash', 's3://bench/' || g, 4
               FROM generate_series(1, $2) g""",
            pipeline_id,
            count,
        )
        await conn.execute("VACUUM ANALYZE documents")
    finally:
        await conn.close()


def start_process(command: str, env: dict[str, str], logs: Path) -> tuple[ServiceProcess, str]:
    address = f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        command,
        name=command,
        env={
            "HEVLAYER_GRPC_ADDRESS": address,
            "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEVLAYER_LOG_LEVEL": "warning",
            **env,
        },
        log_path=logs / f"{command}.log",
        grpc_address=address,
    ).start()
    process.wait_ready(timeout=60)
    return process, address


# -- workers (run in spawned processes) ------------------------------------------------


Complete = Callable[[Any, str, str, Sequence[Any]], Awaitable[int]]
"""Moves claimed leases to indexed: (LeaseService stub, pipeline, worker, leases) -> ids moved."""


async def complete_per_document(stub: Any, pipeline_id: str, worker: str, leases: Sequence[Any]) -> int:
    """TransitionDocuments naming every lease (document id + fencing token)."""
    from hevlayer.api.lease.v1 import lease_pb2 as lpb

    request = lpb.TransitionDocumentsRequest(
        pipeline_id=pipeline_id, from_stage="embedding", worker_id=worker, to_stage="indexed"
    )
    add = request.documents.add
    for lease in leases:
        add(document_id=lease.document_id, fencing_token=lease.fencing_token)
    result = await stub.TransitionDocuments(request)
    return sum(1 for r in result.results if r.outcome == lpb.TRANSITION_OUTCOME_MOVED)


async def grpc_claim_loop(
    address: str, pipeline_id: str, worker: str, batch: int, ready: Any, complete: Complete
) -> tuple[int, list[float]]:
    """Claim ``batch`` at a time through gRPC and ``complete`` them until the pipeline is empty;
    (ids moved, claim latencies)."""
    from grpc import aio

    from hevlayer.api.lease.v1 import lease_pb2 as lpb
    from hevlayer.api.lease.v1 import lease_pb2_grpc

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    done = 0
    latencies: list[float] = []
    async with aio.insecure_channel(address, options=options) as channel:
        stub = lease_pb2_grpc.LeaseServiceStub(channel)
        claim = lpb.ClaimDocumentsRequest(
            pipeline_id=pipeline_id, stage="pending", claim_stage="embedding", limit=batch, worker_id=worker
        )
        await channel.channel_ready()
        await asyncio.to_thread(ready.wait)
        empty = 0
        while empty < 2:
            started = time.perf_counter()
            claimed = await stub.ClaimDocuments(claim)
            latencies.append(time.perf_counter() - started)
            if not claimed.leases:
                empty += 1
                continue
            empty = 0
            moved = await complete(stub, pipeline_id, worker, claimed.leases)
            assert moved == len(claimed.leases), (moved, len(claimed.leases))
            done += moved
    return done, latencies


def grpc_worker(address: str, pipeline_id: str, worker: str, batch: int, ready: Any, out: Any) -> None:
    """Claim and complete through gRPC (one LeaseRef per document) until the pipeline is empty."""
    out.put(asyncio.run(grpc_claim_loop(address, pipeline_id, worker, batch, ready, complete_per_document)))


def bare_worker(dsn: str, pipeline_id: str, worker: str, batch: int, ready: Any, out: Any) -> None:
    """The claimer's two statements on asyncpg, nothing in between."""
    from hevlayer.claimer.database import SERVER_SETTINGS
    from hevlayer.claimer.leases import CLAIM_SQL, TRANSITION_SQL

    async def main() -> tuple[int, list[float]]:
        conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
        await asyncio.to_thread(ready.wait)
        done = 0
        latencies: list[float] = []
        try:
            empty = 0
            while empty < 2:
                now = datetime.now(UTC)
                started = time.perf_counter()
                async with conn.transaction():
                    rows = await conn.fetch(
                        CLAIM_SQL,
                        pipeline_id,
                        "pending",
                        "embedding",
                        batch,
                        worker,
                        now,
                        now + timedelta(seconds=600),
                        5,
                    )
                latencies.append(time.perf_counter() - started)
                if not rows:
                    empty += 1
                    continue
                empty = 0
                async with conn.transaction():
                    moved = await conn.fetch(
                        TRANSITION_SQL,
                        pipeline_id,
                        [r[0] for r in rows],
                        [r[2] for r in rows],
                        "embedding",
                        worker,
                        datetime.now(UTC),
                        "indexed",
                        "",
                    )
                assert len(moved) == len(rows)
                done += len(moved)
        finally:
            await conn.close()
        return done, latencies

    out.put(asyncio.run(main()))


def run_workers(target: Any, args_for: list[tuple[Any, ...]]) -> tuple[float, int, list[float]]:
    """Start one process per args tuple and time them from when all are connected;
    return (seconds, documents, latencies)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    ready = context.Barrier(len(args_for) + 1)
    processes = [context.Process(target=target, args=(*args, ready, queue)) for args in args_for]
    for process in processes:
        process.start()
    ready.wait(120)  # every worker has started and connected: the clock starts now
    started = time.perf_counter()
    results = [queue.get(timeout=900) for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(30)
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {process.exitcode}")
    return elapsed, sum(r[0] for r in results), [x for r in results for x in r[1]]


# -- procrastinate ---------------------------------------------------------------------


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate  # type: ignore[import-not-found,unused-ignore]

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop", queue="bench")
    async def noop(n: int) -> None:
        return None

    return app


def procrastinate_worker(dsn: str, concurrency: int, ready: Any, out: Any) -> None:
    async def main() -> int:
        app = _procrastinate_app(dsn)
        async with app.open_async():
            await asyncio.to_thread(ready.wait)
            await app.run_worker_async(
                queues=["bench"],
                concurrency=concurrency,
                wait=False,
                listen_notify=True,
                install_signal_handlers=False,
            )
        return 0

    out.put((asyncio.run(main()), []))


async def procrastinate_setup(dsn: str, jobs: int) -> None:
    app = _procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks["noop"]
        for start in range(0, jobs, 1000):
            await task.batch_defer_async(*[{"n": n} for n in range(start, min(jobs, start + 1000))])


def procrastinate_rate(dsn: str, workers: int) -> float | None:
    try:
        import procrastinate  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        print("procrastinate is not installed: baseline skipped (pip install procrastinate)")
        return None
    asyncio.run(procrastinate_setup(dsn, PROCRASTINATE_JOBS))
    elapsed, _, _ = run_workers(procrastinate_worker, [(dsn, 8) for _ in range(workers)])
    return PROCRASTINATE_JOBS / elapsed


# -- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000, help="documents per measured phase")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per phase")
    parser.add_argument("--batch", type=int, default=2000, help="claim limit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved gRPC / bare rounds (medians)")
    parser.add_argument("--no-procrastinate", action="store_true")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="hevlayer-bench-claims-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; logs in {logs}")
    with PostgresServer(settings=TEST_SETTINGS) as postgres:
        claimer_db = postgres.create_database("claims")
        procrastinate_db = postgres.create_database("procrastinate")
        claimer, claimer_address = start_process(
            "hevlayer-claimer", {"DATABASE_URL": claimer_db, "PIPELINE_QUEUE_BACKEND": "row"}, logs
        )
        gateway, gateway_address = start_process(
            "hevlayer-gateway", {"CLAIMER_ADDRESS": claimer_address}, logs
        )
        try:
            grpc_rates: list[float] = []
            bare_rates: list[float] = []
            grpc_latencies: list[float] = []
            bare_latencies: list[float] = []
            service_cpu = {"claimer": 0.0, "gateway": 0.0}
            grpc_seconds = 0.0
            # interleaved rounds, so that a change of machine load hits both paths alike
            for _ in range(args.rounds):
                grpc_pipeline = f"bench-grpc-{uuid.uuid4().hex[:6]}"
                bare_pipeline = f"bench-bare-{uuid.uuid4().hex[:6]}"
                for pipeline in (grpc_pipeline, bare_pipeline):
                    asyncio.run(create_pipeline(claimer_address, pipeline))
                    asyncio.run(load_documents(claimer_db, pipeline, args.docs))
                before = {"claimer": cpu_seconds(claimer.pid), "gateway": cpu_seconds(gateway.pid)}
                elapsed, done, latencies = run_workers(
                    grpc_worker,
                    [(gateway_address, grpc_pipeline, f"w{n}", args.batch) for n in range(args.workers)],
                )
                service_cpu["claimer"] += cpu_seconds(claimer.pid) - before["claimer"]
                service_cpu["gateway"] += cpu_seconds(gateway.pid) - before["gateway"]
                assert done == args.docs, (done, args.docs)
                grpc_rates.append(done / elapsed)
                grpc_seconds += elapsed
                grpc_latencies.extend(latencies)
                elapsed, done, latencies = run_workers(
                    bare_worker,
                    [(claimer_db, bare_pipeline, f"w{n}", args.batch) for n in range(args.workers)],
                )
                assert done == args.docs, (done, args.docs)
                bare_rates.append(done / elapsed)
                bare_latencies.extend(latencies)
                print(
                    f"round: gRPC {grpc_rates[-1]:,.0f} docs/s, bare {bare_rates[-1]:,.0f} docs/s", flush=True
                )
            grpc_rate = statistics.median(grpc_rates)
            bare_rate = statistics.median(bare_rates)
        finally:
            gateway.stop()
            claimer.stop()
        jobs_rate = None if args.no_procrastinate else procrastinate_rate(procrastinate_db, args.workers)

    grpc_latencies = [x for x in grpc_latencies if x > 0]
    print(
        f"documents per phase: {args.docs}, batch {args.batch}, {args.workers} worker processes, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    for label, rate, latencies in (
        ("gRPC (client -> gateway -> claimer -> PostgreSQL)", grpc_rate, grpc_latencies),
        ("bare asyncpg (same two statements)", bare_rate, bare_latencies),
    ):
        p50 = _percentile(latencies, 0.5) * 1000
        p99 = _percentile(latencies, 0.99) * 1000
        print(f"{label}: {rate:,.0f} docs/s; claim latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"ratio gRPC / bare: {grpc_rate / bare_rate:.2f} (goal >= 0.8)")
    print(
        "CPU seconds during the gRPC phase: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in service_cpu.items())
        + f" (of {2 * grpc_seconds:.1f} core-seconds on 2 cores)"
    )
    if jobs_rate is not None:
        print(f"procrastinate ({PROCRASTINATE_JOBS} no-op jobs): {jobs_rate:,.0f} jobs/s")
        print(f"ratio gRPC / procrastinate: {grpc_rate / jobs_rate:.1f} (goal >= 50)")
    print(f"mean claim latency gRPC {statistics.fmean(grpc_latencies) * 1000:.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
