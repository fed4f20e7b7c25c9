"""hevlayer.common.readiness on a real ServiceApp (gRPC health and HTTP /readyz on free ports),
with probes the test controls: what a round reports, when health flips, the gauge, bounded
probes, and errors without credentials. Each service's own probes are tested against real
dependencies in tests/gateway/test_gateway_readiness.py, tests/claimer/test_claimer_readiness.py and
tests/embedder/test_embedder_readiness.py."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hevlayer.common import metrics
from hevlayer.common.readiness import DependencyMonitor, describe_error
from hevlayer.common.server import ServerSettings, ServiceApp
from hevlayer.common.settings import ReadinessSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    """A probe that fails (with ``error``) while ``down`` is set, or hangs while ``hang`` is."""

    def __init__(self) -> None:
        self.down = False
        self.hang = False
        self.error = "connection refused"
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.down:
            raise ConnectionError(self.error)


@pytest.fixture
async def served() -> AsyncIterator[tuple[ServiceApp, DependencyMonitor, dict[str, Switch], str]]:
    settings = ServerSettings(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    service = f"probe{uuid.uuid4().hex[:6]}"
    app = ServiceApp(service, settings, serving_on_start=False)
    switches = {"database": Switch(), "store": Switch()}
    monitor = DependencyMonitor(
        service, switches, ReadinessSettings(interval_seconds=60.0, timeout_seconds=0.2), app.set_serving
    )
    app.add_readiness_check(monitor.check, monitor.report)
    await app.start()
    try:
        yield app, monitor, switches, service
    finally:
        await monitor.stop()
        await app.stop()


def readyz(app: ServiceApp) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def health(app: ServiceApp) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


def gauge(service: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics.render().decode()
    return {
        sample.labels["dependency"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == f"hevlayer_{service}_dependency_up"
        for sample in family.samples
    }


async def test_rounds_drive_readyz_health_and_the_gauge(
    served: tuple[ServiceApp, DependencyMonitor, dict[str, Switch], str],
) -> None:
    app, monitor, switches, service = served
    # Before any round: not ready, nothing claimed up.
    status, body = await asyncio.to_thread(readyz, app)
    assert status == 503
    assert body["down"] == ["database", "store"]
    assert await health(app) == NOT_SERVING
    assert gauge(service) == {"database": 0.0, "store": 0.0}

    assert await monitor.probe_once() is True
    status, body = await asyncio.to_thread(readyz, app)
    assert (status, body) == (
        200,
        {"status": "ready", "dependencies": {"database": {"up": True}, "store": {"up": True}}, "down": []},
    )
    assert await health(app) == SERVING
    assert gauge(service) == {"database": 1.0, "store": 1.0}

    switches["store"].down = True
    assert await monitor.probe_once() is False
    status, body = await asyncio.to_thread(readyz, app)
    assert status == 503
    assert body["down"] == ["store"]
    assert body["dependencies"]["store"] == {"up": False, "error": "ConnectionError: connection refused"}
    assert await health(app) == NOT_SERVING
    assert gauge(service) == {"database": 1.0, "store": 0.0}

    # /readyz reports the last round: it probes nothing itself.
    calls = switches["store"].calls
    await asyncio.to_thread(readyz, app)
    assert switches["store"].calls == calls

    switches["store"].down = False
    assert await monitor.probe_once() is True
    assert await health(app) == SERVING


async def test_a_probe_that_hangs_is_down_after_the_timeout(
    served: tuple[ServiceApp, DependencyMonitor, dict[str, Switch], str],
) -> None:
    _, monitor, switches, _ = served
    switches["database"].hang = True
    assert await monitor.probe_once() is False
    assert monitor.states["database"].error == "no answer within the probe timeout"
    assert monitor.states["store"].up


async def test_the_background_loop_probes_at_once_and_again_while_not_ready(
    served: tuple[ServiceApp, DependencyMonitor, dict[str, Switch], str],
) -> None:
    app, monitor, switches, _ = served
    switches["store"].down = True
    monitor.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    # Not ready: rounds come at most a second apart although the interval is 60 s.
    while switches["store"].calls < 3:
        assert loop.time() < deadline, "the monitor stopped probing while not ready"
        await asyncio.sleep(0.05)
    switches["store"].down = False
    while await health(app) != SERVING:
        assert loop.time() < deadline, "the monitor did not see the dependency come back"
        await asyncio.sleep(0.05)


def test_errors_lose_url_credentials_and_length() -> None:
    error = ConnectionError("cannot reach postgresql://hevlayer:s3cr3t@db:5432/x or https://k:v@s3.local/b")
    text = describe_error(error)
    assert "s3cr3t" not in text
    assert "k:v" not in text
    assert "postgresql://db:5432/x" in text
    assert "https://s3.local/b" in text
    assert len(describe_error(RuntimeError("x" * 5000))) == 300
    assert describe_error(TimeoutError()) == "no answer within the probe timeout"


def test_settings_refuse_a_timeout_longer_than_the_interval() -> None:
    from hevlayer.common.config import ConfigError

    with pytest.raises(ConfigError, match=r"^HEVLAYER_READINESS_TIMEOUT_SECONDS"):
        ReadinessSettings(interval_seconds=1.0, timeout_seconds=2.0).validate()
    with pytest.raises(ConfigError, match=r"^HEVLAYER_READINESS_INTERVAL_SECONDS"):
        ReadinessSettings(interval_seconds=0.0).validate()


async def test_an_outage_is_logged_once_and_a_slow_start_not_at_all(
    served: tuple[ServiceApp, DependencyMonitor, dict[str, Switch], str], caplog: pytest.LogCaptureFixture
) -> None:
    _, monitor, switches, _ = served
    caplog.set_level(logging.INFO, logger="hevlayer.readiness")
    switches["store"].down = True
    await monitor.probe_once()  # a dependency still starting: no warning yet
    switches["store"].down = False
    await monitor.probe_once()
    assert [r.getMessage() for r in caplog.records] == []

    switches["store"].down = True
    await monitor.probe_once()
    await monitor.probe_once()
    switches["store"].down = False
    await monitor.probe_once()
    assert [(r.levelname, r.getMessage().split(": ", 1)[1]) for r in caplog.records] == [
        ("WARNING", "dependency store is down: ConnectionError: connection refused"),
        ("INFO", "dependency store is up again"),
    ]


async def test_watched_dependencies_are_probed_between_the_startup_and_the_shutdown_hooks() -> None:
    """ServiceApp.watch_dependencies: the first round after the startup hooks (they open what the
    probes need), health and /readyz from its results, no probe once the shutdown hooks run
    (they close what the probes use)."""
    settings = ServerSettings(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0")
    events: list[str] = []

    async def probe() -> None:
        events.append("probe")

    async def startup() -> None:
        events.append("startup")

    async def shutdown() -> None:
        events.append("shutdown")
        await asyncio.sleep(0.2)  # ten probe intervals: a monitor still running would probe
        events.append("shut")

    app = ServiceApp(f"probe{uuid.uuid4().hex[:6]}", settings, serving_on_start=False)
    monitor = app.watch_dependencies(
        {"database": probe}, ReadinessSettings(interval_seconds=0.02, timeout_seconds=0.01)
    )
    app.on_startup(startup)
    app.on_shutdown(shutdown)
    await app.start()
    try:
        for _ in range(500):
            if await health(app) == SERVING:
                break
            await asyncio.sleep(0.02)
        assert await health(app) == SERVING
        assert monitor.ready
        status, body = await asyncio.to_thread(readyz, app)
        assert (status, body["dependencies"]) == (200, {"database": {"up": True}})
    finally:
        await app.stop()
    assert events[0] == "startup"
    assert "probe" in events
    assert events[-2:] == ["shutdown", "shut"]
    assert events.count("shutdown") == 1
