"""A claimer + gateway on real PostgreSQL, SeaweedFS S3 and Milvus Lite, started for a test.

- ``SliceStack``: what the foundation tests' ``slice_stack`` fixture yields.
- ``GatewayStack`` / ``start_stack(...)``: a stack with a disk cache and a Milvus Lite file in
  ``tmp`` and extra gateway environment (tests that need another cache backend or sink).
- ``CliStack`` / ``start_cli_stack(...)``: a stack without an embedding service, so documents
  stop at ``pending``; ``gateway_env`` adds ``EMBEDDER_ADDRESS`` for a stack that embeds.
- ``unreachable_turbopuffer()``: gateway settings of a Turbopuffer sink nobody answers.

The caller stops what it started (``stop()``); the conftests' fixtures do it at teardown.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from support.processes import start_claimer, start_gateway


def unreachable_turbopuffer() -> dict[str, str]:
    """Gateway settings of a Turbopuffer sink nobody answers (for sink failures: 502,
    UNAVAILABLE, sink error metrics): a free loopback port, no retries, short timeouts."""
    return {
        "GATEWAY_TURBOPUFFER_API_KEY": "test-key",
        "GATEWAY_TURBOPUFFER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_TURBOPUFFER_MAX_RETRIES": "0",
        "GATEWAY_SINK_TIMEOUT_SECONDS": "5",
    }


def _stop_after_failed_start(claimer: ServiceProcess, gateway: ServiceProcess | None) -> None:
    """Print the logs of a stack that did not come up, and stop what of it runs."""
    if gateway is not None:
        print(gateway.log_tail(80))
        gateway.stop(grace=5)
    print(claimer.log_tail(80))
    claimer.stop(grace=5)


@dataclass
class SliceStack:
    """Addresses and processes of a running claimer + gateway."""

    database_url: str
    claimer: ServiceProcess
    gateway: ServiceProcess
    claimer_address: str
    gateway_address: str
    claimer_http: str
    gateway_http: str
    traces_path: Path


@dataclass
class GatewayStack:
    """A running claimer + gateway."""

    s3: SeaweedS3
    bucket: str
    database_url: str
    claimer: ServiceProcess
    gateway: ServiceProcess
    claimer_address: str
    gateway_address: str
    gateway_http: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The gateway's REST base URL."""
        return f"http://{self.gateway_http}"

    @property
    def milvus_path(self) -> Path:
        """The gateway's Milvus Lite file (read it once the gateway has stopped)."""
        return Path(self.env["GATEWAY_MILVUS_LITE_PATH"])

    def stop(self) -> None:
        """Stop both processes."""
        for proc in (self.gateway, self.claimer):
            proc.stop(grace=10)

    def restart_claimer(self) -> ServiceProcess:
        """Start the claimer again (after a test stopped or killed it) with the same settings and
        ports, and wait until it serves; the new process."""
        self.claimer = ServiceProcess(
            self.claimer.command,
            name="claimer",
            env=self.claimer.env,
            log_path=self.tmp / f"claimer-again-{uuid.uuid4().hex[:6]}.log",
            grpc_address=self.claimer.grpc_address,
        ).start()
        self.claimer.wait_ready(timeout=60)
        return self.claimer


def start_stack(
    database_url: str, s3: SeaweedS3, tmp: Path, gateway_env: dict[str, str] | None = None
) -> GatewayStack:
    """Start claimer and gateway on a new bucket; the caller stops them."""
    bucket = f"gw-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    traces = tmp / "traces.jsonl"
    claimer, claimer_address, _ = start_claimer(
        database_url, tmp, traces, HEVLAYER_LOG_FORMAT="text", **s3_env
    )
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        env = {
            **s3_env,
            "GATEWAY_CACHE_DIR": str(tmp / "cache"),
            "GATEWAY_MILVUS_LITE_PATH": str(tmp / "vectors.db"),
            "GATEWAY_ORPHAN_RETRY_SECONDS": "1",
            **(gateway_env or {}),
        }
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address, tmp, traces, HEVLAYER_LOG_FORMAT="text", **env
        )
        gateway.wait_ready(timeout=60)
    except BaseException:
        _stop_after_failed_start(claimer, gateway)
        raise
    return GatewayStack(
        s3=s3,
        bucket=bucket,
        database_url=database_url,
        claimer=claimer,
        gateway=gateway,
        claimer_address=claimer_address,
        gateway_address=gateway_address,
        gateway_http=gateway_http,
        tmp=tmp,
        env=env,
    )


@dataclass
class CliStack:
    """A running claimer and gateway."""

    gateway_address: str
    claimer: ServiceProcess
    gateway: ServiceProcess

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing the ``hevlayer`` command at this gateway."""
        return {"HEVLAYER_GATEWAY": self.gateway_address}

    def stop(self) -> None:
        for process in (self.gateway, self.claimer):
            process.stop(grace=10)

    def logs(self) -> str:
        gateway, claimer = self.gateway.log_tail(60), self.claimer.log_tail(40)
        return f"--- gateway log ---\n{gateway}\n--- claimer log ---\n{claimer}"


def start_cli_stack(
    database_url: str, s3: SeaweedS3, tmp: Path, gateway_env: dict[str, str] | None = None
) -> CliStack:
    """Claimer and gateway on a new bucket; the caller stops them."""
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    claimer, claimer_address, _ = start_claimer(
        database_url, tmp, tmp / "traces.jsonl", HEVLAYER_LOG_FORMAT="text", **s3_env
    )
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        gateway, address, _ = start_gateway(
            claimer_address,
            tmp,
            tmp / "traces.jsonl",
            HEVLAYER_LOG_FORMAT="text",
            GATEWAY_CACHE_DIR=str(tmp / "cache"),
            GATEWAY_MILVUS_LITE_PATH=str(tmp / "vectors.db"),
            **s3_env,
            **(gateway_env or {}),
        )
        gateway.wait_ready(timeout=90)
    except BaseException:
        _stop_after_failed_start(claimer, gateway)
        raise
    return CliStack(address, claimer, gateway)
