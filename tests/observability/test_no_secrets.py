"""No secret in any log line, error message, metric, span or readiness body.

A claimer and a gateway run with known, random secrets: the PostgreSQL password
(a role of its own on the session's server, so scram-sha-256 really checks
it), the S3 access and secret keys (a SeaweedFS of this test's own, started
with them) and the Turbopuffer API key (the gateway's default sink is the
Turbopuffer fake, which refuses any other key). A workload stages, claims,
reads, writes vectors and queries over gRPC and REST, then provokes errors:
bad input, a sink failure (the fake answers 503), a claimer whose PostgreSQL
is unreachable and one whose ``DATABASE_URL`` is malformed, and S3 going away.

Then every log line of every service (their log files, debug level), every
error returned to the client (status, message, details and trailing
metadata), every metric on every ``/metrics`` (and the gateway's
``/v2/metrics``), every span of the trace file and every ``/readyz`` body is
searched for each secret. A hit fails the test, naming the secret and where.

The gateway runs with authentication on: the workload's calls carry an admin
API token (seeded into the claimer by its hash), the claimer requires the
gateway's internal token, and one call is made with a forged token. All three
are secrets here too.

To check another secret, add it to :func:`secrets` with one line.
"""

from __future__ import annotations

import base64
import os
import secrets as random_secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopuffer, FakeTurbopufferThread
from support.leases import claim, read_chunks, write_vectors
from support.pipelines import create_pipeline
from support.polling import eventually
from support.processes import start_claimer, start_gateway
from support.service_http import http_json
from support.staging import document, stage

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.auth import SeedToken, bearer_metadata, generate_token, write_seed_file
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack import PostgresServer, SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import claimer_metadata

DIM = 4


API_TOKEN = generate_token()
"""The admin API token of the workload's calls."""
FORGED_TOKEN = generate_token().secret
"""A well-formed token no server knows, sent once (refused UNAUTHENTICATED)."""


def secrets(postgres_password: str, s3: SeaweedS3, turbopuffer_key: str) -> dict[str, str]:
    """Every secret the suite holds, by name: what must appear nowhere."""
    found = {
        "PostgreSQL password": postgres_password,
        "S3 access key id": s3.access_key,
        "S3 secret access key": s3.secret_key,
        "Turbopuffer API key": turbopuffer_key,
    }
    found["API token"] = API_TOKEN.secret
    found["API token's secret part"] = API_TOKEN.secret.split("_", 2)[-1]
    found["forged API token"] = FORGED_TOKEN
    found["internal token"] = os.environ["CLAIMER_INTERNAL_TOKEN"]
    return found


def bearer(token: str) -> dict[str, str]:
    """The HTTP header carrying ``token``."""
    return {"authorization": f"Bearer {token}"}


def _random(prefix: str) -> str:
    return f"{prefix}{random_secrets.token_hex(16)}"


def forms(value: str) -> list[str]:
    """The ways a secret could be written: as is, and base64 (an ``Authorization: Basic`` header)."""
    return [value, base64.b64encode(value.encode()).decode()]


