"""Soak: steady ingest through the whole local suite for N minutes, with periodic kills.

The suite and the workload are those of the kill faults (``tests/faults/killstack.py``,
``tests/faults/kill_workload.py``): PostgreSQL, SeaweedFS S3, Triton on CPU, the embedder,
the claimer, the gateway with Milvus Lite, the embedder's worker loop and the summarizer;
ids enqueued on a segment-backend and a row-backend pipeline (a new wave whenever the backlog
is below ``--backlog``), extracted, embedded, re-staged and deleted, and summarizer jobs. Every
``--kill-every`` seconds one process (seeded order over all of them) is killed with SIGKILL and
restarted.

Every ``--sample-seconds`` it samples, per process (its whole process tree): resident memory
(RSS), open file descriptors, and TCP connections to PostgreSQL (for PostgreSQL itself: the
client connections it serves); and documents indexed (each
staged version counted once, read from PostgreSQL). At the end it prints per process the
slope of each series (least squares, per minute, over the samples since the process's last
restart, the first minute of a fresh process left out as warm-up), the documents indexed per
minute, and the last full minute / first full minute ratio (no decay: ~1). Then the run is
audited like the fault test (lost, stale, duplicated: 0).

    .venv/bin/python bench/soak.py [--minutes 10] [--kill-every 60] [--seed N] [--keep]

The data directory (logs included) is removed after a clean run, kept after a failed one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faults.kill_workload import (
    Audit,
    Workload,
    audit_bucket,
    audit_database,
    audit_index,
    sweep_orphan_manifests,
    sweep_orphans,
)
from faults.killstack import PROCESSES, KillStack


def _tree_stats(pids: list[int], postgres_port: int) -> tuple[float, int, int]:
    """(RSS MiB, open fds, TCP connections to PostgreSQL) of a process tree."""
    rss_kib = 0
    fds = 0
    inodes: set[str] = set()
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
            for fd in os.scandir(f"/proc/{pid}/fd"):
                fds += 1
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    connections = 0
    if postgres_port and inodes:
        port_hex = f"{postgres_port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if state == "01" and remote.endswith(":" + port_hex) and inode in inodes:
                    connections += 1
    return rss_kib / 1024, fds, connections


@dataclass
class Series:
    """One process's samples: (minutes since start, value), reset at each restart."""

    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    started: float = 0.0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 with fewer than 3)."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


async def client_backends(dsn: str) -> int | None:
    """Client connections PostgreSQL serves (``pg_stat_activity``), this one left out; None while
    it is down."""
    try:
        connection = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        value = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    except (OSError, asyncpg.PostgresError):
        return None
    finally:
        await connection.close()
    return int(value)


