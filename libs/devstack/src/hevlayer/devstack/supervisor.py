"""Keep a running ``DevStack`` up: restart whatever dies, with backoff; stop on a crash loop.

Every process of the stack is supervised: PostgreSQL, the S3 server and each service. One
that exits is started again on the same ports (clients hold addresses) after an exponential
backoff (``initial_backoff`` doubling per recent exit, at most ``max_backoff``). Each exit
is logged as one JSON line (``event: service_exited`` with the exit code or signal, then
``service_restarted``). A service that exits more than ``max_restarts`` times within
``window`` seconds is a crash loop: :meth:`Supervisor.check` raises :class:`CrashLoop`,
carrying the service's log tail, and the caller stops the suite.

Settings come from the environment of ``hevlayer up`` (:meth:`SupervisorSettings.from_env`):
``HEVLAYER_UP_MAX_RESTARTS`` (default 5), ``HEVLAYER_UP_RESTART_WINDOW`` (seconds, 300),
``HEVLAYER_UP_RESTART_BACKOFF`` (seconds, 1) and ``HEVLAYER_UP_RESTART_MAX_BACKOFF`` (30).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hevlayer.common.processes import log_tail
from hevlayer.devstack.errors import DevstackError
from hevlayer.devstack.stack import DevStack, RunningService

POSTGRES = "postgres"
S3 = "s3"


class CrashLoop(DevstackError):
    """A service exited more than ``max_restarts`` times within ``window`` seconds."""

    def __init__(self, service: str, message: str, log_path: Path, tail: str) -> None:
        super().__init__(f"{message}\n--- {log_path} ---\n{tail}")
        self.service = service
        self.log_path = log_path
        self.tail = tail


@dataclass(frozen=True)
class SupervisorSettings:
    max_restarts: int = 5
    """Restarts allowed within ``window`` seconds; one more exit is a crash loop."""
    window: float = 300.0
    initial_backoff: float = 1.0
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("HEVLAYER_UP_MAX_RESTARTS: must be 0 or more")
        if self.window <= 0:
            raise ValueError("HEVLAYER_UP_RESTART_WINDOW: must be more than 0 seconds")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError(
                "HEVLAYER_UP_RESTART_BACKOFF / HEVLAYER_UP_RESTART_MAX_BACKOFF: need 0 <= backoff <= max"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorSettings:
        """The settings of ``HEVLAYER_UP_*``; ValueError naming the variable when one is not a number."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, key, kind in (
            ("HEVLAYER_UP_MAX_RESTARTS", "max_restarts", int),
            ("HEVLAYER_UP_RESTART_WINDOW", "window", float),
            ("HEVLAYER_UP_RESTART_BACKOFF", "initial_backoff", float),
            ("HEVLAYER_UP_RESTART_MAX_BACKOFF", "max_backoff", float),
        ):
            raw = env.get(name, "").strip()
            if raw:
                try:
                    values[key] = kind(raw)
                except ValueError:
                    raise ValueError(f"{name}: not a number: {raw!r}") from None
        return cls(**values)


