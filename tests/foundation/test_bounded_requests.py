"""Bounded requests on every server (hevlayer.common.server.ServiceApp builds them all):
HEVLAYER_GRPC_MAX_MESSAGE_BYTES and HEVLAYER_GRPC_MAX_CONCURRENT_RPCS on a real server in
this process, then on real claimer and gateway processes (a refused call changes nothing),
and the gateway's HEVLAYER_HTTP_MAX_BODY_BYTES (413 with a JSON error body)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.processes import start_claimer, start_gateway

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2 as pb
from hevlayer.api.lease.v1 import lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.common.config import ConfigError, load_settings
from hevlayer.common.errors import ResourceExhausted, ServiceError, status_from_rpc_error
from hevlayer.common.interceptors import client_interceptors
from hevlayer.common.server import ServerSettings, ServiceApp
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import claimer_metadata

LIMIT = 256 * 1024
LEASE_SERVICE = pb.DESCRIPTOR.services_by_name["LeaseService"]


class _Recorder:
    """A LeaseService that records what reached its handlers; ClaimDocuments waits for
    ``release`` so that calls can be held open."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()
        self.waiting = 0
        self.two_waiting = asyncio.Event()

    async def ClaimDocuments(
        self, request: pb.ClaimDocumentsRequest, context: aio.ServicerContext
    ) -> pb.ClaimDocumentsResponse:
        self.seen.append(f"claim {request.worker_id[:20]}")
        self.waiting += 1
        if self.waiting >= 2:
            self.two_waiting.set()
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        return pb.ClaimDocumentsResponse()

    async def HeartbeatLeases(
        self, request: pb.HeartbeatLeasesRequest, context: aio.ServicerContext
    ) -> pb.HeartbeatLeasesResponse:
        self.seen.append(f"heartbeat {len(request.leases)}")
        return pb.HeartbeatLeasesResponse()

    async def TransitionDocuments(
        self, request: pb.TransitionDocumentsRequest, context: aio.ServicerContext
    ) -> pb.TransitionDocumentsResponse:
        self.seen.append("transition")
        return pb.TransitionDocumentsResponse()

    async def StreamLeases(
        self, requests: AsyncIterator[pb.StreamLeasesRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.StreamLeasesResponse]:
        self.seen.append("stream")
        async for _ in requests:
            yield pb.StreamLeasesResponse()


async def _serve(recorder: _Recorder, *, max_message_bytes: int = LIMIT, max_calls: int = 0) -> ServiceApp:
    settings = ServerSettings(
        grpc_address="127.0.0.1:0",
        http_address="",
        shutdown_grace_seconds=0,
        grpc_max_message_bytes=max_message_bytes,
        grpc_max_concurrent_rpcs=max_calls,
    )
    app = ServiceApp("bounded-test", settings)
    app.add_servicer(LEASE_SERVICE, recorder)
    await app.start()
    return app


def _big_heartbeat(size: int) -> pb.HeartbeatLeasesRequest:
    """A HeartbeatLeasesRequest of about ``size`` bytes."""
    return pb.HeartbeatLeasesRequest(
        pipeline_id="p",
        stage="embedding",
        worker_id="w",
        leases=[document_pb2.LeaseRef(document_id="d" * 1000, fencing_token=1) for _ in range(size // 1000)],
    )


def _wide_channel(address: str) -> aio.Channel:
    """A channel that sends messages far larger than the servers accept (with the claimer's
    internal token, which the gateway of these stacks ignores: it runs without authentication)."""
    limit = 256 * 1024 * 1024
    return aio.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
        interceptors=client_interceptors(claimer_metadata(), traced=False),
    )


def test_the_limits_are_settings() -> None:
    settings = load_settings(
        ServerSettings,
        {"HEVLAYER_GRPC_MAX_MESSAGE_BYTES": "1048576", "HEVLAYER_GRPC_MAX_CONCURRENT_RPCS": "8"},
    )
    assert (settings.grpc_max_message_bytes, settings.grpc_max_concurrent_rpcs) == (1048576, 8)
    with pytest.raises(ConfigError, match="HEVLAYER_GRPC_MAX_MESSAGE_BYTES"):
        replace(settings, grpc_max_message_bytes=100).validate()
    with pytest.raises(ConfigError, match="HEVLAYER_GRPC_MAX_CONCURRENT_RPCS"):
        replace(settings, grpc_max_concurrent_rpcs=-1).validate()


async def test_a_message_over_the_limit_is_refused_before_the_handler() -> None:
    recorder = _Recorder()
    app = await _serve(recorder, max_message_bytes=LIMIT)
    try:
        async with _wide_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = lease_pb2_grpc.LeaseServiceStub(channel)
            await stub.HeartbeatLeases(_big_heartbeat(LIMIT // 2))
            assert recorder.seen == [f"heartbeat {LIMIT // 2 // 1000}"]
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.HeartbeatLeases(_big_heartbeat(LIMIT + 4096))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert recorder.seen == [f"heartbeat {LIMIT // 2 // 1000}"]
    finally:
        await app.stop()


async def test_calls_beyond_the_concurrency_limit_get_resource_exhausted_with_retry_info() -> None:
    recorder = _Recorder()
    app = await _serve(recorder, max_calls=2)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = lease_pb2_grpc.LeaseServiceStub(channel)
            held = [
                asyncio.ensure_future(stub.ClaimDocuments(pb.ClaimDocumentsRequest(worker_id=f"held-{n}")))
                for n in range(2)
            ]
            await asyncio.wait_for(recorder.two_waiting.wait(), 30)
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.TransitionDocuments(pb.TransitionDocumentsRequest(pipeline_id="p"))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "HEVLAYER_GRPC_MAX_CONCURRENT_RPCS" in (refused.value.details() or "")
            status = status_from_rpc_error(refused.value)
            retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            assert len(retry) == 1
            info = error_details_pb2.RetryInfo()
            retry[0].Unpack(info)
            assert info.retry_delay.ToMilliseconds() > 0
            assert "transition" not in recorder.seen
            # Health checks are never limited.
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            recorder.release.set()
            await asyncio.gather(*held)
            await stub.TransitionDocuments(pb.TransitionDocumentsRequest(pipeline_id="p"))
            assert recorder.seen.count("transition") == 1
    finally:
        recorder.release.set()
        await app.stop()


class _Quota:
    """An admission as a per-token rate limit would be: refuses calls whose metadata says
    their quota is spent."""

    def __init__(self) -> None:
        self.admitted: list[str] = []
        self.released: list[str] = []

    def admit(self, method: str, metadata: Any) -> ServiceError | None:
        if ("x-test-quota", "spent") in tuple(metadata or ()):
            return ResourceExhausted("quota: spent", reason="RATE_LIMITED", retry_after=2.5)
        self.admitted.append(method)
        return None

    def release(self, method: str) -> None:
        self.released.append(method)


async def test_an_added_admission_refuses_with_retry_info_before_the_handler() -> None:
    recorder = _Recorder()
    app = await _serve(recorder)
    quota = _Quota()
    app.add_admission(quota)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = lease_pb2_grpc.LeaseServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.TransitionDocuments(
                    pb.TransitionDocumentsRequest(pipeline_id="p"), metadata=(("x-test-quota", "spent"),)
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == "quota: spent"
            retry = [
                d
                for d in status_from_rpc_error(refused.value).details
                if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
            ]
            info = error_details_pb2.RetryInfo()
            retry[0].Unpack(info)
            assert info.retry_delay.ToMilliseconds() == 2500
            assert recorder.seen == []
            await stub.TransitionDocuments(pb.TransitionDocumentsRequest(pipeline_id="p"))
            assert recorder.seen == ["transition"]
            method = "/hevlayer.api.lease.v1.LeaseService/TransitionDocuments"
            assert quota.admitted == quota.released == [method]
            assert app._interceptor.limiter.in_flight == 0
    finally:
        await app.stop()


# -- real claimer and gateway processes ------------------------------------------------------


@pytest.fixture(scope="module")
def small_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A claimer and a gateway that accept messages of at most LIMIT bytes and REST bodies of
    at most 64 KiB (the gateway on a bucket of its own: it is ready only while S3 answers)."""
    tmp: Path = tmp_path_factory.mktemp("bounded")
    bucket = f"bounded-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    traces = tmp / "traces.jsonl"
    limits = {"HEVLAYER_GRPC_MAX_MESSAGE_BYTES": str(LIMIT), "HEVLAYER_HTTP_MAX_BODY_BYTES": "65536"}
    claimer, claimer_address, _ = start_claimer(database_url, tmp, traces, **limits)
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address, tmp, traces, **limits, **s3.client_env(bucket)
        )
        gateway.wait_ready(timeout=60)
        yield {"claimer": claimer_address, "gateway": gateway_address, "gateway_http": gateway_http}
    finally:
        for proc in (gateway, claimer):
            if proc is not None:
                proc.stop(grace=10)


@pytest.mark.parametrize("server", ["gateway", "claimer"])
async def test_an_oversized_message_changes_nothing(small_stack: dict[str, str], server: str) -> None:
    pipeline_id = f"bounded-{uuid.uuid4().hex[:6]}"
    async with _wide_channel(small_stack[server]) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        oversized = pipeline_pb2.Pipeline(id=pipeline_id, target_namespace="x" * (LIMIT + 1))
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.CreatePipeline(pipeline_pb2.CreatePipelineRequest(pipeline=oversized))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(aio.AioRpcError) as missing:
            await stub.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # The same request under the limit is served.
        await stub.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id))
        )
        await stub.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id=pipeline_id))


def test_an_oversized_rest_body_gets_413_with_a_json_error(small_stack: dict[str, str]) -> None:
    pipeline_id = f"bounded-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"id": pipeline_id, "padding": "x" * 70_000}).encode()
    base = f"http://{small_stack['gateway_http']}"
    request = urllib.request.Request(
        f"{base}/v2/pipelines",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == 413
    assert error["reason"] == "BODY_TOO_LARGE"
    assert error["field_violations"][0]["field"] == "body"
    assert "65536" in error["message"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/v2/pipelines/{pipeline_id}/status", timeout=30)
    assert missing.value.code == 404
