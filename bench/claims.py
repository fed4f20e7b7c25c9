"""Claim + transition throughput through the public gRPC API, against two
baselines on the same PostgreSQL in the same run.

1. **gRPC**: worker processes call ``LeaseService.ClaimDocuments`` (batches of
   ``--batch``) and ``TransitionDocuments`` (to ``indexed``) on a real gateway
   process, which forwards to a real claimer process, which runs the claim and
   transition statements on PostgreSQL. Paths ``unary`` and ``stream``
   (``StreamLeases`` with credits instead of ClaimDocuments) use the columnar
   batch layout the embedder worker uses (``LeaseColumns``,
   ``LeaseRefColumns``); ``unary-messages`` and ``stream-messages`` the same
   calls with one message per document (``Lease``, ``LeaseRef``).
2. **bare asyncpg**: the same number of worker processes run the claimer's
   own two statements (``CLAIM_SQL`` and ``TRANSITION_SQL``, the same
   parameters, the same schema and triggers) on asyncpg directly, without
   gRPC or the claimer in between: the limit on this machine.
3. **procrastinate** (PyPI): jobs deferred in bulk, then worker processes
   (``--workers``) with ``concurrency`` and LISTEN/NOTIFY run a no-op task;
   jobs/s. Skipped when procrastinate is not installed.
4. **secured** (paths ``unary-secured`` and ``stream-secured``, each next to its
   plaintext path in the same rounds): the same workers against a second claimer +
   gateway pair on the same PostgreSQL that serves mutual TLS on both hops (client to
   gateway, gateway to claimer, which accepts only the gateway's certificate); the
   workers open ``aio.secure_channel`` with a client certificate and send
   ``authorization: Bearer <token>`` (a worker API token) on every call, which the
   gateway verifies and checks against each method's role (bench/secured.py is the one
   place these settings go); the plaintext pair runs with GATEWAY_AUTH=off and
   CLAIMER_AUTH=off. Goal: secured / plaintext >= 0.95.

Prints docs/s, the ratios (goals: gRPC >= 0.8 x bare, >= 50 x procrastinate)
and the client-side claim latency p50/p99. Next to the ratio of the median
rates it prints two less noisy views of the same comparison: the median of
the rounds' own ratios (the paths of a round run back to back, so a change in
the machine's other load hits them alike), and the ratio of CPU per document
(bare / gRPC; every phase keeps both cores busy, so this is what the rate
ratio tends to on a machine of its own).

    .venv/bin/python bench/claims.py [--docs 100000] [--workers 4] [--batch 2000] [--rounds 3]
    .venv/bin/python bench/claims.py --paths unary,unary-secured,stream,stream-secured,bare --no-procrastinate
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
from queue import Empty
from typing import Any

import asyncpg
from secured import Secured

from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3, ServiceProcess
from hevlayer.devstack.ports import free_port

PROCRASTINATE_JOBS = 4000


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live backends, and the
    backends that have exited (counted in the postmaster's children's time)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def claims_made(process: ServiceProcess, pipeline_id: str) -> float:
    """Claim statements a claimer has run for ``pipeline_id`` (the count of its
    ``layer_claim_latency_seconds`` histogram, from its /metrics)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    address = process.env["HEVLAYER_HTTP_ADDRESS"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "layer_claim_latency_seconds_count"
                and sample.labels.get("pipeline_id") == pipeline_id
            ):
                return sample.value
    return 0.0


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


