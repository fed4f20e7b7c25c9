"""``hevlayer up`` / ``hevlayer down``: the whole suite on embedded defaults.

The services are ``hevlayer.devstack`` ``ServiceSpec`` values (the devstack's
data-driven list), extended here with what a complete local suite needs:
a real Triton serving the embedding model, the embedder, the gateway wired to
both the claimer and the embedder (Milvus Lite and the chunk cache under the
data directory), the embedder's worker when it is installed, and the
summarizer (the Job Lane: ``hevlayer add --summaries``) when it is installed.
Everything lives under one data directory (default ``./.hevlayer``): PostgreSQL,
S3, vectors, caches and a log per service.

While ``up`` runs, ``DATA_DIR/hevlayer-up.json`` records its pid and the
addresses; ``down`` signals that pid, and the CLI reads the gateway address
from it when neither ``--gateway`` nor ``HEVLAYER_GATEWAY`` is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from hevlayer.devstack import DevStack, DevstackError, ServiceSpec
from hevlayer.devstack.errors import ServerNotFoundError
from hevlayer.devstack.processes import find_console_script
from hevlayer.devstack.supervisor import CrashLoop, Supervisor, SupervisorSettings

DEFAULT_DATA_DIR = ".hevlayer"
STATE_FILE = "hevlayer-up.json"
GATEWAY_GRPC_PORT = 50051
GATEWAY_HTTP_PORT = 8080
EMBEDDER_WORKER_COMMAND = "hevlayer-embedder"
SUMMARIZER_COMMAND = "hevlayer-summarizer"
"""The embedder's claim → read → embed → write loop runs in an embedder process whose
``EMBEDDER_WORKER_PIPELINES`` is set (here ``*``: every pipeline). It is a second embedder
process because the gateway (which the worker needs) itself depends on the query embedder."""


def _launch(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "hevlayer.cli.launch", *args)


def has_console_script(name: str) -> bool:
    try:
        find_console_script(name)
    except ServerNotFoundError:
        return False
    return True


def suite_services(
    data_dir: str | os.PathLike[str],
    *,
    embedder: bool = True,
    worker: bool | None = None,
    summarizer: bool | None = None,
    gateway_env: dict[str, str] | None = None,
) -> tuple[ServiceSpec, ...]:
    """The services of the local suite, in start order.

    ``worker=None`` starts the embedder worker when its console script is installed;
    ``summarizer=None`` the summarizer likewise.
    """
    data = Path(data_dir).absolute()
    specs: list[ServiceSpec] = [
        ServiceSpec("claimer", "hevlayer-claimer", database=True, s3=True, internal=True)
    ]
    gateway_depends = ["claimer"]
    if embedder:
        specs.append(
            ServiceSpec(
                "triton",
                _launch("triton", "--workdir", str(data / "triton")),
                ready_timeout=300.0,
            )
        )
        specs.append(
            ServiceSpec(
                "embedder",
                _launch("env", "EMBEDDER_TRITON_URL=TRITON_ADDRESS", "--", "hevlayer-embedder"),
                depends_on=("triton",),
                ready_timeout=120.0,
            )
        )
        gateway_depends.append("embedder")
    specs.append(
        ServiceSpec(
            "gateway",
            "hevlayer-gateway",
            grpc_port=GATEWAY_GRPC_PORT,
            http_port=GATEWAY_HTTP_PORT,
            s3=True,
            depends_on=tuple(gateway_depends),
            env={
                "GATEWAY_MILVUS_LITE_PATH": str(data / "vectors.db"),
                "GATEWAY_CACHE_DIR": str(data / "cache"),
                **(gateway_env or {}),
            },
            public=True,
            ready_timeout=180.0,
            internal=True,
        )
    )
    if embedder and (worker if worker is not None else has_console_script(EMBEDDER_WORKER_COMMAND)):
        specs.append(
            ServiceSpec(
                "embedder-worker",
                _launch(
                    "env",
                    "EMBEDDER_TRITON_URL=TRITON_ADDRESS",
                    "EMBEDDER_GATEWAY_ADDRESS=GATEWAY_ADDRESS",
                    "--",
                    EMBEDDER_WORKER_COMMAND,
                ),
                env={"EMBEDDER_WORKER_PIPELINES": "*"},
                depends_on=("triton", "gateway"),
                token_role="worker",
                ready_timeout=120.0,
            )
        )
    if summarizer if summarizer is not None else has_console_script(SUMMARIZER_COMMAND):
        specs.append(
            ServiceSpec(
                "summarizer",
                _launch("env", "SUMMARIZER_GATEWAY_ADDRESS=GATEWAY_ADDRESS", "--", SUMMARIZER_COMMAND),
                depends_on=("gateway",),
                env={"SUMMARIZER_CACHE_DIR": str(data / "summaries")},
                token_role="stager",
                ready_timeout=120.0,
            )
        )
    return tuple(specs)


# -- the state file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpState:
    """What a running ``up`` records in its data directory."""

    pid: int
    gateway: str
    services: dict[str, str]
    data_dir: str
    http: dict[str, str] = field(default_factory=dict)
    """Each service's HTTP address (``/metrics``, ``/healthz``; the gateway's REST)."""
    supervision: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per process (postgres, s3 and each service): pid, state, restarts, last_exit, started_at."""

    @classmethod
    def read(cls, data_dir: str | os.PathLike[str]) -> UpState | None:
        """The state of a live ``up`` in ``data_dir``; None if there is none (a stale file is ignored)."""
        path = Path(data_dir) / STATE_FILE
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            state = cls(
                int(raw["pid"]),
                str(raw["gateway"]),
                dict(raw.get("services", {})),
                str(raw["data_dir"]),
                dict(raw.get("http", {})),
                dict(raw.get("supervision", {})),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return state if pid_alive(state.pid) else None

    def write(self) -> None:
        path = Path(self.data_dir) / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        temporary.replace(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own exited child) is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return waited == 0


# -- up / down -----------------------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def up(
    data_dir: str | os.PathLike[str],
    services: Sequence[ServiceSpec],
    *,
    out: TextIO | None = None,
    ready: Callable[[DevStack], bool] | None = None,
    poll_interval: float = 0.5,
) -> int:
    """Start the suite, record it, keep it up until Ctrl-C, SIGTERM (``down``) or a crash loop.

    A process that dies is restarted on the same ports (:mod:`hevlayer.devstack.supervisor`:
    backoff, one JSON log line per exit and restart on stderr, restarts recorded in the state
    file for ``hevlayer status``); only a crash loop stops the suite, with the failing
    service's log tail. ``ready`` runs once everything is up (``demo`` ingests and searches
    there, supervised too); when it returns True ``up`` keeps running, when False it stops.
    Returns the exit status.
    """
    stream = out or sys.stdout
    try:
        settings = SupervisorSettings.from_env()
    except ValueError as exc:
        print(f"hevlayer up: {exc}", file=sys.stderr, flush=True)
        return 1
    data = Path(data_dir).absolute()
    running = UpState.read(data)
    if running is not None:
        print(
            f"hevlayer is already up in {data} (pid {running.pid}); gateway at {running.gateway}",
            file=sys.stderr,
        )
        return 1
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    stack = DevStack(data, services, out=stream)
    state_path = data / STATE_FILE
    try:
        try:
            stack.start()
        except DevstackError as exc:
            print(f"hevlayer up: {exc}", file=sys.stderr, flush=True)
            return 1
        gateway = next((r.grpc_address for r in stack.running if r.spec.public), "")

        def record(supervisor: Supervisor) -> None:
            UpState(
                os.getpid(),
                gateway,
                {r.spec.name: r.grpc_address for r in stack.running},
                str(data),
                {r.spec.name: r.http_address for r in stack.running},
                supervisor.snapshot(),
            ).write()

        supervisor = Supervisor(stack, settings, on_change=record)
        record(supervisor)
        print("", file=stream, flush=True)
        print(stack.summary(), file=stream, flush=True)
        try:
            if ready is None:
                print(
                    '\nnext: hevlayer add PATH...  then  hevlayer search "a question"',
                    file=stream,
                    flush=True,
                )
            elif not _supervised(ready, stack, supervisor, poll_interval):
                return 0
            print("\nhevlayer is up. Ctrl-C or `hevlayer down` stops everything.", file=stream, flush=True)
            while True:
                supervisor.check()
                time.sleep(poll_interval)
        except CrashLoop as loop:
            print(f"hevlayer up: {loop}", file=sys.stderr, flush=True)
            return 1
    except (KeyboardInterrupt, _Terminated):
        with contextlib.suppress(OSError):
            print("\nstopping ...", file=stream, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            with contextlib.suppress(OSError):
                state_path.unlink()
            signal.signal(signal.SIGTERM, previous)


def _supervised(
    ready: Callable[[DevStack], bool], stack: DevStack, supervisor: Supervisor, poll_interval: float
) -> bool:
    """Run ``ready`` in a thread while the supervisor keeps the suite up; its result.

    ``demo`` ingests through the gateway while this thread restarts whatever dies under it;
    a crash loop (raised here) stops the suite, and ``ready``'s calls fail with it."""
    outcome: list[bool] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(ready(stack))
        except BaseException as exc:  # re-raised in the supervising thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="hevlayer-up-ready", daemon=True)
    thread.start()
    while thread.is_alive():
        supervisor.check()
        thread.join(poll_interval)
    if failure:
        raise failure[0]
    return outcome[0]


def up_detached(data_dir: str | os.PathLike[str], argv: Sequence[str], *, timeout: float = 600.0) -> int:
    """Run ``hevlayer up`` (``argv``: its arguments) in the background; return once it is up.

    Its output goes to ``DATA_DIR/logs/up.log``.
    """
    data = Path(data_dir).absolute()
    running = UpState.read(data)
    if running is not None:
        print(f"hevlayer is already up in {data} (pid {running.pid}); gateway at {running.gateway}")
        return 0
    log_path = data / "logs" / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hevlayer.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = UpState.read(data)
        if state is not None and state.pid == process.pid:
            print(f"hevlayer is up (pid {process.pid}); gateway at {state.gateway}; log: {log_path}")
            return 0
        if process.poll() is not None:
            print(f"hevlayer up failed (exit {process.returncode}); see {log_path}:", file=sys.stderr)
            print(_tail(log_path), file=sys.stderr)
            return 1
        time.sleep(0.2)
    process.terminate()
    print(f"hevlayer up did not come up within {timeout:.0f} s; see {log_path}", file=sys.stderr)
    return 1


def down(data_dir: str | os.PathLike[str], *, timeout: float = 120.0) -> int:
    """Stop the ``up`` running in ``data_dir`` (SIGTERM, then wait for it to finish stopping)."""
    data = Path(data_dir).absolute()
    state = UpState.read(data)
    if state is None:
        print(f"hevlayer is not up in {data}")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(state.pid):
            print(f"hevlayer stopped (pid {state.pid})")
            return 0
        time.sleep(0.2)
    print(f"hevlayer up (pid {state.pid}) did not stop within {timeout:.0f} s", file=sys.stderr)
    return 1


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
