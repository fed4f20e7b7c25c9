"""The gateway's readiness follows its dependencies: claimer, S3 and the default sink.

Real processes: a claimer and a gateway on a SeaweedFS of this module's own
(stopped and started again here, so not the session's), and a gateway whose
default sink is the Turbopuffer fake (stopped and started on its port); a
missing bucket counts as S3 being down. While a dependency is
down, ``/readyz`` answers 503 naming it, gRPC health is NOT_SERVING (server
and every service) and ``hevlayer_gateway_dependency_up`` is 0 for it; once
it is back, 200, SERVING and 1. Every wait is a bounded poll.
"""

from __future__ import annotations

import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.fakes.turbopuffer import FakeTurbopuffer
from support.polling import eventually
from support.processes import start_gateway
from support.service_http import http_json, metric_samples
from support.stacks import GatewayStack, start_stack

from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port

SERVICES = (
    "",
    "hevlayer.api.pipeline.v1.PipelineService",
    "hevlayer.api.lease.v1.LeaseService",
    "hevlayer.api.staging.v1.StagingService",
    "hevlayer.api.index.v1.IndexService",
)
DEPENDENCIES = ("claimer", "s3", "sink")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT = 60.0


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS with a persistent directory and a fixed port, so it can be stopped and restarted."""
    server = SeaweedS3(tmp_path_factory.mktemp("readiness-s3"), port=free_port())
    with server:
        yield server


@pytest.fixture(scope="module")
def stack(
    database_url: str, own_s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayStack]:
    running = start_stack(
        database_url,
        own_s3,
        tmp_path_factory.mktemp("readiness"),
        {"HEVLAYER_READINESS_INTERVAL_SECONDS": "0.5", "HEVLAYER_READINESS_TIMEOUT_SECONDS": "0.5"},
    )
    try:
        yield running
    finally:
        running.stop()


def readyz(base_url: str) -> tuple[int, Any]:
    """/readyz's status and body; (0, {}) while nothing listens yet."""
    try:
        return http_json("GET", f"{base_url}/readyz")
    except urllib.error.URLError:
        return 0, {}


def dependency_up(stack: GatewayStack) -> dict[str, float]:
    return {
        labels["dependency"]: value
        for labels, value in metric_samples(stack.gateway_http, "hevlayer_gateway_dependency_up")
    }


async def health(stack: GatewayStack | str) -> dict[str, int]:
    """The health status of the server and of every public service (of a stack or an address)."""
    address = stack if isinstance(stack, str) else stack.gateway_address
    async with aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            service: (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status
            for service in SERVICES
        }


async def wait_ready(stack: GatewayStack) -> None:
    async def ready() -> bool:
        status, _ = readyz(stack.base_url)
        return status == 200

    await eventually(ready, timeout=WAIT, what="/readyz 200")


async def wait_down(base_url: str, dependency: str) -> dict[str, Any]:
    """Poll until /readyz (of the gateway at ``base_url``) is 503 naming ``dependency``; its body."""
    seen: dict[str, Any] = {}

    async def down() -> bool:
        status, body = readyz(base_url)
        seen.update(body if isinstance(body, dict) else {"raw": body})
        return status == 503 and dependency in body.get("down", [])

    await eventually(down, timeout=WAIT, what=f"/readyz 503 naming {dependency}")
    return seen


async def assert_ready(stack: GatewayStack) -> None:
    await wait_ready(stack)
    status, body = readyz(stack.base_url)
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["down"] == []
    assert {name: entry["up"] for name, entry in body["dependencies"].items()} == dict.fromkeys(
        DEPENDENCIES, True
    )
    assert set((await health(stack)).values()) == {SERVING}
    assert dependency_up(stack) == dict.fromkeys(DEPENDENCIES, 1.0)


async def test_ready_while_every_dependency_answers(stack: GatewayStack) -> None:
    await assert_ready(stack)


async def test_claimer_down_then_back(stack: GatewayStack) -> None:
    await assert_ready(stack)
    stack.claimer.stop(grace=5)
    body = await wait_down(stack.base_url, "claimer")
    assert body["status"] == "not ready"
    assert body["dependencies"]["claimer"]["up"] is False
    assert "claimer health check failed" in body["dependencies"]["claimer"]["error"]
    assert body["dependencies"]["s3"] == {"up": True}
    assert set((await health(stack)).values()) == {NOT_SERVING}
    assert dependency_up(stack) == {"claimer": 0.0, "s3": 1.0, "sink": 1.0}

    stack.restart_claimer()
    await assert_ready(stack)


