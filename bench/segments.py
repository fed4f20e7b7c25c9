"""The segmented queue: lightweight ids enqueued, claimed and completed.

A real claimer process (PIPELINE_SEGMENT_SIZE=10000) on a throwaway
PostgreSQL and SeaweedFS S3. Clients talk to the claimer's gRPC API directly
(EnqueueIds is the claimer's internal API; LeaseService is what the gateway
forwards byte for byte):

1. ``--ids`` ids (default 1,000,000) are streamed to ``EnqueueIds`` (10,000 per
   message) into a ``segment`` pipeline, as one ``document_ids`` column per
   message (``--per-message``: one ``EnqueuedDocument`` message per id, the
   form of clients before the column);
2. ``--workers`` worker processes claim (``--batch`` = 10,000 per claim, one
   whole segment) and transition every id to ``indexed``: by lease token
   (``TransitionDocuments.segment_leases``, no per-id message; the claim's ids
   are counted, not read), or with ``--per-document`` every id named
   (``LeaseRefColumns``).

A sampler counts the pipeline's PostgreSQL rows (queue_segments + documents
+ segment_garbage) throughout; the peak must stay <= 110. At the end the
pipeline's S3 prefix must be empty. The same is then done with the ``row``
backend (``--row-ids`` ids, default 200,000, one row each) and the ratio of
ids/s is printed. Goals: >= 200,000 ids/s for the segment backend (issue 4),
>= 1,000,000 ids/s (issue 18).

Times: enqueue from the first message to the answer; claim + complete from
when every worker process has started and connected (their Python start-up is
printed apart: runs before issue 18's columns counted it in claim + complete).

    .venv/bin/python bench/segments.py [--ids 1000000] [--row-ids 200000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

import asyncpg
from claims import complete_by_columns, create_pipeline, open_worker_channel, run_workers, start_process
from support.s3 import claimer_object_store

from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3

MESSAGE = 10_000


async def enqueue(address: str, pipeline_id: str, count: int, *, columns: bool = True) -> float:
    """Stream ``count`` ids to EnqueueIds, MESSAGE per message: as one ``document_ids``
    column (``columns``), or one ``EnqueuedDocument`` message per id (the form a claimer
    before the columns understands); the seconds it took."""
    from grpc import aio

    from hevlayer.api.claimer.v1 import document_state_pb2 as dpb
    from hevlayer.api.claimer.v1 import document_state_pb2_grpc

    async def messages() -> AsyncIterator[dpb.EnqueueIdsRequest]:
        for start in range(0, count, MESSAGE):
            request = dpb.EnqueueIdsRequest()
            request.batch.pipeline_id = pipeline_id
            names = [f"id-{n:09d}" for n in range(start, min(count, start + MESSAGE))]
            if columns:
                request.batch.document_ids.extend(names)
            else:
                add = request.batch.documents.add
                for name in names:
                    add(document_id=name)
            yield request

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    started = time.perf_counter()
    async with aio.insecure_channel(address, options=options) as channel:
        stub = document_state_pb2_grpc.DocumentStateServiceStub(channel)
        response = await stub.EnqueueIds(messages())
    assert response.result.enqueued == count, response
    return time.perf_counter() - started


async def count_rows(dsn: str, pipeline_id: str, stop: asyncio.Event) -> int:
    conn = await asyncpg.connect(dsn)
    peak = 0
    try:
        while not stop.is_set():
            rows = await conn.fetchval(
                """SELECT (SELECT count(*) FROM queue_segments WHERE pipeline_id = $1)
                        + (SELECT count(*) FROM documents WHERE pipeline_id = $1)
                        + (SELECT count(*) FROM segment_garbage)""",
                pipeline_id,
            )
            peak = max(peak, int(rows))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()
    return peak


async def segment_claim_loop(
    address: str, pipeline_id: str, worker: str, batch: int, ready: Any
) -> tuple[int, list[float], float]:
    """Claim ``batch`` at a time (columnar layout) and complete each claim's segment leases by
    token until the pipeline is empty; (ids moved, claim latencies, this process's CPU seconds
    in the loop). The ids of a claim are counted, not read: they become Python strings only
    for leases that turn out to be document rows (completed by name)."""
    from hevlayer.api.lease.v1 import lease_pb2 as lpb
    from hevlayer.api.lease.v1 import lease_pb2_grpc

    done = 0
    latencies: list[float] = []
    async with open_worker_channel(address, None) as channel:
        stub = lease_pb2_grpc.LeaseServiceStub(channel)
        claim = lpb.ClaimDocumentsRequest(
            pipeline_id=pipeline_id,
            stage="pending",
            claim_stage="embedding",
            limit=batch,
            worker_id=worker,
            layout=lpb.LEASE_LAYOUT_COLUMNS,
        )
        await channel.channel_ready()
        await asyncio.to_thread(ready.wait)
        cpu = time.process_time()
        empty = 0
        while empty < 2:
            started = time.perf_counter()
            columns = (await stub.ClaimDocuments(claim)).lease_columns
            latencies.append(time.perf_counter() - started)
            count = len(columns.document_ids)
            if not count:
                empty += 1
                continue
            empty = 0
            tokens = list(dict.fromkeys(columns.fencing_tokens))
            result = await stub.TransitionDocuments(
                lpb.TransitionDocumentsRequest(
                    pipeline_id=pipeline_id,
                    from_stage="embedding",
                    worker_id=worker,
                    to_stage="indexed",
                    segment_leases=tokens,
                )
            )
            moved = sum(r.moved for r in result.segment_lease_results)
            rows = {r.fencing_token for r in result.segment_lease_results if not r.moved}
            if rows:
                pairs = [
                    (i, t)
                    for i, t in zip(columns.document_ids, columns.fencing_tokens, strict=True)
                    if t in rows
                ]
                moved += await complete_by_columns(
                    stub, pipeline_id, worker, [i for i, _ in pairs], [t for _, t in pairs]
                )
            assert moved == count, (moved, count)
            done += moved
    return done, latencies, time.process_time() - cpu


def lease_worker(address: str, pipeline_id: str, worker: str, batch: int, ready: Any, out: Any) -> None:
    """Claim, then complete whole segment leases by token until the pipeline is empty."""
    out.put(asyncio.run(segment_claim_loop(address, pipeline_id, worker, batch, ready)))


@dataclass
class Phase:
    """One phase's times (seconds) and its peak of PostgreSQL rows."""

    enqueue: float
    drain: float
    """Claim + complete, from when every worker process was started and connected."""
    startup: float
    """Starting the worker processes (Python, imports, a channel each) before that."""
    peak: int
    enqueue_cpu: float = 0.0
    """CPU seconds of this process while it enqueued (the client building and sending)."""
    workers_cpu: float = 0.0
    """CPU seconds of the worker processes in their claim + complete loops."""

    @property
    def total(self) -> float:
        """Enqueue + claim + complete (the worker processes' start-up left out)."""
        return self.enqueue + self.drain


