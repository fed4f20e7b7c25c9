"""Delay and drop between the gateway and the claimer, and a cut between the gateway and S3,
through the loopback proxy of ``tests/faults/proxy.py`` (the gateway's ``CLAIMER_ADDRESS``, or
its ``S3_ENDPOINT_URL``, is the proxy's)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from faults.proxy import FaultProxy
from faults.services import Processes, write_document
from grpc import aio
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline
from support.processes import start_claimer, start_gateway
from support.s3 import pack_keys
from support.staging import document, get_document, stage

from hevlayer.api.document.v1 import document_pb2
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


@dataclass
class S3Partitioned:
    proxy: FaultProxy
    gateway: str
    s3: SeaweedS3
    bucket: str


@pytest.fixture(scope="module")
def s3_partitioned(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Partitioned]:
    """A claimer and a gateway whose S3 endpoint is the proxy (the claimer reaches S3 directly)."""
    tmp = tmp_path_factory.mktemp("s3-partition")
    traces = tmp / "traces.jsonl"
    bucket = f"s3-partition-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    proxy = FaultProxy(s3.endpoint_url.removeprefix("http://")).start()
    try:
        with Processes() as processes:
            claimer, claimer_address, _ = processes.add(
                start_claimer(database_url, tmp, traces, **s3.client_env(bucket))
            )
            claimer.wait_ready(timeout=60)
            through_proxy = {**s3.client_env(bucket), "S3_ENDPOINT_URL": f"http://{proxy.address}"}
            gateway, gateway_address, _ = processes.add(
                start_gateway(claimer_address, tmp, traces, **through_proxy)
            )
            gateway.wait_ready(timeout=60)
            yield S3Partitioned(proxy, gateway_address, s3, bucket)
    finally:
        proxy.stop()


def _large_document(doc_id: str) -> document_pb2.Document:
    """A document of 3 chunks of 40,000 characters that do not compress (the pack is far larger
    than the proxy's cut mark)."""
    doc = document_pb2.Document(id=doc_id)
    for j in range(3):
        doc.chunks.add(id=f"{doc_id}-{j}", text=base64.b64encode(os.urandom(30_000)).decode())
    return doc


async def test_a_cut_to_s3_in_the_middle_of_a_pack_write_stages_nothing_and_a_retry_stages_all(
    s3_partitioned: S3Partitioned,
) -> None:
    proxy = s3_partitioned.proxy
    async with aio.insecure_channel(s3_partitioned.gateway) as channel:
        pid = await create_pipeline(channel)
        docs = [_large_document(f"big-{i}") for i in range(8)]  # about 960 KB of chunk text
        # The link to S3 is cut once 128 KiB of the staging's upload have gone through, and stays
        # down: the pack PUT breaks in the middle of its body, and the client's retries are refused.
        proxy.cut_after_upload(128 * 1024)
        try:
            with pytest.raises(aio.AioRpcError) as cut:
                await stage(channel, pid, docs)
            assert proxy.tripped, "the cut mark was never reached"
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value.details()
        finally:
            proxy.refuse = False
        # Nothing half-written is visible: no document known, no pack object.
        for doc in docs:
            with pytest.raises(aio.AioRpcError) as unknown:
                await get_document(channel, pid, doc.id)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, doc.id
        assert pack_keys(s3_partitioned.s3, s3_partitioned.bucket, pid) == []
        # The link is back: the same call stages every document, whose chunks read back whole.
        results = await stage(channel, pid, docs)
        assert [(r.document_id, r.HasField("error")) for r in results] == [(d.id, False) for d in docs]
        leases = await claim(channel, pid, worker=WORKER, lease_seconds=60)
        assert sorted(leases) == sorted(d.id for d in docs)
        responses = await read_chunks(channel, pid, leases, worker=WORKER)
        for doc in docs:
            read = [(c.id, c.text) for r in responses if r.document_id == doc.id for c in r.chunks]
            assert read == [(c.id, c.text) for c in doc.chunks], doc.id
