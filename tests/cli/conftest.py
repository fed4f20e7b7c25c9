"""A claimer + gateway (real PostgreSQL, SeaweedFS S3, Milvus Lite, disk cache) for the CLI tests.

- ``cli_stack`` (module): claimer and gateway processes on a fresh database
  and bucket; the gateway has no embedding service, so documents stop at
  ``pending`` (what the Object Lane's extract side produces).
- ``start_cli_stack(...)``: the same with extra gateway environment
  (``EMBEDDER_ADDRESS`` for a stack that embeds).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from foundation.conftest import start_claimer, start_gateway

from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess


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
        if gateway is not None:
            print(gateway.log_tail(80))
            gateway.stop(grace=5)
        print(claimer.log_tail(80))
        claimer.stop(grace=5)
        raise
    return CliStack(address, claimer, gateway)


@pytest.fixture(scope="module")
def cli_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[CliStack]:
    stack = start_cli_stack(database_url, s3, tmp_path_factory.mktemp("cli-stack"))
    failed_before = request.session.testsfailed
    try:
        yield stack
    finally:
        if request.session.testsfailed > failed_before:
            print(stack.logs())
        stack.stop()
