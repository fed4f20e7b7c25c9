"""The segment phase of bench/segments.py (enqueue, then claim + complete by lease token)
against two claimer code versions on the same PostgreSQL and SeaweedFS S3, alternated round by
round, so that the machine's other load hits both alike.

Each version is a claimer process whose ``PYTHONPATH`` puts a copy of a claimer package first
(``NAME=DIR``, DIR holding ``hevlayer/claimer``; ``NAME=`` for the working tree). Prints, per
phase and as medians, ids/s (end to end, enqueue, claim + complete) and the claimer's CPU per
id (its own /proc time over the phase: the least noisy view on a shared machine), with the CPU per
id of PostgreSQL (postmaster and backends), SeaweedFS, the enqueueing client and the workers.

    mkdir -p /tmp/before/hevlayer && git archive HEAD~1 services/claimer/src/hevlayer/claimer \\
        | tar -x --strip-components=3 -C /tmp/before
    .venv/bin/python bench/segments_ab.py --ids 200000 --rounds 4 before=/tmp/before after=

A claimer from before the ``document_ids`` column (issue 18) needs its ids as one message
each: ``--per-message before``. Claim + complete is timed from when the workers are connected
(:class:`segments.Phase`).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

from claims import cpu_seconds, postgres_cpu_seconds, start_process
from segments import run_phase

from hevlayer.devstack import TEST_SETTINGS, PostgresServer, SeaweedS3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ids", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "versions", nargs=2, help="NAME=DIR (DIR/hevlayer/claimer first on PYTHONPATH; empty: tree)"
    )
    parser.add_argument(
        "--per-message",
        action="append",
        default=[],
        metavar="NAME",
        help="enqueue one EnqueuedDocument message per id to this version (a claimer without the "
        "document_ids column ignores it); others get the column",
    )
    args = parser.parse_args()
    versions = dict(v.split("=", 1) for v in args.versions)
    per_message = set(args.per_message)
    if len(versions) != 2:
        raise SystemExit("versions: two different names, e.g. before=/tmp/before after=")
    logs = Path(tempfile.mkdtemp(prefix="hevlayer-bench-segments-ab-"))
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; logs in {logs}", flush=True
    )
    bucket = "bench"
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in versions}
    with PostgresServer(settings=TEST_SETTINGS) as postgres, SeaweedS3(buckets=(bucket,)) as s3:
        claimers = {}
        for name, path in versions.items():
            env = {
                "DATABASE_URL": postgres.dsn,
                "PIPELINE_SEGMENT_SIZE": "10000",
                "CLAIMER_MANIFEST_CACHE_IDS": str(max(args.ids, 1)),
                **s3.client_env(bucket),
            }
            if path:
                env["PYTHONPATH"] = path
            claimers[name] = start_process("hevlayer-claimer", env, logs, name=f"claimer-{name}")
        try:
            for round_number in range(args.rounds):
                order = list(versions) if round_number % 2 == 0 else list(reversed(versions))
                for name in order:
                    process, address = claimers[name]
                    marks: list[float] = []
                    before = cpu_seconds(process.pid)
                    others_before = (postgres_cpu_seconds(postgres.data_dir), cpu_seconds(s3.pid))
                    phase = run_phase(
                        address,
                        postgres.dsn,
                        "segment",
                        args.ids,
                        args.workers,
                        10_000,
                        columns=name not in per_message,
                        on_enqueued=functools.partial(
                            lambda m, pid: m.append(cpu_seconds(pid)), marks, process.pid
                        ),
                    )
                    enqueue_cpu = (marks.pop() - before) / args.ids * 1e6
                    cpu = (cpu_seconds(process.pid) - before) / args.ids * 1e6
                    pg, weed = (
                        (now - then) / args.ids * 1e6
                        for now, then in zip(
                            (postgres_cpu_seconds(postgres.data_dir), cpu_seconds(s3.pid)),
                            others_before,
                            strict=True,
                        )
                    )
                    client = phase.enqueue_cpu / args.ids * 1e6
                    workers = phase.workers_cpu / args.ids * 1e6
                    rates = (args.ids / phase.total, args.ids / phase.enqueue, args.ids / phase.drain)
                    results[name].append((*rates, cpu, pg, weed, client, workers, enqueue_cpu))
                    print(
                        f"{name}: {rates[0]:,.0f} ids/s (enqueue {rates[1]:,.0f}, "
                        f"claim+complete {rates[2]:,.0f}); CPU us/id: claimer {cpu:.2f} (enqueue "
                        f"{enqueue_cpu:.2f}, claim+complete {cpu - enqueue_cpu:.2f}), PostgreSQL "
                        f"{pg:.2f}, S3 {weed:.2f}, enqueue client {client:.2f}, workers {workers:.2f}; "
                        f"workers' start-up {phase.startup:.2f} s; load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        finally:
            for process, _ in claimers.values():
                process.stop()
    for name, rows in results.items():
        m = [statistics.median(r[i] for r in rows) for i in range(9)]
        drain_cpu = statistics.median(r[3] - r[8] for r in rows)
        print(
            f"median {name}: {m[0]:,.0f} ids/s (enqueue {m[1]:,.0f}, claim+complete {m[2]:,.0f}); "
            f"CPU us/id: claimer {m[3]:.2f} (enqueue {m[8]:.2f}, claim+complete {drain_cpu:.2f}), "
            f"PostgreSQL {m[4]:.2f}, S3 {m[5]:.2f}, enqueue client "
            f"{m[6]:.2f}, workers {m[7]:.2f}"
        )


if __name__ == "__main__":
    main()
