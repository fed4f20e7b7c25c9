"""``hevlayer up`` keeps the suite up: a process killed with SIGKILL comes back on the same ports.

One suite (``hevlayer up --detach``, Triton included) serves every kill: for each victim a
fresh pipeline gets documents before the kill (for the gateway, an add is also running while it
dies, and must finish), the victim is killed, the test waits until
``hevlayer status --services`` shows it running again with one restart, then adds more
documents; every document of the pipeline must end ``indexed``. A second, reduced suite
(no embedder) shows a crash loop: the claimer's port is taken while it is down, so each
restart exits at once, and ``up`` stops the suite and prints the claimer's log tail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import hevlayer

from hevlayer.cli.stack import EMBEDDER_WORKER_COMMAND, UpState, has_console_script
from hevlayer.client import Client, ClientOptions
from hevlayer.common.auth import bearer_metadata
from hevlayer.devstack.supervisor import SupervisorSettings, exit_text
from hevlayer.devstack.tokens import read_admin_token

DEADLINE = 300.0
"""Generous: a restarted gateway or Triton on a busy 2-core machine takes a while."""


def _state(data_dir: Path) -> UpState:
    state = UpState.read(data_dir)
    assert state is not None, f"hevlayer is not up in {data_dir}"
    return state


def _wait_restarted(data_dir: Path, name: str, old_pid: int, restarts: int) -> None:
    deadline = time.monotonic() + DEADLINE
    seen = ""
    while time.monotonic() < deadline:
        ran = hevlayer("--data-dir", data_dir, "status", "--services")
        assert ran.returncode == 0, ran
        seen = ran.stdout
        row = next((line.split() for line in seen.splitlines() if line.split()[:1] == [name]), None)
        if row is not None and row[2] == "running" and row[3] == str(restarts) and row[1] != str(old_pid):
            assert row[4] == "SIGKILL" or name == "postgres", row
            return
        time.sleep(1.0)
    pytest.fail(f"{name} did not come back with restarts={restarts}:\n{seen}")


def _indexed(data_dir: Path, pipeline: str) -> dict[str, int]:
    token = read_admin_token(data_dir)
    assert token is not None

    async def status() -> dict[str, int]:
        options = ClientOptions(metadata=[bearer_metadata(token)])
        async with Client.connect(_state(data_dir).gateway, options) as gateway:
            return dict((await gateway.pipelines.status(pipeline)).counts)

    return asyncio.run(status())


def _tree(root: Path, tag: str, count: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"{tag}-{i}.txt").write_text(f"Note {i} about {tag}: the {tag} process was tested here.\n")
    return root


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not has_console_script(EMBEDDER_WORKER_COMMAND):
        pytest.fail(f"console script {EMBEDDER_WORKER_COMMAND!r} is not installed (services/embedder)")
    data_dir = tmp_path_factory.mktemp("supervised") / "data"
    started = hevlayer("--data-dir", data_dir, "up", "--detach", timeout=600)
    assert started.returncode == 0, f"{started}\n{(data_dir / 'logs' / 'up.log').read_text(errors='replace')}"
    try:
        yield data_dir
    finally:
        stopped = hevlayer("--data-dir", data_dir, "down", timeout=180)
        assert stopped.returncode == 0, stopped


@pytest.mark.parametrize("victim", ["embedder-worker", "gateway", "claimer", "postgres"])
def test_a_killed_process_comes_back_and_nothing_is_lost(suite: Path, tmp_path: Path, victim: str) -> None:
    pipeline = f"sup-{victim}-{uuid.uuid4().hex[:6]}"
    env = {"HEVLAYER_DATA_DIR": str(suite)}
    created = hevlayer("pipelines", "create", pipeline, env=env)
    assert created.returncode == 0, created
    before = hevlayer("add", _tree(tmp_path / "before", victim), "-p", pipeline, env=env, timeout=400)
    assert before.returncode == 0, before

    state = _state(suite)
    info = state.supervision[victim]
    addresses = (dict(state.services), dict(state.http))
    in_flight = None
    if victim == "gateway":  # an add running while the gateway dies rides out its restart
        during = _tree(tmp_path / "during", "during", 20)
        in_flight = subprocess.Popen(
            [sys.executable, "-m", "hevlayer.cli", "add", str(during), "-p", pipeline],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "HEVLAYER_GATEWAY": "", **env},
        )
    os.kill(int(info["pid"]), signal.SIGKILL)
    if victim == "gateway":  # the CLI's idempotent calls wait for the gateway to come back
        riding = hevlayer("status", "-p", pipeline, env=env, timeout=300)
        assert riding.returncode == 0, riding
        assert pipeline in riding.stdout, riding
    _wait_restarted(suite, victim, int(info["pid"]), int(info["restarts"]) + 1)
    after_state = _state(suite)
    assert (dict(after_state.services), dict(after_state.http)) == addresses, "a restart moved a port"

    after = hevlayer(
        "add", _tree(tmp_path / "after", f"{victim}-again"), "-p", pipeline, env=env, timeout=400
    )
    assert after.returncode == 0, after
    expected = 6
    if in_flight is not None:
        output, _ = in_flight.communicate(timeout=600)
        assert in_flight.returncode == 0, output
        expected += 20
    counts = _indexed(suite, pipeline)
    assert counts.get("indexed") == expected, counts
    log = (suite / "logs" / "up.log").read_text(errors="replace")
    assert f'"event": "service_exited", "service": "{victim}"' in log, log[-3000:]


def test_a_crash_loop_stops_the_suite_with_the_log_tail(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "HEVLAYER_GATEWAY": "",
        "HEVLAYER_UP_MAX_RESTARTS": "2",
        "HEVLAYER_UP_RESTART_BACKOFF": "2",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "hevlayer.cli", "--data-dir", str(data_dir), "up", "--no-embedder"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        state = UpState.read(data_dir)
        while state is None and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            state = UpState.read(data_dir)
        assert state is not None, up.communicate(timeout=60)
        host, port = state.services["claimer"].rsplit(":", 1)
        os.kill(int(state.supervision["claimer"]["pid"]), signal.SIGKILL)
        with socket.socket() as squatter:  # the claimer's port, taken while it is down
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            bound_by = time.monotonic() + 30
            while True:
                try:
                    squatter.bind((host, int(port)))
                    break
                except OSError:
                    assert time.monotonic() < bound_by, "the claimer's port stayed busy"
                    time.sleep(0.05)
            squatter.listen()
            stdout, stderr = up.communicate(timeout=DEADLINE)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.communicate(timeout=120)
    assert up.returncode == 1, (stdout, stderr)
    assert '"event": "crash_loop", "service": "claimer"' in stderr, stderr
    assert "claimer exited 3 times within 300 s" in stderr, stderr
    assert f"--- {data_dir / 'logs' / 'claimer.log'} ---" in stderr, stderr
    assert UpState.read(data_dir) is None


def test_a_bad_supervision_setting_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HEVLAYER_UP_RESTART_WINDOW"):
        SupervisorSettings.from_env({"HEVLAYER_UP_RESTART_WINDOW": "soon"})
    with pytest.raises(ValueError, match="HEVLAYER_UP_MAX_RESTARTS"):
        SupervisorSettings.from_env({"HEVLAYER_UP_MAX_RESTARTS": "-1"})
    ran = hevlayer(
        "--data-dir", tmp_path / "data", "up", "--no-embedder", env={"HEVLAYER_UP_MAX_RESTARTS": "many"}
    )
    assert ran.returncode == 1, ran
    assert "HEVLAYER_UP_MAX_RESTARTS: not a number: 'many'" in ran.stderr, ran


def test_exits_read_as_codes_and_signals() -> None:
    assert exit_text(-9) == "SIGKILL"
    assert exit_text(3) == "exit 3"
    assert exit_text(None) == "unknown"