async def test_s3_down_then_back(stack: GatewayStack, own_s3: SeaweedS3) -> None:
    await assert_ready(stack)
    own_s3.stop()
    try:
        body = await wait_down(stack.base_url, "s3")
        assert body["dependencies"]["s3"]["up"] is False
        assert body["dependencies"]["s3"]["error"]
        assert body["dependencies"]["claimer"] == {"up": True}
        assert set((await health(stack)).values()) == {NOT_SERVING}
        assert dependency_up(stack)["s3"] == 0.0
    finally:
        own_s3.start()
    await assert_ready(stack)


async def test_a_missing_bucket_is_not_ready(stack: GatewayStack, own_s3: SeaweedS3, tmp_path: Path) -> None:
    """A gateway whose bucket does not exist does not turn ready, and says why."""
    env = {
        **own_s3.client_env(f"missing-{uuid.uuid4().hex[:8]}"),
        "GATEWAY_CACHE_DIR": str(tmp_path / "cache"),
        "GATEWAY_MILVUS_LITE_PATH": str(tmp_path / "vectors.db"),
        "HEVLAYER_READINESS_INTERVAL_SECONDS": "0.5",
        "HEVLAYER_READINESS_TIMEOUT_SECONDS": "0.5",
    }
    gateway, _, http_address = start_gateway(stack.claimer_address, tmp_path, tmp_path / "t.jsonl", **env)
    try:
        seen: dict[str, Any] = {}

        async def bucket_missing() -> bool:
            status, body = readyz(f"http://{http_address}")
            seen.update(body)
            dependencies = body.get("dependencies", {})
            return (
                status == 503
                and body["down"] == ["s3"]
                and "404" in dependencies["s3"]["error"]
                and dependencies["claimer"] == {"up": True}
            )

        try:
            await eventually(bucket_missing, timeout=WAIT, what="/readyz naming the missing bucket")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last body: {seen}") from None
        assert gateway.running, gateway.log_tail()
    finally:
        gateway.stop(grace=5)


async def test_sink_down_then_back(stack: GatewayStack, own_s3: SeaweedS3, tmp_path: Path) -> None:
    """A gateway whose default sink is Turbopuffer (the fake, stopped and started on its port)."""
    fake = FakeTurbopuffer(api_key="readiness-key")
    port = free_port()
    await fake.start(port=port)
    env = {
        **own_s3.client_env(stack.bucket),
        "GATEWAY_CACHE_DIR": str(tmp_path / "cache"),
        "GATEWAY_MILVUS_LITE_PATH": str(tmp_path / "vectors.db"),
        "GATEWAY_DEFAULT_SINK": "turbopuffer",
        "GATEWAY_TURBOPUFFER_API_KEY": fake.api_key,
        "GATEWAY_TURBOPUFFER_BASE_URL": fake.base_url,
        "GATEWAY_TURBOPUFFER_MAX_RETRIES": "0",
        "HEVLAYER_READINESS_INTERVAL_SECONDS": "0.5",
        "HEVLAYER_READINESS_TIMEOUT_SECONDS": "0.5",
    }
    gateway, address, http_address = start_gateway(
        stack.claimer_address, tmp_path, tmp_path / "t.jsonl", **env
    )
    base_url = f"http://{http_address}"

    async def ready() -> bool:
        return readyz(base_url)[0] == 200

    try:
        await eventually(ready, timeout=WAIT, what="/readyz 200 with Turbopuffer answering")
        assert any(r.path == "/v2/namespaces/hevlayer-readiness-probe/metadata" for r in fake.requests)
        await fake.stop()
        body = await wait_down(base_url, "sink")
        assert body["down"] == ["sink"], body
        assert "Turbopuffer" in body["dependencies"]["sink"]["error"], body
        assert set((await health(address)).values()) == {NOT_SERVING}

        await fake.start(port=port)
        await eventually(ready, timeout=WAIT, what="/readyz 200 once Turbopuffer is back")
        assert set((await health(address)).values()) == {SERVING}
    finally:
        gateway.stop(grace=5)
        await fake.stop()
