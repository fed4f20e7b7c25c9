"""A claimer + gateway stack on real PostgreSQL, SeaweedFS S3 and Milvus Lite,
and a real Redis server, for the gateway tests.

- ``redis_server`` (session): ``redis-server`` from Debian's package on a free
  port, no persistence. Missing binary: the test fails and says how to
  install it (``apt-get install -y redis-server``).
- ``gateway_stack`` (module): claimer and gateway processes on a fresh
  database and a fresh bucket, the gateway with a disk cache and a Milvus
  Lite file in a temporary directory, and the settings of ``gateway_env``
  (module; none unless a test module overrides it).

- ``auth_stack`` (module) and ``admin``: claimer and gateway with GATEWAY_AUTH=on, and a
  channel with the seeded admin token (tests/gateway/auth_stack.py).
- ``turbopuffer_server`` (module): the Turbopuffer HTTP API fake (support/fakes/turbopuffer.py)
  in a thread; ``milvus_server`` (module): Milvus Lite's gRPC server mode on a free port.

Tests that need another cache backend or sink start their own stack with
``support.stacks.start_stack(...)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from gateway.auth_stack import AuthStack, running_auth_stack
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.milvus_lite import MilvusLiteServer
from support.redis_server import RedisServer
from support.stacks import GatewayStack, start_stack

from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_env() -> dict[str, str]:
    """Extra settings of the module's gateway: a test module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def gateway_stack(
    database_url: str,
    s3: SeaweedS3,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    gateway_env: dict[str, str],
) -> Iterator[GatewayStack]:
    """Claimer + gateway (disk cache, Milvus Lite) for one test module."""
    stack = start_stack(database_url, s3, tmp_path_factory.mktemp("gateway"), gateway_env)
    try:
        yield stack
    finally:
        if request.session.testsfailed:
            print("--- gateway log ---\n" + stack.gateway.log_tail(60))
            print("--- claimer log ---\n" + stack.claimer.log_tail(30))
        stack.stop()


@pytest.fixture
async def channel(gateway_stack: GatewayStack) -> AsyncIterator[aio.Channel]:
    """A client channel to the stack's gateway."""
    chan = open_channel(gateway_stack.gateway_address)
    try:
        yield chan
    finally:
        await chan.close()


@pytest.fixture(scope="module")
def auth_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthStack]:
    """A claimer + gateway with GATEWAY_AUTH=on for one test module (test_rate_limits.py
    overrides it with per-token rate limits)."""
    tmp = tmp_path_factory.mktemp("auth")
    with running_auth_stack(
        database_url,
        s3,
        tmp,
        "auth",
        GATEWAY_CACHE_DIR=str(tmp / "cache"),
        GATEWAY_MILVUS_LITE_PATH=str(tmp / "vectors.db"),
    ) as stack:
        yield stack


@pytest.fixture
async def admin(auth_stack: AuthStack) -> AsyncIterator[aio.Channel]:
    """A channel to ``auth_stack``'s gateway with the admin token the claimer seeds."""
    channel = auth_stack.channel(auth_stack.admin)
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture(scope="module")
def turbopuffer_server() -> Iterator[FakeTurbopufferThread]:
    server = FakeTurbopufferThread()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-server"))
    server.start()
    yield server
    server.stop()
