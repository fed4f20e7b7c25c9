"""A claimer + gateway stack on a fresh database, for the foundation tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from grpc import aio
from support.processes import start_claimer, start_gateway
from support.stacks import SliceStack

from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess


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
