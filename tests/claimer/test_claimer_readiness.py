"""The claimer's readiness follows PostgreSQL: NOT_SERVING / 503 naming it while it does not
answer (a PostgreSQL of this test's own is stopped), SERVING / 200 once it is back, and the
calls work again. Every wait is a bounded poll."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from support.polling import eventually
from support.processes import start_claimer
from support.readiness import health, readyz
from support.service_http import metric_samples

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.devstack import PostgresServer
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.testing import claimer_metadata

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL with a persistent directory and a fixed port, so it can be stopped and restarted."""
    with PostgresServer(tmp_path / "pg", port=free_port(), settings={"fsync": "off"}) as server:
        yield server


async def test_readiness_follows_postgresql(own_postgres: PostgresServer, tmp_path: Path) -> None:
    claimer, address, http_address = start_claimer(
        own_postgres.dsn,
        tmp_path,
        tmp_path / "traces.jsonl",
        HEVLAYER_READINESS_INTERVAL_SECONDS="0.5",
        HEVLAYER_READINESS_TIMEOUT_SECONDS="0.5",
    )
    try:
        claimer.wait_ready(timeout=60)
        status, body = readyz(http_address)
        assert (status, body["dependencies"]) == (200, {"postgresql": {"up": True}}), body
        up = metric_samples(http_address, "hevlayer_claimer_dependency_up")
        assert up == [({"dependency": "postgresql"}, 1.0)]

        own_postgres.stop()
        seen: dict[str, Any] = {}

        async def down() -> bool:
            status, body = readyz(http_address)
            seen.update(body)
            return status == 503 and body.get("down") == ["postgresql"]

        await eventually(down, timeout=60, what="/readyz 503 naming postgresql")
        assert seen["dependencies"]["postgresql"]["error"], seen
        assert await health(address) == NOT_SERVING
        assert metric_samples(http_address, "hevlayer_claimer_dependency_up") == [
            ({"dependency": "postgresql"}, 0.0)
        ]

        own_postgres.start()

        async def ready() -> bool:
            return readyz(http_address)[0] == 200

        await eventually(ready, timeout=60, what="/readyz 200 once PostgreSQL is back")
        assert await health(address) == SERVING
        async with open_channel(address, metadata=claimer_metadata()) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            pipeline_id = f"back-{uuid.uuid4().hex[:8]}"
            created = await stub.CreatePipeline(
                pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id)), timeout=30
            )
            assert created.pipeline.id == pipeline_id
    finally:
        claimer.stop(grace=5)