def run_phase(
    address: str,
    dsn: str,
    backend: str,
    count: int,
    workers: int,
    batch: int,
    *,
    per_document: bool = False,
    columns: bool = True,
    on_enqueued: Callable[[], None] | None = None,
) -> Phase:
    """Enqueue (as columns, or a message per id without ``columns``), then claim and
    complete; ``on_enqueued`` is called in between (e.g. to read a process's CPU time)."""
    from claims import grpc_worker

    worker_body = grpc_worker if per_document or backend == "row" else lease_worker
    # grpc_worker: columnar layout, plaintext (no Secured)
    extra = (True, None) if worker_body is grpc_worker else ()

    pipeline_id = f"seg-{backend}-{uuid.uuid4().hex[:6]}"
    asyncio.run(create_pipeline(address, pipeline_id, backend))

    async def enqueue_and_sample() -> tuple[float, asyncio.Event, asyncio.Task[int]]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(count_rows(dsn, pipeline_id, stop))
        cpu = time.process_time()
        seconds = await enqueue(address, pipeline_id, count, columns=columns)
        cpu_used[0] = time.process_time() - cpu
        return seconds, stop, sampler

    cpu_used = [0.0]
    loop = asyncio.new_event_loop()
    try:
        enqueue_seconds, stop, sampler = loop.run_until_complete(enqueue_and_sample())
        if on_enqueued is not None:
            on_enqueued()
        drain_started = time.perf_counter()
        # the sampler keeps running in this loop's thread while workers run
        future = loop.run_in_executor(
            None,
            lambda: run_workers(
                worker_body,
                [(address, pipeline_id, f"w{n}", batch, *extra) for n in range(workers)],
            ),
        )
        drain_seconds, done, _, workers_cpu = loop.run_until_complete(future)
        with_startup = time.perf_counter() - drain_started
        stop.set()
        peak = loop.run_until_complete(sampler)
    finally:
        loop.close()
    assert done == count, (done, count)
    return Phase(enqueue_seconds, drain_seconds, with_startup - drain_seconds, peak, cpu_used[0], workers_cpu)