async def indexed_versions(dsn: str, pipelines: list[str]) -> set[tuple[str, str, int]]:
    """(pipeline, document, fencing token) of every indexed document (a re-staged document
    is indexed under a new token: each staged version counts once)."""
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT pipeline_id, document_id, fencing_token FROM documents "
            "WHERE pipeline_id = ANY($1) AND stage = 'indexed'",
            pipelines,
        )
    finally:
        await connection.close()
    return {(r["pipeline_id"], r["document_id"], int(r["fencing_token"])) for r in rows}


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed or random.SystemRandom().randrange(1, 10**6)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="hevlayer-soak-"))
    print(
        f"soak: {args.minutes} min, a kill every {args.kill_every} s, seed {seed}, data in {root}", flush=True
    )
    stack = KillStack(root / "data")
    stack.start()
    series: dict[str, Series] = {name: Series() for name in PROCESSES}
    seen: set[tuple[str, str, int]] = set()
    indexed_at: list[tuple[float, int]] = []
    kills: list[str] = []
    try:
        async with Workload(
            stack, rng, wave_size=args.wave, name=f"soak-{seed}", backlog=args.backlog
        ) as workload:
            await workload.create_pipelines()
            pipelines = [m.pipeline_id for m in workload.pipelines.values()]
            workload.start()
            begin = time.monotonic()
            end = begin + args.minutes * 60
            next_kill = begin + args.kill_every
            next_sample = begin
            order: list[str] = []
            for name in PROCESSES:
                series[name].started = 0.0
            while time.monotonic() < end:
                workload.check_tasks()
                now = time.monotonic()
                minute = (now - begin) / 60
                if now >= next_sample:
                    next_sample += args.sample_seconds
                    postgres_port = stack.stack.postgres.port
                    backends = await client_backends(stack.dsn)
                    for name in PROCESSES:
                        try:
                            pids = stack.pids(name)
                        except (OSError, ValueError, KeyError):
                            continue  # down this sample
                        if not pids:
                            continue
                        rss, fds, pg = _tree_stats(pids, postgres_port)
                        if name == "postgres":
                            if backends is None:
                                continue
                            pg = backends  # the server's side: every client connection
                        if minute - series[name].started >= args.warmup / 60:
                            for key, value in (("rss_mib", rss), ("fds", fds), ("pg_connections", pg)):
                                series[name].samples[key].append((minute, value))
                    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
                        seen |= await indexed_versions(stack.dsn, pipelines)  # unless PostgreSQL is down
                    indexed_at.append((minute, len(seen)))
                if now >= next_kill:
                    next_kill += args.kill_every
                    if not order:
                        order = rng.sample(PROCESSES, len(PROCESSES))
                    name = order.pop()
                    await asyncio.to_thread(stack.kill, name)
                    await asyncio.sleep(rng.uniform(0.0, 2.0))
                    await asyncio.to_thread(stack.restart, name)
                    restarted = (time.monotonic() - begin) / 60
                    series[name] = Series(started=restarted)
                    kills.append(f"{minute:5.1f} min  kill -9 {name}")
                    print(kills[-1], flush=True)
                await asyncio.sleep(0.5)
            await workload.finish(timeout=600)
            await sweep_orphans(workload)
            await sweep_orphan_manifests(workload)
            result = Audit()
            live = await audit_database(workload, result)
            await audit_bucket(workload, live, result)
            stack.service("gateway").process.stop(grace=10)
            audit_index(workload, result)
    finally:
        stack.stop()

    print(f"\nsoak: {args.minutes} min, {len(kills)} kills, seed {seed}")
    print("\nper process, slope per minute since its last restart (warm-up left out):")
    print(
        f"{'process':<16} {'RSS MiB/min':>12} {'fds/min':>9} {'PG conns/min':>13} "
        f"{'samples':>8} {'RSS MiB':>8}"
    )
    for name in PROCESSES:
        samples = series[name].samples
        rss_series = samples.get("rss_mib", [])
        print(
            f"{name:<16} {slope(rss_series):>12.2f} {slope(samples.get('fds', [])):>9.2f} "
            f"{slope(samples.get('pg_connections', [])):>13.2f} {len(rss_series):>8} "
            f"{(rss_series[-1][1] if rss_series else 0):>8.0f}"
        )
    per_minute = []
    for m in range(int(args.minutes)):
        inside = [n for t, n in indexed_at if m <= t < m + 1]
        before = [n for t, n in indexed_at if t < m]
        start = before[-1] if before else 0
        per_minute.append((inside[-1] if inside else start) - start)
    print("\ndocuments indexed per minute:", " ".join(str(n) for n in per_minute))
    if len(per_minute) >= 2 and per_minute[0]:
        print(f"last minute / first minute: {per_minute[-1] / per_minute[0]:.2f}")
    print(
        f"\naudit: {result.documents} documents, {result.chunks} index rows: lost {result.lost}, "
        f"stale {result.stale}, duplicated {result.duplicated}, problems {len(result.problems)}"
    )
    for problem in result.problems[:20]:
        print("  ", problem)
    if result.problems or args.keep:
        print(f"data and logs kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if result.problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the steady ingest (default 10)"
    )
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (default: a fresh one, printed)")
    parser.add_argument("--wave", type=int, default=30, help="ids per ingest wave and pipeline (default 30)")
    parser.add_argument(
        "--backlog",
        type=int,
        default=200,
        help="a new wave only while fewer ids wait per pipeline (default 200)",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="sampling interval (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory of a clean run too")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of a fresh process left out (60)")
    sys.exit(asyncio.run(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
