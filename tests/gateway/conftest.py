"""A claimer + gateway stack on real PostgreSQL, SeaweedFS S3 and Milvus Lite,
and a real Redis server, for the gateway tests.

- ``redis_server`` (session): ``redis-server`` from Debian's package on a free
  port, no persistence. Missing binary: the test fails and says how to
  install it (``apt-get install -y redis-server``).
- ``gateway_stack`` (module): claimer and gateway processes on a fresh
  database and a fresh bucket, the gateway with a disk cache and a Milvus
  Lite file in a temporary directory.
- ``start_stack(...)``: the same with extra gateway environment (tests that
  need another cache backend or sink start their own).
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from foundation.conftest import start_claimer, start_gateway
from grpc import aio

from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port`` without persistence."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the gateway's Redis cache tests run a real one "
                "(install it with `apt-get install -y redis-server`)"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 20
        while not self._ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (idempotent)."""
        atexit.unregister(self.stop)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class GatewayStack:
    """A running claimer + gateway."""

    s3: SeaweedS3
    bucket: str
    database_url: str
    claimer: ServiceProcess
    gateway: ServiceProcess
    claimer_address: str
    gateway_address: str
    gateway_http: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The gateway's REST base URL."""
        return f"http://{self.gateway_http}"

    def stop(self) -> None:
        """Stop both processes."""
        for proc in (self.gateway, self.claimer):
            proc.stop(grace=10)


def start_stack(
    database_url: str, s3: SeaweedS3, tmp: Path, gateway_env: dict[str, str] | None = None
) -> GatewayStack:
    """Start claimer and gateway on a new bucket; the caller stops them."""
    bucket = f"gw-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    traces = tmp / "traces.jsonl"
    claimer, claimer_address, _ = start_claimer(
        database_url, tmp, traces, HEVLAYER_LOG_FORMAT="text", **s3_env
    )
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        env = {
            **s3_env,
            "GATEWAY_CACHE_DIR": str(tmp / "cache"),
            "GATEWAY_MILVUS_LITE_PATH": str(tmp / "vectors.db"),
            "GATEWAY_ORPHAN_RETRY_SECONDS": "1",
            **(gateway_env or {}),
        }
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address, tmp, traces, HEVLAYER_LOG_FORMAT="text", **env
        )
        gateway.wait_ready(timeout=60)
    except BaseException:
        if gateway is not None:
            print(gateway.log_tail(80))
            gateway.stop(grace=5)
        print(claimer.log_tail(80))
        claimer.stop(grace=5)
        raise
    return GatewayStack(
        s3=s3,
        bucket=bucket,
        database_url=database_url,
        claimer=claimer,
        gateway=gateway,
        claimer_address=claimer_address,
        gateway_address=gateway_address,
        gateway_http=gateway_http,
        tmp=tmp,
        env=env,
    )


@pytest.fixture(scope="module")
def gateway_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayStack]:
    """Claimer + gateway (disk cache, Milvus Lite) for one test module."""
    stack = start_stack(database_url, s3, tmp_path_factory.mktemp("gateway"))
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
