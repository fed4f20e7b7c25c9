"""A live claimer + gateway with GATEWAY_AUTH=on, for the tests of authentication
(test_auth.py, test_auth_matrix.py) and of per-token rate limits (test_rate_limits.py), and
the call of any gateway method from its descriptor.

The claimer seeds one admin token (CLAIMER_BOOTSTRAP_TOKENS_FILE); the gateway remembers
no token (GATEWAY_AUTH_CACHE_SECONDS=0), so a revocation is visible to the next call.
Both run on a fresh bucket of the test S3.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc import aio
from support.processes import start_claimer, start_gateway
from support.service_http import http_json

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.client._requests import start_writer
from hevlayer.client.channel import open_channel
from hevlayer.common.auth import SeedToken, bearer_metadata, generate_token, write_seed_file
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess


@dataclass
class AuthStack:
    s3: SeaweedS3
    bucket: str
    claimer: ServiceProcess
    gateway: ServiceProcess
    claimer_address: str
    gateway_address: str
    gateway_http: str
    admin: str

    def channel(self, token: str | None) -> aio.Channel:
        """A channel to the gateway sending ``token`` (None: no token) on every call."""
        return open_channel(self.gateway_address, metadata=[bearer_metadata(token)] if token else [])

    def rest(self, method: str, path: str, token: str, body: object = None) -> tuple[int, Any]:
        """A REST call of the gateway with ``token`` as its bearer token: (status, JSON body)."""
        return http_json(
            method, f"http://{self.gateway_http}{path}", body, headers={"authorization": f"Bearer {token}"}
        )


@contextmanager
def running_auth_stack(
    database_url: str, s3: SeaweedS3, tmp: Path, bucket_prefix: str, **gateway_env: str
) -> Iterator[AuthStack]:
    """Start the claimer and the gateway (``gateway_env`` added to the gateway's environment)
    in ``tmp``, on a new bucket named ``bucket_prefix-<random>``; stop both on exit."""
    bucket = f"{bucket_prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    admin = generate_token()
    seed = tmp / "bootstrap.json"
    write_seed_file(seed, [SeedToken.of(admin, "test admin", "admin")])
    traces = tmp / "traces.jsonl"
    claimer, claimer_address, _ = start_claimer(
        database_url, tmp, traces, CLAIMER_BOOTSTRAP_TOKENS_FILE=str(seed), **s3_env
    )
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address,
            tmp,
            traces,
            GATEWAY_AUTH="on",
            GATEWAY_AUTH_CACHE_SECONDS="0",
            **gateway_env,
            **s3_env,
        )
        gateway.wait_ready(timeout=60)
        yield AuthStack(
            s3, bucket, claimer, gateway, claimer_address, gateway_address, gateway_http, admin.secret
        )
    finally:
        if gateway is not None:
            gateway.stop(grace=5)
        claimer.stop(grace=5)


async def call_method(channel: aio.Channel, service: str, method: Any, request: Message) -> None:
    """Call ``method`` (a method descriptor of ``service``) with ``request``, a stream until its
    first answer; raises the call's AioRpcError when it fails."""
    path = f"/{service}/{method.name}"
    parse = message_factory.GetMessageClass(method.output_type).FromString
    serialize = type(request).SerializeToString
    if not method.client_streaming:
        if method.server_streaming:
            answers = channel.unary_stream(path, serialize, parse)(request, timeout=10)
            async for _ in answers:
                break
            answers.cancel()
        else:
            await channel.unary_unary(path, serialize, parse)(request, timeout=10)
        return
    # Requests sent as hevlayer.client sends them: grpcio's own iterator consumer can turn a
    # stream the server refused before reading it into INTERNAL (grpc/grpc#36066).
    stream: Any = (
        channel.stream_stream(path, serialize, parse)(timeout=10)
        if method.server_streaming
        else channel.stream_unary(path, serialize, parse)(timeout=10)
    )
    writer = start_writer(stream, [request])
    try:
        if method.server_streaming:
            async for _ in stream:
                break
            stream.cancel()
        else:
            await stream
    finally:
        await asyncio.gather(writer, return_exceptions=True)


GATEWAY_SERVICES = (
    "hevlayer.api.pipeline.v1.PipelineService",
    "hevlayer.api.staging.v1.StagingService",
    "hevlayer.api.lease.v1.LeaseService",
    "hevlayer.api.index.v1.IndexService",
    "hevlayer.api.auth.v1.TokenService",
)
ROLE_OF = {"stager": auth_pb2.ROLE_STAGER, "worker": auth_pb2.ROLE_WORKER, "reader": auth_pb2.ROLE_READER}


async def make_token(admin: aio.Channel, role: auth_pb2.Role.ValueType, pipelines: Sequence[str] = ()) -> str:
    """A new token's secret (every pipeline when ``pipelines`` is empty)."""
    response = await auth_pb2_grpc.TokenServiceStub(admin).CreateToken(
        auth_pb2.CreateTokenRequest(
            name=f"test {uuid.uuid4().hex[:6]}",
            role=role,
            all_pipelines=not pipelines,
            pipeline_ids=list(pipelines),
        )
    )
    secret: str = response.secret
    return secret