@dataclass
class Evidence:
    """Texts the secrets must not appear in, each with where it comes from."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self.texts.append((where, text))

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        """``"<secret name> in <where>: …context…"`` for every hit."""
        found: list[str] = []
        for where, text in self.texts:
            for name, value in secrets.items():
                for form in forms(value):
                    at = text.find(form)
                    if at >= 0:
                        context = text[max(0, at - 80) : at + len(form) + 40].replace(form, "<SECRET>")
                        found.append(f"{name} in {where}: ...{context}...")
        return found


def rpc_error_text(error: aio.AioRpcError) -> str:
    """Everything a client receives with a failed call."""
    status = status_from_rpc_error(error)
    parts = [error.code().name, error.details() or "", error.debug_error_string(), str(status)]
    parts += [f"{key}={value!r}" for key, value in error.trailing_metadata() or ()]
    return "\n".join(parts)


@dataclass
class Suite:
    postgres_password: str
    database_url: str
    s3: SeaweedS3
    bucket: str
    turbopuffer: FakeTurbopuffer
    claimer: ServiceProcess
    gateway: ServiceProcess
    claimer_http: str
    gateway_address: str
    gateway_http: str
    tmp: Path
    traces: Path
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def secrets(self) -> dict[str, str]:
        return secrets(self.postgres_password, self.s3, self.turbopuffer.api_key)


@pytest.fixture(scope="module")
def suite(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    tmp = tmp_path_factory.mktemp("no-secrets")
    traces = tmp / "traces.jsonl"
    password = _random("pgpw")
    role = f"secretive_{uuid.uuid4().hex[:8]}"
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    postgres.execute(f"CREATE DATABASE {role} OWNER {role}")
    database_url = f"postgresql://{role}:{password}@{postgres.host}:{postgres.port}/{role}"
    s3 = SeaweedS3(tmp / "s3", access_key=_random("AKID"), secret_key=_random("s3sk")).start()
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    tpuf = FakeTurbopufferThread(FakeTurbopuffer(api_key=_random("tpuf")))
    base_url = tpuf.start()
    claimer: ServiceProcess | None = None
    gateway: ServiceProcess | None = None
    try:
        s3.create_bucket(bucket)
        debug = {"HEVLAYER_LOG_LEVEL": "debug"}
        internal = {"CLAIMER_INTERNAL_TOKEN": os.environ["CLAIMER_INTERNAL_TOKEN"]}
        seed = tmp / "bootstrap.json"
        write_seed_file(seed, [SeedToken.of(API_TOKEN, "no-secrets admin", "admin")])
        claimer, claimer_address, claimer_http = start_claimer(
            database_url,
            tmp,
            traces,
            **debug,
            **internal,
            **s3.client_env(bucket),
            CLAIMER_BOOTSTRAP_TOKENS_FILE=str(seed),
        )
        claimer.wait_ready(timeout=60)
        gateway, gateway_address, gateway_http = start_gateway(
            claimer_address,
            tmp,
            traces,
            **debug,
            **internal,
            **s3.client_env(bucket),
            GATEWAY_AUTH="on",
            GATEWAY_DEFAULT_SINK="turbopuffer",
            GATEWAY_TURBOPUFFER_API_KEY=tpuf.fake.api_key,
            GATEWAY_TURBOPUFFER_BASE_URL=base_url,
            GATEWAY_TURBOPUFFER_MAX_RETRIES="0",
            HEVLAYER_READINESS_INTERVAL_SECONDS="0.5",
            HEVLAYER_READINESS_TIMEOUT_SECONDS="0.5",
        )
        gateway.wait_ready(timeout=60)
        yield Suite(
            password,
            database_url,
            s3,
            bucket,
            tpuf.fake,
            claimer,
            gateway,
            claimer_http,
            gateway_address,
            gateway_http,
            tmp,
            traces,
        )
    finally:
        for proc in (gateway, claimer):
            if proc is not None:
                proc.stop(grace=10)
        tpuf.stop()
        s3.stop()


@pytest.fixture
async def channel(suite: Suite) -> AsyncIterator[aio.Channel]:
    chan = open_channel(suite.gateway_address, metadata=[bearer_metadata(API_TOKEN.secret)])
    try:
        yield chan
    finally:
        await chan.close()


async def write_chunks(
    channel: aio.Channel, pipeline_id: str, doc: document_pb2.Document, token: int
) -> None:
    """WriteVectors of ``doc``'s chunks, a vector each."""
    vectors = [
        document_pb2.Vector(id=chunk.id, values=[1.0, float(i), 0.5, 0.25])
        for i, chunk in enumerate(doc.chunks)
    ]
    await write_vectors(channel, pipeline_id, doc.id, token, vectors)