async def delete_pipelines(address: str, pipeline_ids: Sequence[str]) -> None:
    """DeletePipeline on the claimer for each pipeline (documents included)."""
    from grpc import aio

    from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
    from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc

    async with aio.insecure_channel(address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        for pipeline_id in pipeline_ids:
            await stub.DeletePipeline(ppb.DeletePipelineRequest(pipeline_id=pipeline_id))


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
    finally:
        await conn.close()
    await vacuum(dsn)


async def vacuum(dsn: str) -> None:
    """VACUUM ANALYZE the documents table, with autovacuum off for it: every phase starts
    on a table without the dead rows of the phases before it, and no autovacuum run lands
    in the middle of one path's phase and not another's. (Each round deletes its pipelines,
    so every round also starts on a table of the same size.)"""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE documents SET (autovacuum_enabled = off)")
        await conn.execute("VACUUM ANALYZE documents")
    finally:
        await conn.close()


def start_process(
    command: str, env: dict[str, str], logs: Path, credentials: Any = None, name: str | None = None
) -> tuple[ServiceProcess, str]:
    """Start ``command`` on loopback and wait for it (its health check over TLS with
    ``credentials``, for a server with ``HEVLAYER_TLS_CERT``); (process, gRPC address)."""
    address = f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        command,
        name=command,
        env={
            "HEVLAYER_GRPC_ADDRESS": address,
            "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEVLAYER_LOG_LEVEL": "warning",
            # The plaintext path: the bench calls the claimer directly, without the gateway's
            # shared secret (CLAIMER_AUTH=off is unsafe outside a benchmark on loopback).
            "CLAIMER_AUTH": "off",
            **env,
        },
        log_path=logs / f"{name or command}.log",
        grpc_address=address,
    ).start()
    process.wait_ready(timeout=60, credentials=credentials)
    return process, address


# -- workers (run in spawned processes) ------------------------------------------------


Metadata = Sequence[tuple[str, str]] | None
"""What every call carries (the secured path's authorization header; None on the others)."""

Complete = Callable[[Any, str, str, Sequence[str], Sequence[int], Metadata], Awaitable[int]]
"""Moves claimed leases to indexed: (LeaseService stub, pipeline, worker, document ids,
fencing tokens, metadata) -> ids moved."""


async def complete_per_document(
    stub: Any,
    pipeline_id: str,
    worker: str,
    ids: Sequence[str],
    tokens: Sequence[int],
    metadata: Metadata = None,
) -> int:
    """TransitionDocuments naming every lease as a LeaseRef (document id + fencing token)."""
    from hevlayer.api.lease.v1 import lease_pb2 as lpb

    request = lpb.TransitionDocumentsRequest(
        pipeline_id=pipeline_id, from_stage="embedding", worker_id=worker, to_stage="indexed"
    )
    add = request.documents.add
    for document_id, token in zip(ids, tokens, strict=True):
        add(document_id=document_id, fencing_token=token)
    result = await stub.TransitionDocuments(request, metadata=metadata)
    return sum(1 for r in result.results if r.outcome == lpb.TRANSITION_OUTCOME_MOVED)


async def complete_by_columns(
    stub: Any,
    pipeline_id: str,
    worker: str,
    ids: Sequence[str],
    tokens: Sequence[int],
    metadata: Metadata = None,
) -> int:
    """TransitionDocuments naming the leases as LeaseRefColumns (the embedder's layout)."""
    from hevlayer.api.lease.v1 import lease_pb2 as lpb

    result = await stub.TransitionDocuments(
        lpb.TransitionDocumentsRequest(
            pipeline_id=pipeline_id,
            from_stage="embedding",
            worker_id=worker,
            to_stage="indexed",
            document_columns=lpb.LeaseRefColumns(document_ids=ids, fencing_tokens=tokens),
        ),
        metadata=metadata,
    )
    return list(result.result_columns.outcomes).count(lpb.TRANSITION_OUTCOME_MOVED)


def lease_refs(response: Any) -> tuple[list[str], list[int]]:
    """Document ids and fencing tokens of a claim's answer, in either layout."""
    if response.HasField("lease_columns"):
        return list(response.lease_columns.document_ids), list(response.lease_columns.fencing_tokens)
    return [lease.document_id for lease in response.leases], [
        lease.fencing_token for lease in response.leases
    ]


def open_worker_channel(address: str, secured: Secured | None) -> Any:
    """A bare aio channel to the gateway: plaintext, or mutual TLS with the worker's
    certificate on the secured path; 64 MiB messages either way."""
    import grpc
    from grpc import aio

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    if secured is None:
        return aio.insecure_channel(address, options=options)
    ca, chain, key = secured.pem("worker")
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
    return aio.secure_channel(address, credentials, options=options)