def exit_text(code: int | None) -> str:
    """``exit 3``, ``SIGKILL`` (a negative status), or ``unknown`` (a process that is not our child)."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@dataclass
class ServiceRecord:
    """What the supervisor knows of one process, as ``hevlayer status`` shows it."""

    name: str
    pid: int | None = None
    restarts: int = 0
    """Times it came back (a restart attempt that failed is an exit, not a restart)."""
    last_exit: str | None = None
    started_at: float = field(default_factory=time.time)
    """Wall-clock time of the last (re)start; uptime is measured from it."""
    state: str = "running"
    """``running``, or ``restarting`` while it waits out its backoff or comes up again."""
    exits: deque[float] = field(default_factory=deque)
    next_start: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "started_at": self.started_at,
        }


class Supervisor:
    """Restart the processes of a started ``stack``; call :meth:`check` every poll interval."""

    def __init__(
        self,
        stack: DevStack,
        settings: SupervisorSettings | None = None,
        *,
        log: TextIO | None = None,
        on_change: Callable[[Supervisor], None] | None = None,
    ) -> None:
        self.stack = stack
        self.settings = settings or SupervisorSettings()
        self._log = log
        self._on_change = on_change
        self.records: dict[str, ServiceRecord] = {
            POSTGRES: ServiceRecord(POSTGRES, stack.postgres.postmaster_pid),
            S3: ServiceRecord(S3, stack.s3.pid),
        }
        for service in stack.running:
            self.records[service.spec.name] = ServiceRecord(service.spec.name, service.process.pid)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per process: pid, state, restarts, last exit, start time (JSON-ready)."""
        return {name: record.as_dict() for name, record in self.records.items()}

    def check(self) -> None:
        """Notice exits, start what is due. Raises :class:`CrashLoop` when a process loops."""
        changed = False
        for name, record in self.records.items():
            if record.state == "running" and not self._alive(name):
                self._exited(record, self._exit_code(name))
                changed = True
        if changed:
            self._changed()
        now = time.monotonic()
        for record in self.records.values():
            if record.next_start is not None and record.next_start <= now:
                self._restart(record)
                self._changed()

    # -- one process ------------------------------------------------------------------------------

    def _service(self, name: str) -> RunningService:
        return next(s for s in self.stack.running if s.spec.name == name)

    def _alive(self, name: str) -> bool:
        if name == POSTGRES:
            return self.stack.postgres.server_alive()
        if name == S3:
            return self.stack.s3.running
        return self._service(name).process.running

    def _exit_code(self, name: str) -> int | None:
        if name == POSTGRES:
            return None  # the postmaster is pg_ctl's daemon, not our child
        if name == S3:
            return self.stack.s3.returncode
        return self._service(name).process.returncode

    def _log_path(self, name: str) -> Path:
        if name == POSTGRES:
            return self.stack.postgres.log_path
        if name == S3:
            return self.stack.s3.log_path
        return self._service(name).process.log_path

    def _exited(self, record: ServiceRecord, code: int | None) -> None:
        now = time.monotonic()
        record.last_exit = exit_text(code)
        record.exits.append(now)
        while record.exits and record.exits[0] < now - self.settings.window:
            record.exits.popleft()
        uptime = time.time() - record.started_at
        if len(record.exits) > self.settings.max_restarts:
            self._emit(
                "crash_loop",
                record,
                exit=record.last_exit,
                exits_in_window=len(record.exits),
                window_s=self.settings.window,
            )
            path = self._log_path(record.name)
            raise CrashLoop(
                record.name,
                f"{record.name} exited {len(record.exits)} times within {self.settings.window:g} s "
                f"(last: {record.last_exit}); stopping the suite",
                path,
                log_tail(path, 40),
            )
        backoff = min(self.settings.max_backoff, self.settings.initial_backoff * 2 ** (len(record.exits) - 1))
        record.state = "restarting"
        record.next_start = now + backoff
        self._emit(
            "service_exited",
            record,
            exit=record.last_exit,
            uptime_s=round(uptime, 1),
            restart_in_s=round(backoff, 2),
        )

    def _restart(self, record: ServiceRecord) -> None:
        record.next_start = None
        name = record.name
        try:
            if name == POSTGRES:
                self.stack.postgres.restart()
                record.pid = self.stack.postgres.postmaster_pid
            elif name == S3:
                self.stack.s3.restart()
                record.pid = self.stack.s3.pid
            else:
                service = self._service(name)
                service.process.restart()
                record.pid = service.process.pid
                service.process.wait_ready(timeout=service.spec.ready_timeout)
        except DevstackError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._emit("restart_failed", record, error=first_line)
            code = None if name == POSTGRES else self._exit_code(name)
            if name not in (POSTGRES, S3) and code is None:
                # Up but not SERVING within its ready timeout: stop it and count an exit.
                self._service(name).process.stop(grace=5.0)
                code = self._exit_code(name)
            record.started_at = time.time()
            self._exited(record, code)
            return
        record.state = "running"
        record.restarts += 1
        record.started_at = time.time()
        self._emit("service_restarted", record)

    # -- reporting --------------------------------------------------------------------------------

    def _emit(self, event: str, record: ServiceRecord, **fields: Any) -> None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "level": "error" if event in ("crash_loop", "restart_failed") else "warning",
            "logger": "hevlayer.up",
            "event": event,
            "service": record.name,
            "pid": record.pid,
            "restarts": record.restarts,
            **fields,
        }
        print(json.dumps(line), file=self._log or sys.stderr, flush=True)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