async def leftover_objects(s3: SeaweedS3, bucket: str) -> list[str]:
    store = claimer_object_store(s3, bucket)
    await store.open()
    try:
        return await store.list_keys("pipelines/")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--row-ids", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument(
        "--per-message",
        action="store_true",
        help="enqueue one EnqueuedDocument message per id instead of the document_ids column",
    )
    parser.add_argument(
        "--per-document",
        action="store_true",
        help="complete segment ids by name (TransitionDocuments.document_columns), not by lease token",
    )
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="hevlayer-bench-segments-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; logs in {logs}")
    bucket = "bench"
    with (
        PostgresServer(settings={**TEST_SETTINGS, "log_min_duration_statement": "2000"}) as postgres,
        SeaweedS3(buckets=(bucket,)) as s3,
    ):
        dsn = postgres.dsn
        claimer, address = start_process(
            "hevlayer-claimer",
            {
                "DATABASE_URL": dsn,
                "PIPELINE_SEGMENT_SIZE": "10000",
                "CLAIMER_MANIFEST_CACHE_IDS": str(max(args.ids, 1)),
                **s3.client_env(bucket),
            },
            logs,
        )
        try:
            seg = run_phase(
                address,
                dsn,
                "segment",
                args.ids,
                args.workers,
                args.batch,
                per_document=args.per_document,
                columns=not args.per_message,
            )
            leftovers = asyncio.run(leftover_objects(s3, bucket))
            row = run_phase(
                address,
                dsn,
                "row",
                args.row_ids,
                args.workers,
                min(args.batch, 10_000),
                columns=not args.per_message,
            )
        finally:
            claimer.stop()
            (logs / "postgres.log").write_text(postgres.log_path.read_text(errors="replace"))

    seg_rate = args.ids / seg.total
    row_rate = args.row_ids / row.total
    mode = "every id named (LeaseRefColumns)" if args.per_document else "whole segment leases by token"
    form = "a message per id" if args.per_message else "columns"
    print(
        f"segment backend ({mode}; enqueued as {form}): {args.ids:,} ids in {seg.total:.2f} s = "
        f"{seg_rate:,.0f} ids/s (enqueue {seg.enqueue:.2f} s = {args.ids / seg.enqueue:,.0f} ids/s; "
        f"claim+complete {seg.drain:.2f} s = {args.ids / seg.drain:,.0f} ids/s); with the workers' "
        f"start-up ({seg.startup:.2f} s) {args.ids / (seg.total + seg.startup):,.0f} ids/s; peak "
        f"PostgreSQL rows {seg.peak} (goal <= 110); S3 objects left {len(leftovers)}; load "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"row backend: {args.row_ids:,} ids in {row.total:.2f} s = {row_rate:,.0f} ids/s "
        f"(enqueue {row.enqueue:.2f} s; claim+complete {row.drain:.2f} s); peak PostgreSQL rows {row.peak}"
    )
    print(
        f"ratio segment / row (ids/s): {seg_rate / row_rate:.1f}; segment goal >= 1,000,000 ids/s (issue 18)"
    )


if __name__ == "__main__":
    main()
