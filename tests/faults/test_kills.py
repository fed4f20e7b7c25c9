"""Kill faults: every process of the suite killed with SIGKILL while documents flow.

A private suite (:class:`faults.killstack.KillStack`: PostgreSQL, SeaweedFS S3, Triton on CPU,
the embedder, the claimer, the gateway with Milvus Lite, the embedder's worker loop and the
summarizer) runs a steady workload (:class:`faults.kill_workload.Workload`: waves of ids
enqueued on a segment-backend and a row-backend pipeline, extracted and staged, embedded and
indexed, re-staged and deleted meanwhile, and a summarizer job). At seeded random points each
process is killed with SIGKILL, stays down a seeded moment, and is restarted by the test
(not by ``hevlayer up``'s supervisor). Once the schedule is over the run finishes, and the
stores themselves are audited: every live document ``indexed`` in PostgreSQL and nothing
else; no lease, segment or manifest left; the stage counters and backing counts exact; after
the orphan sweep every pack object in S3 is one a live document points into; the Milvus Lite
file holds exactly the current chunks of every document (no stale, duplicated or missing row).

``HEVLAYER_FAULT_SEED`` replays a run (the seed is printed with every failure); it is 1 by
default, so that ``make test`` is repeatable, and ``random`` draws a fresh one;
``HEVLAYER_FAULT_ROUNDS`` (default 1) is how many times each process is killed and
``HEVLAYER_FAULT_WAVE`` (default 30) the ids per ingest wave and pipeline. ``make faults``
runs a longer campaign over several seeds; docs/reliability.md ("Kill faults") has its results.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.kill_workload import (
    Audit,
    Workload,
    audit_bucket,
    audit_database,
    audit_index,
    sweep_orphan_manifests,
    sweep_orphans,
)
from faults.killstack import PROCESSES, KillStack, descendants, process_name, wait_gone

from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess, find_console_script

_SEED = os.environ.get("HEVLAYER_FAULT_SEED") or "1"
SEED = random.SystemRandom().randrange(1, 10**6) if _SEED == "random" else int(_SEED)
ROUNDS = int(os.environ.get("HEVLAYER_FAULT_ROUNDS") or 1)
WAVE = int(os.environ.get("HEVLAYER_FAULT_WAVE") or 30)
REPLAY = (
    f"seed {SEED} (replay: HEVLAYER_FAULT_SEED={SEED} HEVLAYER_FAULT_ROUNDS={ROUNDS} "
    f"HEVLAYER_FAULT_WAVE={WAVE} pytest tests/faults/test_kills.py)"
)


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillStack]:
    stack = KillStack(tmp_path_factory.mktemp("kill-faults") / "data")
    try:
        stack.start()
    except BaseException:
        print(stack.log_tails())
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()


def kill_schedule(rng: random.Random, rounds: int) -> list[tuple[str, float, float]]:
    """(process, seconds of work before the kill, seconds down) for every kill, seeded."""
    schedule = []
    for _ in range(rounds):
        for name in rng.sample(PROCESSES, len(PROCESSES)):
            schedule.append((name, rng.uniform(0.5, 4.0), rng.uniform(0.0, 2.0)))
    return schedule


async def run_kills(
    stack: KillStack, workload: Workload, schedule: list[tuple[str, float, float]]
) -> list[str]:
    """Kill and restart per ``schedule`` while the workload runs; a line per kill."""
    events = []
    started = time.monotonic()
    for name, work, down in schedule:
        await asyncio.sleep(work)
        workload.check_tasks()
        indexed = await workload.indexed()
        await asyncio.to_thread(stack.kill, name)
        killed_at = time.monotonic() - started
        await asyncio.sleep(down)
        begin = time.monotonic()
        await asyncio.to_thread(stack.restart, name)
        events.append(
            f"{killed_at:7.1f}s kill -9 {name:<16} ({indexed} indexed before), down {down:.1f}s, "
            f"back in {time.monotonic() - begin:.1f}s"
        )
    return events


@pytest.mark.timeout(1800)
async def test_every_process_killed_mid_run_loses_nothing_and_leaves_nothing(kill_stack: KillStack) -> None:
    rng = random.Random(SEED)
    schedule = kill_schedule(rng, ROUNDS)
    events: list[str] = []
    name = f"kill-{SEED}-{random.SystemRandom().randrange(16**4):04x}"
    try:
        async with Workload(kill_stack, rng, wave_size=WAVE, name=name, backlog=10 * WAVE) as workload:
            await workload.create_pipelines()
            for model in workload.pipelines.values():
                await workload.enqueue_wave(model)
            workload.start()
            events = await run_kills(kill_stack, workload, schedule)
            await workload.finish(timeout=600)
            swept = await sweep_orphans(workload)
            swept_manifests = await sweep_orphan_manifests(workload)

            result = Audit()
            live_objects = await audit_database(workload, result)
            await audit_bucket(workload, live_objects, result)
            kill_stack.service("gateway").process.stop(grace=10)  # Milvus Lite has one owner
            audit_index(workload, result)
            kill_stack.restart("gateway")

            summary = [
                f"{REPLAY}",
                *events,
                *(
                    f"{m.pipeline_id} ({m.backend}): {len(m.expected)} documents, {m.restaged} re-staged, "
                    f"{m.deleted} deleted, {len(m.enqueued_waves)} waves"
                    for m in workload.pipelines.values()
                ),
                f"summarizer: {len(workload.job_ids)} jobs, {workload.job_submissions} submissions",
                f"orphan packs swept: {swept}, orphan manifests swept: {swept_manifests}",
                f"audited {result.documents} documents, {result.chunks} index rows: lost {result.lost}, "
                f"stale {result.stale}, duplicated {result.duplicated}",
                f"errors clients retried: {dict(workload.errors.codes)}",
            ]
            print("\n".join(summary))
            assert not result.problems, "\n".join([*summary, *result.problems[:50]])
    except BaseException:
        print(f"kill faults failed with {REPLAY}\n" + "\n".join(events) + "\n" + kill_stack.log_tails())
        raise


# A parent that never reaps the orphans below it (as a container's PID 1 that is no init): the
# launcher's children are reparented to it when the launcher dies and stay zombies there. It
# waits for the launcher alone, then sleeps until the test kills it.
UNREAPING_PARENT = """
import ctypes, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
subprocess.run(sys.argv[1:], check=False)
time.sleep(3600)
"""


@pytest.mark.parametrize("parent", ["test", "unreaping"])
def test_a_triton_launcher_killed_takes_its_server_with_it(tmp_path: Path, parent: str) -> None:
    """``hevlayer-triton-local`` (Triton under ``hevlayer up``) runs tritonserver in a session of
    its own; killed with SIGKILL, the launcher must not leave that server holding the port (a
    restarted launcher could not bind it), nor the server's Python backend stubs holding the
    model. The launcher runs under the test, or under a parent that never reaps orphans: there the
    dead server surely stays a zombie, which the stub's own check of its server (``kill(pid, 0)``)
    takes for alive."""
    launcher_argv = [
        str(find_console_script("hevlayer-triton-local")),
        "--grpc-port",
        str(free_port()),
        "--workdir",
        str(tmp_path / "triton"),
    ]
    argv = launcher_argv if parent == "test" else [sys.executable, "-c", UNREAPING_PARENT, *launcher_argv]
    root = ServiceProcess(argv, name="triton", log_path=tmp_path / "triton.log").start()
    servers: list[int] = []
    stubs: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not stubs:  # the stubs start once the server loads the model
            assert root.running, root.log_tail()
            assert time.monotonic() < deadline, f"no tritonserver with its stubs started\n{root.log_tail()}"
            below = descendants(root.pid or 0)
            servers = [pid for pid in below if process_name(pid) == "tritonserver"]
            stubs = [
                pid
                for s in servers
                for pid in descendants(s)
                if process_name(pid).startswith("triton_python")
            ]
            time.sleep(0.1)
        # Kill a server that serves: once the model is loaded (its stubs have run `initialize`,
        # which starts their watch of the server), not while the stubs are still importing.
        server_log = tmp_path / "triton" / "tritonserver.log"
        while "successfully loaded" not in (server_log.read_text() if server_log.exists() else ""):
            assert root.running, root.log_tail()
            assert time.monotonic() < deadline, f"the model did not load\n{root.log_tail()}"
            time.sleep(0.1)
        launcher = root.pid if parent == "test" else _launcher_below(root.pid or 0)
        os.kill(launcher or 0, signal.SIGKILL)  # the launcher alone, not its group
        if parent == "test":
            root.wait(timeout=30)
        wait_gone(servers)
        wait_gone(stubs)
    finally:
        root.kill()
        for pid in [*servers, *stubs]:  # what a failed run left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _launcher_below(pid: int) -> int:
    launchers = [child for child in descendants(pid) if process_name(child) == "hevlayer-triton"]
    assert len(launchers) == 1, f"no single hevlayer-triton-local below pid {pid}: {launchers}"
    return launchers[0]