async def grpc_claim_loop(
    address: str,
    pipeline_id: str,
    worker: str,
    batch: int,
    ready: Any,
    complete: Complete,
    columns: bool,
    secured: Secured | None = None,
) -> tuple[int, list[float], float]:
    """Claim ``batch`` at a time through gRPC (in the columnar layout if ``columns``) and
    ``complete`` them until the pipeline is empty; (ids moved, claim latencies, this
    process's CPU seconds in the loop). With ``secured``: mutual TLS and its metadata."""

    from hevlayer.api.lease.v1 import lease_pb2 as lpb
    from hevlayer.api.lease.v1 import lease_pb2_grpc

    metadata = secured.metadata() if secured is not None else None
    done = 0
    latencies: list[float] = []
    async with open_worker_channel(address, secured) as channel:
        stub = lease_pb2_grpc.LeaseServiceStub(channel)
        claim = lpb.ClaimDocumentsRequest(
            pipeline_id=pipeline_id,
            stage="pending",
            claim_stage="embedding",
            limit=batch,
            worker_id=worker,
            layout=lpb.LEASE_LAYOUT_COLUMNS if columns else lpb.LEASE_LAYOUT_UNSPECIFIED,
        )
        await channel.channel_ready()
        await asyncio.to_thread(ready.wait)
        cpu = time.process_time()
        empty = 0
        while empty < 2:
            started = time.perf_counter()
            ids, tokens = lease_refs(await stub.ClaimDocuments(claim, metadata=metadata))
            latencies.append(time.perf_counter() - started)
            if not ids:
                empty += 1
                continue
            empty = 0
            moved = await complete(stub, pipeline_id, worker, ids, tokens, metadata)
            assert moved == len(ids), (moved, len(ids))
            done += moved
    return done, latencies, time.process_time() - cpu


async def grpc_stream_loop(
    address: str,
    pipeline_id: str,
    worker: str,
    batch: int,
    columns: bool,
    total: int,
    moved_so_far: Any,
    ready: Any,
    secured: Secured | None = None,
) -> tuple[int, list[float], float]:
    """Take leases from one ``StreamLeases`` stream, ``batch`` credits at a time, and move
    each message's leases to indexed (TransitionDocuments; columnar layout if ``columns``)
    until every worker together has moved ``total``; (ids moved, credit-to-leases
    latencies, this process's CPU seconds in the loop). With ``secured``: mutual TLS and
    its metadata."""
    from grpc import aio

    from hevlayer.api.lease.v1 import lease_pb2 as lpb
    from hevlayer.api.lease.v1 import lease_pb2_grpc

    metadata = secured.metadata() if secured is not None else None
    complete = complete_by_columns if columns else complete_per_document
    credits: asyncio.Queue[int] = asyncio.Queue()
    done = 0
    latencies: list[float] = []

    async def requests() -> Any:
        yield lpb.StreamLeasesRequest(
            open=lpb.StreamLeasesOpen(
                pipeline_id=pipeline_id,
                stage="pending",
                claim_stage="embedding",
                worker_id=worker,
                initial_credits=batch,
                layout=lpb.LEASE_LAYOUT_COLUMNS if columns else lpb.LEASE_LAYOUT_UNSPECIFIED,
            )
        )
        while True:
            yield lpb.StreamLeasesRequest(credit=lpb.StreamLeasesCredit(documents=await credits.get()))

    async with open_worker_channel(address, secured) as channel:
        stub = lease_pb2_grpc.LeaseServiceStub(channel)
        await channel.channel_ready()
        await asyncio.to_thread(ready.wait)
        cpu = time.process_time()
        granted = time.perf_counter()
        call = stub.StreamLeases(requests(), metadata=metadata)
        try:
            reading: asyncio.Future[Any] | None = None
            while moved_so_far.value < total:
                # a read is never cancelled (that would cancel the call): it stays pending
                # across the checks of the shared count
                reading = reading or asyncio.ensure_future(call.read())
                await asyncio.wait({reading}, timeout=0.05)
                if not reading.done():
                    continue
                response, reading = reading.result(), None
                if response is aio.EOF:
                    raise RuntimeError("StreamLeases ended early")
                latencies.append(time.perf_counter() - granted)
                ids, tokens = lease_refs(response)
                moved = await complete(stub, pipeline_id, worker, ids, tokens, metadata)
                assert moved == len(ids), (moved, len(ids))
                done += moved
                with moved_so_far.get_lock():
                    moved_so_far.value += moved
                granted = time.perf_counter()
                credits.put_nowait(moved)
        finally:
            call.cancel()
    return done, latencies, time.process_time() - cpu


