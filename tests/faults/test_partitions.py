"""Delay and drop between the gateway and the claimer, through the loopback proxy of
``tests/faults/proxy.py`` (the gateway's ``CLAIMER_ADDRESS`` is the proxy's)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from faults.proxy import FaultProxy
from faults.services import Processes, write_document
from foundation.conftest import start_claimer, start_gateway
from gateway.helpers import claim, create_pipeline, document, get_document, read_chunks, stage
from grpc import aio

from hevlayer.devstack import SeaweedS3

WORKER = "partition-worker"


@dataclass
class Partitioned:
    proxy: FaultProxy
    gateway: str


@pytest.fixture(scope="module")
def partitioned(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Partitioned]:
    tmp = tmp_path_factory.mktemp("partitions")
    traces = tmp / "traces.jsonl"
    bucket = f"partitions-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    proxy: FaultProxy | None = None
    try:
        with Processes() as processes:
            claimer, claimer_address, _ = processes.add(
                start_claimer(database_url, tmp, traces, **s3.client_env(bucket))
            )
            proxy = FaultProxy(claimer_address).start()
            claimer.wait_ready(timeout=60)
            gateway, gateway_address, _ = processes.add(
                start_gateway(
                    proxy.address, tmp, traces, GATEWAY_FORWARD_TIMEOUT_SECONDS="3", **s3.client_env(bucket)
                )
            )
            gateway.wait_ready(timeout=60)
            yield Partitioned(proxy, gateway_address)
    finally:
        if proxy is not None:
            proxy.stop()


@pytest.fixture
async def channel(partitioned: Partitioned) -> AsyncIterator[aio.Channel]:
    opened = aio.insecure_channel(partitioned.gateway)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_cut_link_fails_calls_and_the_flow_completes_after(
    partitioned: Partitioned, channel: aio.Channel
) -> None:
    proxy = partitioned.proxy
    pid = await create_pipeline(channel)
    docs = [document(f"p-{i}", chunks=2) for i in range(4)]
    # Partitioned: every connection to the claimer is cut, new ones are refused.
    proxy.refuse = True
    proxy.cut()
    try:
        with pytest.raises(aio.AioRpcError) as cut:
            await stage(channel, pid, docs)
        assert cut.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), (
            cut.value.details()
        )
    finally:
        proxy.refuse = False
    # Slow but connected: the calls answer.
    proxy.delay = 0.02
    try:
        results = await stage(channel, pid, docs)
    finally:
        proxy.delay = 0.0
    assert [r.document_id for r in results] == [d.id for d in docs]
    # Each document once, with its chunks, and indexed once written.
    leases = await claim(channel, pid, worker=WORKER, lease_seconds=60)
    assert sorted(leases) == sorted(d.id for d in docs)
    responses = await read_chunks(channel, pid, leases, worker=WORKER)
    for doc in docs:
        chunks = [c for r in responses if r.document_id == doc.id for c in r.chunks]
        assert [c.id for c in chunks] == [c.id for c in doc.chunks]
        written = await write_document(channel, pid, WORKER, leases[doc.id], doc.id, chunks)
        assert [r.vectors_written for r in written] == [2], written
        state = await get_document(channel, pid, doc.id)
        assert state.stage == "indexed"
        assert state.chunk_count == 2
