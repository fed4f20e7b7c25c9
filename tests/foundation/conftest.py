"""A claimer + gateway stack on a fresh database, for the foundation tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio

from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess


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


def start_claimer(
    database_url: str, tmp: Path, traces: Path, **extra: str
) -> tuple[ServiceProcess, str, str]:
    """Start a claimer process; return it with its gRPC and HTTP addresses."""
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    proc = ServiceProcess(
        "hevlayer-claimer",
        name="claimer",
        env={
            "DATABASE_URL": database_url,
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "HEVLAYER_TRACES_EXPORTER": f"file:{traces}",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "5",
            **extra,
        },
        log_path=tmp / f"claimer-{uuid.uuid4().hex[:6]}.log",
        grpc_address=grpc_address,
    ).start()
    return proc, grpc_address, http_address


def start_gateway(
    claimer_address: str, tmp: Path, traces: Path, **extra: str
) -> tuple[ServiceProcess, str, str]:
    """Start a gateway process in front of ``claimer_address`` (``extra`` env overrides; the
    Milvus Lite file and the chunk cache default to ``tmp``)."""
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    suffix = uuid.uuid4().hex[:6]
    proc = ServiceProcess(
        "hevlayer-gateway",
        name="gateway",
        env={
            "CLAIMER_ADDRESS": claimer_address,
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": http_address,
            "HEVLAYER_TRACES_EXPORTER": f"file:{traces}",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "5",
            "GATEWAY_MILVUS_LITE_PATH": str(tmp / f"vectors-{suffix}.db"),
            "GATEWAY_CACHE_DIR": str(tmp / f"cache-{suffix}"),
            # Off unless a test turns it on (GATEWAY_AUTH="on" in ``extra``): the tests on these
            # stacks (foundation, gateway, cli) exercise staging, leases, sinks and errors with
            # bare stubs; tests/gateway/test_auth.py runs a gateway with it on.
            "GATEWAY_AUTH": "off",
            **extra,
        },
        log_path=tmp / f"gateway-{uuid.uuid4().hex[:6]}.log",
        grpc_address=grpc_address,
    ).start()
    return proc, grpc_address, http_address


@pytest.fixture(scope="module")
def slice_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SliceStack]:
    """Claimer and gateway processes on a fresh database (the gateway on a fresh bucket: it is
    ready only while S3 answers); stopped at teardown."""
    tmp = tmp_path_factory.mktemp("slice")
    traces = tmp / "traces.jsonl"
    bucket = f"slice-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    claimer, claimer_address, claimer_http = start_claimer(database_url, tmp, traces)
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address, tmp, traces, **s3.client_env(bucket)
        )
        gateway.wait_ready(timeout=60)
        yield SliceStack(
            database_url=database_url,
            claimer=claimer,
            gateway=gateway,
            claimer_address=claimer_address,
            gateway_address=gateway_address,
            claimer_http=claimer_http,
            gateway_http=gateway_http,
            traces_path=traces,
        )
    finally:
        for proc in (gateway, claimer):
            if proc is not None:
                proc.stop(grace=10)


@pytest.fixture
async def gateway_channel(slice_stack: SliceStack) -> AsyncIterator[aio.Channel]:
    """A client channel to the gateway."""
    channel = open_channel(slice_stack.gateway_address)
    try:
        yield channel
    finally:
        await channel.close()