def grpc_stream_worker(
    address: str,
    pipeline_id: str,
    worker: str,
    batch: int,
    columns: bool,
    total: int,
    moved_so_far: Any,
    secured: Secured | None,
    ready: Any,
    out: Any,
) -> None:
    """Take leases from StreamLeases and complete them until ``total`` documents are indexed."""
    out.put(
        asyncio.run(
            grpc_stream_loop(
                address, pipeline_id, worker, batch, columns, total, moved_so_far, ready, secured
            )
        )
    )


def grpc_worker(
    address: str,
    pipeline_id: str,
    worker: str,
    batch: int,
    columns: bool,
    secured: Secured | None,
    ready: Any,
    out: Any,
) -> None:
    """Claim and complete through gRPC (columnar layout if ``columns``, else one message per
    document) until the pipeline is empty; mutual TLS and its metadata with ``secured``."""
    complete = complete_by_columns if columns else complete_per_document
    out.put(
        asyncio.run(grpc_claim_loop(address, pipeline_id, worker, batch, ready, complete, columns, secured))
    )


def bare_worker(dsn: str, pipeline_id: str, worker: str, batch: int, ready: Any, out: Any) -> None:
    """The claimer's two statements on asyncpg, nothing in between."""
    from hevlayer.claimer.database import SERVER_SETTINGS
    from hevlayer.claimer.leases import CLAIM_SQL, TRANSITION_SQL
    from hevlayer.claimer.segment_claims import ANY_PRIORITY

    async def main() -> tuple[int, list[float], float]:
        conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
        await asyncio.to_thread(ready.wait)
        cpu = time.process_time()
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
                        ANY_PRIORITY,
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
        return done, latencies, time.process_time() - cpu

    out.put(asyncio.run(main()))


