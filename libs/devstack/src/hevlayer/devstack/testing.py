"""Helpers for test suites (no pytest import: tests/conftest.py wraps them in fixtures)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hevlayer.devstack.ports import free_port
from hevlayer.devstack.postgres import PostgresServer
from hevlayer.devstack.processes import ServiceProcess


def health_stub_argv(*args: str) -> list[str]:
    """argv of the stand-in gRPC health server (``hevlayer.devstack.health_stub``)."""
    return [sys.executable, "-m", "hevlayer.devstack.health_stub", *args]


def fresh_database(postgres: PostgresServer, prefix: str = "test") -> str:
    """``CREATE DATABASE`` with a unique name on ``postgres``; returns its DSN."""
    clean = "".join(c if c.isalnum() else "_" for c in prefix.lower())[:40] or "test"
    if not (clean[0].isalpha() or clean[0] == "_"):
        clean = "t_" + clean
    return postgres.create_database(f"{clean}_{uuid.uuid4().hex[:12]}")


class ServiceFactory:
    """Starts service processes for one test; ``stop_all`` stops them in reverse order."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.processes: list[ServiceProcess] = []

    def __call__(
        self,
        command: str | Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        grpc_address: str | None = None,
        wait: bool = True,
        ready_timeout: float = 30.0,
    ) -> ServiceProcess:
        """Start ``command`` (a console-script name or an argv list); wait until SERVING.

        Without ``grpc_address`` a free one is chosen. The process gets
        ``HEVLAYER_GRPC_ADDRESS`` (that address) and ``HEVLAYER_HTTP_ADDRESS``
        (a free port) unless ``env`` sets them.
        """
        merged = dict(env or {})
        if grpc_address is None:
            grpc_address = merged.get("HEVLAYER_GRPC_ADDRESS") or f"127.0.0.1:{free_port()}"
        merged.setdefault("HEVLAYER_GRPC_ADDRESS", grpc_address)
        merged.setdefault("HEVLAYER_HTTP_ADDRESS", f"127.0.0.1:{free_port()}")
        merged.setdefault("PYTHONUNBUFFERED", "1")
        label = name or Path(command if isinstance(command, str) else command[0]).name
        process = ServiceProcess(
            command,
            name=label,
            env=merged,
            log_path=self.log_dir / f"{label}-{len(self.processes)}.log",
            grpc_address=grpc_address,
        )
        self.processes.append(process.start())
        if wait:
            process.wait_ready(timeout=ready_timeout)
        return process

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every process started here, last first."""
        while self.processes:
            self.processes.pop().stop(grace)

    def report(self, lines: int = 60) -> str:
        """Each process's status and log tail."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, returncode {p.returncode}) {p.log_path} ---\n{p.log_tail(lines)}"
            for p in self.processes
        )


EXTERNAL_PIPELINES = "external-"
"""Prefix of the pipeline ids that ``live_suite``'s embedder worker leaves alone
(``EMBEDDER_WORKER_EXCLUDE_PIPELINES``): a test that runs its own worker names its pipelines so."""


@dataclass(frozen=True)
class LiveSuite:
    """The whole suite as ``hevlayer up --detach`` runs it (shared by the tests of one session).

    Every service writes its spans to ``traces`` (JSON lines; see
    ``hevlayer.common.telemetry``). Tests on it make their own pipelines
    (unique names) and leave the other tests' pipelines alone. The embedder
    worker embeds every pipeline's pending documents except those of
    pipelines named ``external-*``, which are left to workers a test runs itself.
    """

    data_dir: Path
    gateway: str
    """The gateway's gRPC address."""
    services: dict[str, str]
    """Each service's gRPC address."""
    http: dict[str, str]
    """Each service's HTTP address (``/metrics``, ``/healthz``; the gateway's REST)."""
    traces: Path

    @property
    def external_prefix(self) -> str:
        """Prefix of the pipeline ids the suite's embedder worker leaves to a worker the test runs."""
        return EXTERNAL_PIPELINES

    @property
    def gateway_http(self) -> str:
        """The gateway's REST base URL."""
        return f"http://{self.http['gateway']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing the ``hevlayer`` command at this suite."""
        return {"HEVLAYER_DATA_DIR": str(self.data_dir), "HEVLAYER_GATEWAY": self.gateway}

    def claimer_metadata(self) -> list[tuple[str, str]]:
        """The metadata a test sends when it calls this suite's claimer directly, as its gateway
        does: the internal token ``hevlayer up`` made in the data directory."""
        from hevlayer.common.auth import INTERNAL_TOKEN_KEY
        from hevlayer.devstack.tokens import INTERNAL_TOKEN_FILE, tokens_dir

        secret = (tokens_dir(self.data_dir) / INTERNAL_TOKEN_FILE).read_text().strip()
        return [(INTERNAL_TOKEN_KEY, secret)]

    def log(self, service: str, lines: int = 80) -> str:
        """The last ``lines`` lines of a service's log."""
        path = self.data_dir / "logs" / f"{service}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"({path}: {exc})"


def claimer_metadata() -> list[tuple[str, str]]:
    """The metadata a test sends when it calls a claimer directly, as the gateway does: the
    shared secret of ``CLAIMER_INTERNAL_TOKEN`` (tests/conftest.py sets one per session)."""
    from hevlayer.common.auth import INTERNAL_TOKEN_KEY

    return [(INTERNAL_TOKEN_KEY, os.environ["CLAIMER_INTERNAL_TOKEN"])]
