"""Service processes (hevlayer console scripts or any argv) with logs and gRPC readiness."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hevlayer.common.processes import kill_group, log_tail, terminate_group
from hevlayer.devstack.errors import DevstackError, ServerNotFoundError, ServiceStartError
from hevlayer.devstack.lifecycle import Lifecycle

_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def find_console_script(name: str) -> Path:
    """A console script: next to ``sys.executable`` (the venv's bin dir), then on PATH."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ServerNotFoundError(
        f"console script {name!r} not found next to {sys.executable} or on PATH "
        "(is its package installed? run `uv sync`)"
    )


def resolve_command(command: str | Sequence[str]) -> list[str]:
    """An argv: a bare name is a console script, a path or a sequence is used as is."""
    if isinstance(command, str):
        if os.sep in command:
            return [command]
        return [str(find_console_script(command))]
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("empty command")
    return argv


def health_status(address: str, service: str = "", timeout: float = 1.0) -> str:
    """The ``grpc.health.v1.Health/Check`` status name of ``address`` (one call).

    Returns ``"SERVING"``, ``"NOT_SERVING"``, ... or ``"UNREACHABLE: <code>"``.
    """
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        return _check(health_pb2_grpc.HealthStub(channel), service, timeout)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _check(stub: health_pb2_grpc.HealthStub, service: str, timeout: float) -> str:
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        return f"UNREACHABLE: {exc.code().name}"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


class ServiceProcess(Lifecycle):
    """One service process in its own process group, logging to ``log_path``.

    ``command`` is a console-script name (``"hevlayer-claimer"``, looked up
    next to ``sys.executable`` first, then on PATH), a path, or an argv list.
    ``env`` is merged over ``os.environ`` (or, with ``inherit_environment=False``, is the whole
    environment). ``grpc_address`` is the default address for ``wait_ready``.
    ``die_with_parent``: the kernel kills the process when the one that started it dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``, Linux), so that a killed launcher leaves no server
    holding its port.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        grpc_address: str | None = None,
        inherit_environment: bool = True,
        die_with_parent: bool = False,
    ) -> None:
        self.command = command
        self.inherit_environment = inherit_environment
        self.die_with_parent = die_with_parent
        self.name = name or Path(command if isinstance(command, str) else command[0]).name
        self.env = dict(env or {})
        if log_path is None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(self.name).name)
            handle, path = tempfile.mkstemp(prefix=f"hevlayer-{safe}-", suffix=".log")
            os.close(handle)
            log_path = path
        self._log_path = Path(log_path).absolute()
        self.cwd = Path(cwd) if cwd is not None else None
        self.grpc_address = grpc_address
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.argv: list[str] = []

    # -- properties ---------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); None while running."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self._log_path, lines)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Start the process (stdout and stderr appended to ``log_path``)."""
        if self._proc is not None:
            raise DevstackError(f"{self.name} was already started (pid {self._proc.pid})")
        self.argv = resolve_command(self.command)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env} if self.inherit_environment else dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        except BaseException:
            self._log_handle.close()
            self._log_handle = None
            raise
        atexit.register(self.kill)
        return self

    def wait_ready(
        self,
        grpc_address: str | None = None,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Poll the gRPC health service (service ``""``) until it is SERVING
        (over TLS with ``credentials``, for a server with ``HEVLAYER_TLS_CERT``).

        Raises ``ServiceStartError`` with the log tail when the process exits
        first or ``timeout`` seconds pass.
        """
        address = grpc_address or self.grpc_address
        if address is None:
            raise ValueError("no gRPC address to wait on")
        if self._proc is None:
            raise DevstackError(f"{self.name} has not been started")
        deadline = time.monotonic() + timeout
        status = "not checked"
        channel = (
            grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
            if credentials is not None
            else grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        )
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self._proc.poll() is not None:
                    raise ServiceStartError(
                        f"{self.name} exited with {self._proc.returncode} before it was "
                        f"SERVING on {address}\n--- {self._log_path} ---\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                status = _check(stub, "", max(0.1, min(1.0, remaining)))
                if status == "SERVING":
                    return
                if time.monotonic() >= deadline:
                    raise ServiceStartError(
                        f"{self.name} (pid {self._proc.pid}) not SERVING on {address} after "
                        f"{timeout:.0f}s (last: {status})\n"
                        f"--- {self._log_path} ---\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds.

        Returns the exit status (None if it was never started). Safe to call
        more than once.
        """
        if self._proc is None:
            return None
        atexit.unregister(self.kill)
        code = terminate_group(self._proc, grace)
        self._close_log()
        return code

    def kill(self) -> int | None:
        """SIGKILL the process group at once (for fault tests); returns the exit status."""
        if self._proc is None:
            return None
        atexit.unregister(self.kill)
        code = kill_group(self._proc)
        self._close_log()
        return code

    def restart(self) -> Self:
        """Start the process again with the same argv, environment and log (after it died):
        what is left of the old process group is killed first, so its ports are free."""
        if self._proc is not None:
            self.stop(grace=0.0)
        self._proc = None
        return self.start()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit by itself; returns its exit status."""
        if self._proc is None:
            raise DevstackError(f"{self.name} has not been started")
        return self._proc.wait(timeout)

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
