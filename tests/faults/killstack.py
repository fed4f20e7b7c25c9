"""A whole local suite whose processes a fault test (or ``bench/soak.py``) kills and restarts.

:class:`KillStack` runs what ``hevlayer up --summarizer`` runs — PostgreSQL, SeaweedFS S3,
Triton serving all-MiniLM-L6-v2 on CPU, the embedder, the claimer, the gateway with Milvus
Lite, the embedder's worker loop and the summarizer — from the same ``ServiceSpec`` list
(:func:`hevlayer.cli.stack.suite_services`), but private to its caller and without the
supervisor of ``hevlayer up``: the caller kills a process with SIGKILL
(:meth:`KillStack.kill`) and brings it back itself (:meth:`KillStack.restart`) on the same
addresses and data, so that nothing but the fault under test happens.

Every process keeps its ports across restarts (PostgreSQL and S3 are given fixed ports, the
services keep the ``HEVLAYER_*_ADDRESS`` they were started with). What "kill -9" means for each:

- a service (``claimer``, ``gateway``, ``embedder``, ``embedder-worker``, ``summarizer``):
  SIGKILL to its process group (Milvus Lite's server, a child of the gateway, dies with it);
- ``triton``: SIGKILL to the ``tritonserver`` process itself (and its python backend stubs);
  the launcher around it then exits, as a supervisor would see it;
- ``postgres``: SIGKILL to the postmaster and every backend (an OOM kill of the server);
  the restart runs crash recovery;
- ``s3``: SIGKILL to ``weed mini`` (master, volume, filer and S3 in one process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hevlayer.cli.stack import suite_services
from hevlayer.devstack import TEST_SETTINGS, DevStack, PostgresServer, SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.stack import RunningService

PROCESSES = (
    "embedder-worker",
    "embedder",
    "gateway",
    "claimer",
    "triton",
    "postgres",
    "s3",
    "summarizer",
)
"""Every process of the suite a fault run kills."""

KILL_SETTINGS = {key: value for key, value in TEST_SETTINGS.items() if key != "synchronous_commit"}
"""PostgreSQL as the tests run it, but with ``synchronous_commit`` on (the server default): a
commit is acknowledged once its WAL is written, so a killed server loses no acknowledged
transaction. With it off (``TEST_SETTINGS``) a kill loses the last few hundred milliseconds of
acknowledged commits by design — a trade a deployment would have chosen, not a fault. ``fsync``
stays off: the operating system survives a process kill, and with it the written WAL."""

FAULT_ENV: dict[str, dict[str, str]] = {
    # Segments of 40 ids: a few hundred ids make several segments, and claims split them.
    "claimer": {"PIPELINE_SEGMENT_SIZE": "40", "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3"},
    "gateway": {
        # The fault client sends no token; authentication is tested in tests/gateway/test_auth.py.
        "GATEWAY_AUTH": "off",
        "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3",
        "GATEWAY_ORPHAN_RETRY_SECONDS": "1",
    },
    # Short leases: what a killed worker held comes back within seconds.
    "embedder-worker": {
        "EMBEDDER_WORKER_LEASE_SECONDS": "6",
        "EMBEDDER_WORKER_RETRY_MAX_BACKOFF_SECONDS": "1",
        "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3",
    },
    "embedder": {"HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3"},
    "summarizer": {"SUMMARIZER_STAGE_MAX_ATTEMPTS": "1000", "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3"},
}


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _sigkill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited = 0
                # not our child: alive unless its /proc state says zombie
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            if waited == 0:
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.05)
    raise TimeoutError(f"processes {pids} still alive {timeout} s after SIGKILL")


class KillStack:
    """The suite under ``data_dir``; :meth:`kill` and :meth:`restart` any of :data:`PROCESSES`."""

    def __init__(self, data_dir: Path, extra_env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.data_dir = data_dir.absolute()
        specs = []
        for spec in suite_services(self.data_dir, summarizer=True, worker=True):
            env = {**spec.env, **FAULT_ENV.get(spec.name, {}), **(extra_env or {}).get(spec.name, {})}
            # Free ports only: a preferred one (the gateway's 50051) may be another suite's by
            # the time a restart binds it, and its health check would answer for ours.
            specs.append(dataclasses.replace(spec, env=env, grpc_port=None, http_port=None))
        self._quiet = self.data_dir.parent / "killstack.out"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._out = self._quiet.open("a")
        self.stack = DevStack(self.data_dir, specs, postgres_settings=KILL_SETTINGS, out=self._out)
        # Fixed ports: a restarted PostgreSQL or S3 must come back where the services look for it.
        self.stack.postgres = PostgresServer(
            self.data_dir / "postgres",
            port=free_port(),
            settings=KILL_SETTINGS,
            log_path=self.stack.logs_dir / "postgres.log",
        )
        self.stack.s3 = SeaweedS3(
            self.data_dir / "s3",
            port=free_port(),
            buckets=(self.stack.bucket,),
            log_path=self.stack.logs_dir / "s3.log",
        )
        self.kills: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> KillStack:
        self.stack.start()
        return self

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self._out.close()

    def __enter__(self) -> KillStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------

    def service(self, name: str) -> RunningService:
        for running in self.stack.running:
            if running.spec.name == name:
                return running
        raise KeyError(f"no service {name!r} in the stack")

    @property
    def gateway(self) -> str:
        return self.service("gateway").grpc_address

    @property
    def gateway_http(self) -> str:
        return self.service("gateway").http_address

    @property
    def summarizer(self) -> str:
        return self.service("summarizer").grpc_address

    @property
    def dsn(self) -> str:
        return self.stack.postgres.dsn

    @property
    def bucket(self) -> str:
        return self.stack.bucket

    @property
    def s3(self) -> SeaweedS3:
        return self.stack.s3

    @property
    def milvus_path(self) -> Path:
        return self.data_dir / "vectors.db"

    def pids(self, name: str) -> list[int]:
        """The process ids ``name`` runs as (the leader first, then its descendants)."""
        if name == "postgres":
            pid_file = self.stack.postgres.data_dir / "postmaster.pid"
            leader = int(pid_file.read_text().split()[0])
        elif name == "s3":
            leader = self.stack.s3.pid or 0
        else:
            leader = self.service(name).process.pid or 0
        if not leader:
            return []
        return [leader, *descendants(leader)]

    # -- faults ---------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` (see the module docstring for what that is per process)."""
        self.kills[name] += 1
        if name == "postgres":
            pids = self.pids("postgres")
            _sigkill(pids)
            wait_gone(pids)
        elif name == "s3":
            s3 = self.stack.s3
            proc = s3._proc
            assert proc is not None, "S3 is not running"
            pids = self.pids("s3")
            _sigkill(pids)
            proc.wait()
            wait_gone(pids)
        elif name == "triton":
            launcher = self.service("triton").process
            assert launcher.pid is not None
            # tritonserver runs in its own session below the launcher: kill it, not the launcher.
            servers = [pid for pid in descendants(launcher.pid) if process_name(pid) == "tritonserver"]
            assert servers, f"no tritonserver below the triton launcher (pid {launcher.pid})"
            pids = [p for s in servers for p in (s, *descendants(s))]
            _sigkill(pids)
            wait_gone(pids)
        else:
            process = self.service(name).process
            pids = self.pids(name)
            process.kill()
            wait_gone(pids)

    def restart(self, name: str) -> None:
        """Start ``name`` again on its addresses and data (after :meth:`kill`); wait until ready."""
        if name == "postgres":
            postgres = self.stack.postgres
            postgres._started = False  # the killed server left its state behind
            postgres.start()
        elif name == "s3":
            s3 = self.stack.s3
            s3._proc = None
            if s3._log_handle is not None:
                s3._log_handle.close()
                s3._log_handle = None
            s3.start()
        else:
            running = self.service(name)
            old = running.process
            if old.running:  # the triton launcher exits on its own once its server died
                old.wait(timeout=30)
            old.kill()  # reap, close the log
            fresh = ServiceProcess(
                old.command,
                name=old.name,
                env=old.env,
                log_path=old.log_path,
                cwd=old.cwd,
                grpc_address=old.grpc_address,
            )
            fresh.start()
            running.process = fresh
            fresh.wait_ready(timeout=running.spec.ready_timeout)

    def log_tails(self, lines: int = 30) -> str:
        """The end of every log (printed when a fault run fails)."""
        parts = []
        for path in sorted(self.stack.logs_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