async def expect_rpc_error(
    evidence: Evidence, what: str, call: Callable[[], Awaitable[Any]]
) -> grpc.StatusCode:
    """Run ``call``, which must fail; record what the client got; its status code."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call()
    evidence.add(f"the gRPC error of {what}", rpc_error_text(caught.value))
    code: grpc.StatusCode = caught.value.code()
    return code


def http_text(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def rest(evidence: Evidence, what: str, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, answer = http_json(method, url, body, headers=bearer(API_TOKEN.secret))
    evidence.add(f"the REST answer to {what}", repr(answer))
    return status, answer


async def test_no_secret_in_logs_errors_metrics_or_spans(
    suite: Suite, channel: aio.Channel, tmp_path: Path
) -> None:
    evidence = Evidence()
    base = f"http://{suite.gateway_http}"

    # -- the workload: stage, claim, read, write, query (gRPC and REST) --------------------------
    pipeline_id = await create_pipeline(channel, sink=pipeline_pb2.SINK_TURBOPUFFER)
    docs = [document(f"doc-{i}", chunks=2) for i in range(4)]
    await stage(channel, pipeline_id, docs)
    leases = await claim(channel, pipeline_id)
    assert set(leases) == {doc.id for doc in docs}
    assert len(await read_chunks(channel, pipeline_id, leases)) >= 1
    for doc in docs[:3]:
        await write_chunks(channel, pipeline_id, doc, leases[doc.id])
    reply = await index_pb2_grpc.IndexServiceStub(channel).Query(
        ix.QueryRequest(pipeline_id=pipeline_id, vector=ix.QueryVector(values=[1.0, 0.0, 0.5, 0.25]), top_k=3)
    )
    assert reply.hits, "the workload indexed nothing: the Turbopuffer fake refused the API key?"
    status, answer = rest(
        evidence,
        "PUT document",
        "PUT",
        f"{base}/v2/pipelines/{pipeline_id}/documents/rest-doc",
        {"chunks": [{"id": "c", "text": "staged over REST"}]},
    )
    assert status == 200, answer
    status, answer = rest(
        evidence,
        "query",
        "POST",
        f"{base}/v2/pipelines/{pipeline_id}/query",
        {"vector": [1.0, 0.0, 0.5, 0.25]},
    )
    assert status == 200, answer

    # -- errors: a forged API token (gRPC and REST) ---------------------------------------------------
    async with open_channel(suite.gateway_address, metadata=[bearer_metadata(FORGED_TOKEN)]) as forged:
        code = await expect_rpc_error(
            evidence,
            "GetPipelineStatus with a forged token",
            lambda: pipeline_pb2_grpc.PipelineServiceStub(forged).GetPipelineStatus(
                pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
            ),
        )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    status, answer = http_json(
        "GET", f"{base}/v2/pipelines/{pipeline_id}/status", headers=bearer(FORGED_TOKEN)
    )
    evidence.add("the REST answer to a forged token", repr(answer))
    assert status == 401, answer

    # -- errors: bad input --------------------------------------------------------------------------
    pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
    code = await expect_rpc_error(
        evidence,
        "CreatePipeline with a bad id",
        lambda: pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id="Not A Valid Id!"))
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    oversized = document_pb2.Document(id="big")
    oversized.chunks.add(id="x" * 5000, text="t")
    [refused] = await stage(channel, pipeline_id, [oversized])
    evidence.add("the StageResult of a document with an oversized chunk id", str(refused))
    assert refused.HasField("error"), refused
    code = await expect_rpc_error(
        evidence,
        "Query with a vector of the wrong dimension",
        lambda: index_pb2_grpc.IndexServiceStub(channel).Query(
            ix.QueryRequest(pipeline_id=pipeline_id, vector=ix.QueryVector(values=[1.0] * (DIM + 3)))
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    status, _ = rest(
        evidence, "PUT document without chunks", "PUT", f"{base}/v2/pipelines/{pipeline_id}/documents/x", {}
    )
    assert status == 400
    status, _ = rest(evidence, "status of a missing pipeline", "GET", f"{base}/v2/pipelines/nope-nope/status")
    assert status == 404

    # -- errors: the sink fails (Turbopuffer answers 503, then refuses a wrong key: 401) --------------
    # (Many faults: the gateway's readiness probe of its default sink may take some of them.)
    suite.turbopuffer.fail_next(503, times=1000, message="injected outage")
    code = await expect_rpc_error(
        evidence,
        "WriteVectors while Turbopuffer fails",
        lambda: write_chunks(channel, pipeline_id, docs[3], leases[docs[3].id]),
    )
    assert code is grpc.StatusCode.UNAVAILABLE
    suite.turbopuffer.clear()
    suite.turbopuffer.fail_next(401, times=1000, message="unauthorized: missing or invalid API key")
    code = await expect_rpc_error(
        evidence,
        "Query while Turbopuffer refuses the key",
        lambda: index_pb2_grpc.IndexServiceStub(channel).Query(
            ix.QueryRequest(pipeline_id=pipeline_id, vector=ix.QueryVector(values=[1.0, 0.0, 0.5, 0.25]))
        ),
    )
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
    suite.turbopuffer.clear()

    # -- errors: PostgreSQL unreachable, and a malformed DATABASE_URL, both with the password -------
    role_part = suite.database_url.split("@", 1)[0]
    unreachable = f"{role_part}@127.0.0.1:{free_port()}/nowhere"
    lost, lost_address, _ = start_claimer(
        unreachable, tmp_path, tmp_path / "t.jsonl", HEVLAYER_LOG_LEVEL="debug"
    )
    suite.extra_logs.append(lost.log_path)
    try:
        async with open_channel(lost_address, metadata=claimer_metadata()) as lost_channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(lost_channel)

            async def refuses() -> bool:
                try:
                    await stub.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id="p"), timeout=5)
                except aio.AioRpcError as error:
                    evidence.add("the gRPC error of a claimer without PostgreSQL", rpc_error_text(error))
                    return error.code() is grpc.StatusCode.UNAVAILABLE and "PostgreSQL" in (
                        error.details() or ""
                    )
                return False

            await eventually(refuses, timeout=60, what="UNAVAILABLE naming PostgreSQL")
    finally:
        lost.stop(grace=5)
    malformed = f"{role_part}@127.0.0.1:notaport/x".replace("postgresql://", "mysql://")
    broken, _, _ = start_claimer(malformed, tmp_path, tmp_path / "t.jsonl")
    suite.extra_logs.append(broken.log_path)
    assert broken.wait(30) == 2, broken.log_tail()
    assert "DATABASE_URL" in broken.log_tail()

    # -- errors: S3 goes away (staging fails, /readyz names it) ----------------------------------------
    suite.s3.stop()
    try:
        code = await expect_rpc_error(
            evidence,
            "StageDocuments while S3 is down",
            lambda: stage(channel, pipeline_id, [document("after-s3")]),
        )
        assert code is grpc.StatusCode.UNAVAILABLE

        async def s3_down() -> bool:
            status, text = http_text(f"{base}/readyz")
            evidence.add("the gateway's /readyz while S3 is down", text)
            return status == 503 and '"s3"' in text

        await eventually(s3_down, timeout=60, what="/readyz naming S3")
    finally:
        suite.s3.start()

    # -- everything the services expose ------------------------------------------------------------
    for what, url in (
        ("the gateway's /metrics", f"{base}/metrics"),
        ("the gateway's /v2/metrics", f"{base}/v2/metrics"),
        ("the claimer's /metrics", f"http://{suite.claimer_http}/metrics"),
        ("the gateway's /readyz", f"{base}/readyz"),
        ("the claimer's /readyz", f"http://{suite.claimer_http}/readyz"),
    ):
        status, text = http_text(url)
        assert status in (200, 503), (url, status)
        evidence.add(what, text)
    logs = [suite.claimer.log_path, suite.gateway.log_path, *suite.extra_logs]
    for log in logs:
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            evidence.add(f"{log.name} line {number}", line)
    for number, line in enumerate(suite.traces.read_text().splitlines(), 1):
        evidence.add(f"span {number} of the trace file", line)

    # The search finds a secret where there is one (the processes' environment holds them all) ...
    environment = Evidence()
    environment.add("the gateway's environment", repr(suite.gateway.env))
    environment.add("the claimer's environment", repr(suite.claimer.env))
    environment.add("the client's metadata", repr([bearer_metadata(API_TOKEN.secret), FORGED_TOKEN]))
    assert {leak.split(" in ", 1)[0] for leak in environment.leaks(suite.secrets)} == set(suite.secrets)
    # ... and the workload produced what it is searched in (debug logs, spans, errors).
    assert sum(1 for where, _ in evidence.texts if where.startswith("the gRPC error")) >= 6
    assert sum(1 for where, _ in evidence.texts if " line " in where) > 100
    leaks = evidence.leaks(suite.secrets)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