def run_workers(target: Any, args_for: list[tuple[Any, ...]]) -> tuple[float, int, list[float], float]:
    """Start one process per args tuple and time them from when all are connected;
    return (seconds, documents, latencies, the workers' CPU seconds)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    ready = context.Barrier(len(args_for) + 1)
    processes = [context.Process(target=target, args=(*args, ready, queue)) for args in args_for]
    for process in processes:
        process.start()
    ready.wait(120)  # every worker has started and connected: the clock starts now
    started = time.perf_counter()
    results: list[tuple[int, list[float], float]] = []
    while len(results) < len(processes):
        try:
            results.append(queue.get(timeout=1))
        except Empty:
            # a worker that died (its traceback is on stderr) never reports: stop waiting
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed:
                for process in processes:
                    process.kill()
                raise SystemExit(f"a worker failed with exit code {failed[0]}") from None
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(30)
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {process.exitcode}")
    return (
        elapsed,
        sum(r[0] for r in results),
        [x for r in results for x in r[1]],
        sum(r[2] for r in results),
    )


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

    out.put((asyncio.run(main()), [], 0.0))


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
    elapsed, _, _, _ = run_workers(procrastinate_worker, [(dsn, 8) for _ in range(workers)])
    return PROCRASTINATE_JOBS / elapsed


# -- main ------------------------------------------------------------------------------


PATHS = {
    "unary": "gRPC ClaimDocuments, columns (client -> gateway -> claimer -> PostgreSQL)",
    "stream": "gRPC StreamLeases, columns (client -> gateway -> claimer -> PostgreSQL)",
    "unary-messages": "gRPC ClaimDocuments, a message per document",
    "stream-messages": "gRPC StreamLeases, a message per document",
    "unary-secured": "gRPC ClaimDocuments, columns, mutual TLS on both hops + authorization header",
    "stream-secured": "gRPC StreamLeases, columns, mutual TLS on both hops + authorization header",
    "bare": "bare asyncpg (same two statements)",
}
SECURED_SUFFIX = "-secured"
SECURED_GOAL = 0.95


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000, help="documents per measured phase")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per phase")
    parser.add_argument("--batch", type=int, default=2000, help="claim limit (StreamLeases credits)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path (medians)")
    parser.add_argument(
        "--paths",
        default="unary,stream,bare",
        help="comma-separated: unary, stream, unary-messages, stream-messages, bare (the baseline), "
        "unary-secured, stream-secured (each with its plaintext path)",
    )
    parser.add_argument("--no-procrastinate", action="store_true")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if "bare" not in paths or any(p not in PATHS for p in paths):
        raise SystemExit(f"--paths: choose from {sorted(PATHS)}, bare included")
    secured_paths = [p for p in paths if p.endswith(SECURED_SUFFIX)]
    for path in secured_paths:
        if path.removesuffix(SECURED_SUFFIX) not in paths:
            raise SystemExit(
                f"--paths: {path} needs {path.removesuffix(SECURED_SUFFIX)} (its plaintext path)"
            )

    logs = Path(tempfile.mkdtemp(prefix="hevlayer-bench-claims-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; logs in {logs}")
    context = multiprocessing.get_context("spawn")
    # S3 and the sink's file only for the gateways' readiness (no chunk is read or written)
    with PostgresServer(settings=TEST_SETTINGS) as postgres, SeaweedS3() as s3:
        s3.create_bucket("bench-claims")
        gateway_env = s3.client_env("bench-claims")
        claimer_db = postgres.create_database("claims")
        procrastinate_db = postgres.create_database("procrastinate")
        claimer, claimer_address = start_process(
            "hevlayer-claimer", {"DATABASE_URL": claimer_db, "PIPELINE_QUEUE_BACKEND": "row"}, logs
        )
        gateway, gateway_address = start_process(
            "hevlayer-gateway",
            {
                "CLAIMER_ADDRESS": claimer_address,
                "GATEWAY_MILVUS_LITE_PATH": str(logs / "vectors.db"),
                # The plaintext path: no API tokens (the secured path checks them).
                "GATEWAY_AUTH": "off",
                **gateway_env,
            },
            logs,
        )
        # The secured paths: a second claimer + gateway pair on the same PostgreSQL, serving
        # mutual TLS on both hops (bench/secured.py), started for the whole run.
        secured = Secured.create(logs / "pki") if secured_paths else None
        secure_pair: list[tuple[ServiceProcess, str]] = []
        try:
            if secured is not None:
                probe = secured.credentials("probe")
                secure_pair.append(
                    start_process(
                        "hevlayer-claimer",
                        {
                            "DATABASE_URL": claimer_db,
                            "PIPELINE_QUEUE_BACKEND": "row",
                            **secured.claimer_env(),
                        },
                        logs,
                        probe,
                        name="secured-claimer",
                    )
                )
                secure_pair.append(
                    start_process(
                        "hevlayer-gateway",
                        {
                            "CLAIMER_ADDRESS": secure_pair[0][1],
                            "GATEWAY_MILVUS_LITE_PATH": str(logs / "secured-vectors.db"),
                            **gateway_env,
                            **secured.gateway_env(),
                        },
                        logs,
                        probe,
                        name="secured-gateway",
                    )
                )
            rates: dict[str, list[float]] = {path: [] for path in paths}
            latencies: dict[str, list[float]] = {path: [] for path in paths}
            # CPU seconds per path, per part (the machine is shared with other work, so the
            # parts are measured one by one, not as the machine's busy time)
            # claim statements per path (the secured comparison's lines: fewer documents per claim
            # means more PostgreSQL work per document)
            claims: dict[str, float] = dict.fromkeys(paths, 0.0)
            cpu: dict[str, dict[str, float]] = {
                path: {"PostgreSQL": 0.0, "workers": 0.0, "claimer": 0.0, "gateway": 0.0} for path in paths
            }
            # interleaved rounds, so that a change of machine load hits every path alike; the
            # order rotates, so that no path is always the first after the load
            for round_number in range(args.rounds):
                pipelines = {path: f"bench-{path}-{uuid.uuid4().hex[:6]}" for path in paths}
                for pipeline in pipelines.values():
                    asyncio.run(create_pipeline(claimer_address, pipeline))
                    asyncio.run(load_documents(claimer_db, pipeline, args.docs))
                shift = round_number % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    asyncio.run(vacuum(claimer_db))
                    pipeline = pipelines[path]
                    workers = [f"w{n}" for n in range(args.workers)]
                    target: Callable[..., None]
                    worker_args: list[tuple[Any, ...]]
                    columns = not path.endswith("-messages")
                    on_path = secured if path.endswith(SECURED_SUFFIX) else None
                    servers, address = (
                        ((secure_pair[0][0], secure_pair[1][0]), secure_pair[1][1])
                        if on_path is not None
                        else ((claimer, gateway), gateway_address)
                    )
                    if path.startswith("unary"):
                        target = grpc_worker
                        worker_args = [(address, pipeline, w, args.batch, columns, on_path) for w in workers]
                    elif path.startswith("stream"):
                        target = grpc_stream_worker
                        moved = context.Value("q", 0)
                        worker_args = [
                            (address, pipeline, w, args.batch, columns, args.docs, moved, on_path)
                            for w in workers
                        ]
                    else:
                        target = bare_worker
                        worker_args = [(claimer_db, pipeline, w, args.batch) for w in workers]
                    before = (
                        postgres_cpu_seconds(postgres.data_dir),
                        cpu_seconds(servers[0].pid),
                        cpu_seconds(servers[1].pid),
                    )
                    elapsed, done, phase_latencies, worker_cpu = run_workers(target, worker_args)
                    assert done == args.docs, (path, done, args.docs)
                    cpu[path]["PostgreSQL"] += postgres_cpu_seconds(postgres.data_dir) - before[0]
                    cpu[path]["claimer"] += cpu_seconds(servers[0].pid) - before[1]
                    cpu[path]["gateway"] += cpu_seconds(servers[1].pid) - before[2]
                    cpu[path]["workers"] += worker_cpu
                    if secured_paths and path != "bare":
                        claims[path] += claims_made(servers[0], pipeline)
                    rates[path].append(done / elapsed)
                    latencies[path].extend(x for x in phase_latencies if x > 0)
                print(
                    "round: " + ", ".join(f"{path} {rates[path][-1]:,.0f} docs/s" for path in paths),
                    flush=True,
                )
                # every round starts on a table of the same size
                asyncio.run(delete_pipelines(claimer_address, list(pipelines.values())))
        finally:
            for process, _ in reversed(secure_pair):
                process.stop()
            gateway.stop()
            claimer.stop()
        jobs_rate = None if args.no_procrastinate else procrastinate_rate(procrastinate_db, args.workers)

    print(
        f"documents per phase: {args.docs}, batch {args.batch}, {args.workers} worker processes, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    median = {path: statistics.median(values) for path, values in rates.items()}
    for path in paths:
        p50 = _percentile(latencies[path], 0.5) * 1000
        p99 = _percentile(latencies[path], 0.99) * 1000
        print(f"{PATHS[path]}: {median[path]:,.0f} docs/s; claim latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    documents = args.docs * args.rounds
    per_document = {path: sum(parts.values()) / documents for path, parts in cpu.items()}
    for path in paths:
        if path != "bare":
            paired = statistics.median(x / y for x, y in zip(rates[path], rates["bare"], strict=True))
            print(
                f"ratio {path} / bare: {median[path] / median['bare']:.2f} (goal >= 0.8); "
                f"median of the rounds' ratios {paired:.2f}; "
                f"CPU per document, bare / {path}: {per_document['bare'] / per_document[path]:.2f}"
            )
    for path in secured_paths:
        plain = path.removesuffix(SECURED_SUFFIX)
        paired = statistics.median(x / y for x, y in zip(rates[path], rates[plain], strict=True))
        print(
            f"ratio {path} / {plain}: {median[path] / median[plain]:.2f} (goal >= {SECURED_GOAL}); "
            f"median of the rounds' ratios {paired:.2f}; "
            f"CPU per document, {plain} / {path}: {per_document[plain] / per_document[path]:.2f}; "
            f"documents per claim statement: {plain} {documents / max(claims[plain], 1):,.0f}, "
            f"{path} {documents / max(claims[path], 1):,.0f}"
        )
    print("CPU per document (core-microseconds):")
    for path, parts in cpu.items():
        print(
            f"  {path}: {per_document[path] * 1e6:.1f} = "
            + " + ".join(f"{name} {seconds / documents * 1e6:.1f}" for name, seconds in parts.items())
        )
    if jobs_rate is not None:
        print(f"procrastinate ({PROCRASTINATE_JOBS} no-op jobs): {jobs_rate:,.0f} jobs/s")
        for path in paths:
            if path != "bare":
                print(f"ratio {path} / procrastinate: {median[path] / jobs_rate:.1f} (goal >= 50)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
