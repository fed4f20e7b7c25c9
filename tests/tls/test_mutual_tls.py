"""The suite end to end with mutual TLS on every server and every channel.

A throwaway CA (``support.certificates.Authority``) issues one certificate per
service. Triton, the claimer, the gateway and the embedder each serve TLS only
and require a client certificate from that CA; the gateway reaches the claimer
and the embedder, and the embedder reaches Triton and the gateway (its worker
loop), each with its own certificate. A user stages documents through
``hevlayer.client`` with a certificate of its own, the embedder's worker embeds
them, and a text query (gateway → embedder → Triton) finds them. Around that:
no server answers plaintext or a client without a certificate, and the claimer
refuses a valid certificate that is not the gateway's.

API tokens are on too (the gateway's default): the user and the CLI send an admin
token, the embedder's worker a worker token, both seeded into the claimer by hash.
The claimer runs without CLAIMER_INTERNAL_TOKEN: mutual TLS is what tells it the
gateway from other callers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.certificates import Authority
from support.processes import start_claimer

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client import TLS, Client, ClientOptions, ServiceError, Unavailable
from hevlayer.common.auth import SeedToken, bearer_metadata, generate_token, write_seed_file
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess, find_console_script
from hevlayer.triton.local import LocalModel, LocalTriton, TritonTLS

SERVICES = ("triton", "claimer", "gateway", "embedder")
ADMIN = generate_token()
WORKER = generate_token()
NO_INTERNAL_TOKEN = {"CLAIMER_INTERNAL_TOKEN": ""}
"""The claimer and the gateway of this stack rely on mutual TLS alone for the gateway's identity."""


@dataclass(frozen=True)
class Certificates:
    """PEM files of one CA and of the certificates it issued, by common name."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def server_env(self, name: str) -> dict[str, str]:
        """A service's gRPC server: TLS with its certificate, client certificates of the CA required."""
        return {
            "HEVLAYER_TLS_CERT": str(self.cert(name)),
            "HEVLAYER_TLS_KEY": str(self.key(name)),
            "HEVLAYER_TLS_CLIENT_CA": str(self.ca),
        }

    def client_env(self, name: str) -> dict[str, str]:
        """A service's channels to the others: TLS, presenting its certificate."""
        return {
            "HEVLAYER_CLIENT_TLS_CA": str(self.ca),
            "HEVLAYER_CLIENT_TLS_CERT": str(self.cert(name)),
            "HEVLAYER_CLIENT_TLS_KEY": str(self.key(name)),
        }

    def tls(self, name: str | None) -> TLS:
        """Client TLS presenting ``name``'s certificate (None: none, server authentication only)."""
        if name is None:
            return TLS(self.ca)
        return TLS(self.ca, certificate_chain=self.cert(name), private_key=self.key(name))

    def channel_credentials(self, name: str) -> grpc.ChannelCredentials:
        return self.tls(name).credentials()


def issue_certificates(directory: Path) -> Certificates:
    authority = Authority()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(authority.certificate)
    # Every service's certificate serves both ends: its server, and its client channels.
    for name in (*SERVICES, "user", "probe"):
        issued = authority.issue(name, server=True)
        (directory / f"{name}.pem").write_bytes(issued.certificate)
        (directory / f"{name}.key").write_bytes(issued.private_key)
    return Certificates(directory)


@dataclass
class SecureStack:
    certificates: Certificates
    triton: LocalTriton
    processes: dict[str, ServiceProcess]
    addresses: dict[str, str]

    @property
    def gateway(self) -> str:
        return self.addresses["gateway"]

    def client(self, name: str | None) -> Client:
        """A client of the gateway over TLS, presenting ``name``'s certificate."""
        options = ClientOptions(tls=self.certificates.tls(name), metadata=[bearer_metadata(ADMIN.secret)])
        return Client.connect(self.gateway, options)

    def logs(self) -> str:
        parts = [f"--- {n} ---\n{p.log_tail(60)}" for n, p in self.processes.items()]
        return "\n".join([*parts, f"--- triton ---\n{self.triton.log_tail(30)}"])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return issue_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stack(
    certificates: Certificates, database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureStack]:
    tmp = tmp_path_factory.mktemp("mtls")
    probe = certificates.channel_credentials("probe")
    triton = LocalTriton(
        [LocalModel(max_batch_size=32)],
        tls=TritonTLS(
            cert=certificates.cert("triton"),
            key=certificates.key("triton"),
            ca=certificates.ca,
            mutual=True,
            client_cert=certificates.cert("probe"),
            client_key=certificates.key("probe"),
        ),
    )
    bucket = f"mtls-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    common = {"HEVLAYER_LOG_FORMAT": "text", "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "3"}
    processes: dict[str, ServiceProcess] = {}
    addresses: dict[str, str] = {}
    running = SecureStack(certificates, triton, processes, addresses)
    seed = tmp / "bootstrap.json"
    write_seed_file(seed, [SeedToken.of(ADMIN, "user", "admin"), SeedToken.of(WORKER, "embedder", "worker")])
    try:
        triton.start().wait_ready()
        claimer, addresses["claimer"], _ = start_claimer(
            database_url,
            tmp,
            tmp / "traces.jsonl",
            **common,
            **s3_env,
            **certificates.server_env("claimer"),
            **NO_INTERNAL_TOKEN,
            CLAIMER_BOOTSTRAP_TOKENS_FILE=str(seed),
        )
        processes["claimer"] = claimer
        claimer.wait_ready(timeout=60, credentials=probe)
        addresses["gateway"] = f"127.0.0.1:{free_port()}"
        addresses["embedder"] = f"127.0.0.1:{free_port()}"
        processes["gateway"] = ServiceProcess(
            "hevlayer-gateway",
            name="gateway",
            env={
                **common,
                **s3_env,
                **certificates.server_env("gateway"),
                **certificates.client_env("gateway"),
                **NO_INTERNAL_TOKEN,
                "CLAIMER_ADDRESS": addresses["claimer"],
                "EMBEDDER_ADDRESS": addresses["embedder"],
                "HEVLAYER_GRPC_ADDRESS": addresses["gateway"],
                "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "GATEWAY_CACHE_DIR": str(tmp / "cache"),
                "GATEWAY_MILVUS_LITE_PATH": str(tmp / "vectors.db"),
            },
            log_path=tmp / "gateway.log",
            grpc_address=addresses["gateway"],
        ).start()
        processes["gateway"].wait_ready(timeout=90, credentials=probe)
        processes["embedder"] = ServiceProcess(
            "hevlayer-embedder",
            name="embedder",
            env={
                **common,
                **certificates.server_env("embedder"),
                **certificates.client_env("embedder"),
                "HEVLAYER_GRPC_ADDRESS": addresses["embedder"],
                "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "EMBEDDER_TRITON_URL": triton.url,
                "EMBEDDER_TRITON_TLS": "true",
                "EMBEDDER_GATEWAY_ADDRESS": addresses["gateway"],
                "EMBEDDER_WORKER_PIPELINES": "*",
                "EMBEDDER_WORKER_REFRESH_SECONDS": "0.5",
                "HEVLAYER_TOKEN": WORKER.secret,
            },
            log_path=tmp / "embedder.log",
            grpc_address=addresses["embedder"],
        ).start()
        processes["embedder"].wait_ready(timeout=90, credentials=probe)
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        for name in ("embedder", "gateway", "claimer"):
            if name in processes:
                processes[name].stop(grace=10)
        triton.cleanup()


def document(document_id: str, texts: list[str]) -> document_pb2.Document:
    doc = document_pb2.Document(id=document_id)
    for index, text in enumerate(texts):
        doc.chunks.add(id=f"c{index}", text=text)
    return doc


async def stage_counts(client: Client, pipeline_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for state in client.staging.list_documents(pipeline_id):
        counts[state.stage] = counts.get(state.stage, 0) + 1
    return counts


async def test_documents_are_staged_embedded_and_queried_over_mutual_tls(stack: SecureStack) -> None:
    pipeline_id = f"mtls-{uuid.uuid4().hex[:8]}"
    staged = {
        "volcano": document("volcano", ["A volcano erupts lava and ash over the island.", "Magma rises."]),
        "bakery": document("bakery", ["The bakery sells fresh bread and croissants every morning."]),
        "chess": document("chess", ["The grandmaster won the chess tournament with a bold sacrifice."]),
    }
    async with stack.client("user") as client:
        await client.pipelines.create(pipeline_pb2.Pipeline(id=pipeline_id))
        results = await client.staging.stage(pipeline_id, list(staged.values()))
        assert [r.document_id for r in results] == list(staged)
        deadline = time.monotonic() + 120
        while (counts := await stage_counts(client, pipeline_id)).get("indexed", 0) < len(staged):
            assert "failed" not in counts, f"{counts}\n{stack.logs()}"
            assert time.monotonic() < deadline, f"not all indexed within 120 s: {counts}\n{stack.logs()}"
            await asyncio.sleep(0.2)
        hits = await client.index.query(pipeline_id, "where can I buy bread?", top_k=3)
    assert hits, stack.logs()
    assert hits[0].document_id == "bakery"
    assert {hit.document_id for hit in hits} <= set(staged)


@pytest.mark.parametrize("service", SERVICES)
async def test_no_server_answers_plaintext_or_a_client_without_a_certificate(
    stack: SecureStack, service: str
) -> None:
    address = stack.triton.url if service == "triton" else stack.addresses[service]
    anonymous = grpc.ssl_channel_credentials(stack.certificates.ca.read_bytes())
    for channel in (grpc.aio.insecure_channel(address), grpc.aio.secure_channel(address, anonymous)):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_gateway_refuses_a_client_without_a_certificate(stack: SecureStack) -> None:
    async with stack.client(None) as anonymous:
        with pytest.raises(Unavailable):
            await anonymous.pipelines.list(timeout=5)
    stranger = Authority().issue("user", server=False)
    forged = ClientOptions(
        tls=TLS(
            stack.certificates.ca,
            certificate_chain=stranger.certificate,
            private_key=stranger.private_key,
        )
    )
    async with Client.connect(stack.gateway, forged) as intruder:
        with pytest.raises(Unavailable):
            await intruder.pipelines.list(timeout=5)
    async with stack.client("user") as user:
        assert isinstance(await user.pipelines.list(timeout=10), list)


async def test_the_claimer_accepts_only_the_gateways_certificate(stack: SecureStack) -> None:
    claimer = stack.addresses["claimer"]
    # Valid certificates of the same CA, but not the gateway's: refused, naming no secret.
    for name in ("embedder", "user"):
        options = ClientOptions(tls=stack.certificates.tls(name))
        async with Client.connect(claimer, options) as client:
            with pytest.raises(ServiceError) as refused:
                await client.pipelines.list(timeout=5)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "HEVLAYER_TLS_ALLOWED_CLIENTS" in refused.value.message
        assert "BEGIN" not in refused.value.message
        assert name not in refused.value.message
    async with Client.connect(claimer, ClientOptions(tls=stack.certificates.tls("gateway"))) as gateway:
        assert isinstance(await gateway.pipelines.list(timeout=10), list)
    # Health stays open to any certificate of the CA (probes need no gateway identity).
    probe = stack.certificates.channel_credentials("probe")
    async with grpc.aio.secure_channel(claimer, probe) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _start_fails(command: str, env: dict[str, str]) -> str:
    """Run a service that must refuse to start (exit 2); its stderr."""
    done = subprocess.run(
        [str(find_console_script(command))],
        env={**os.environ, "HEVLAYER_GRPC_ADDRESS": f"127.0.0.1:{free_port()}", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr


def _server(c: Certificates, cert: str, key: str) -> dict[str, str]:
    return {"HEVLAYER_TLS_CERT": str(c.cert(cert)), "HEVLAYER_TLS_KEY": str(c.key(key))}


UNUSABLE: list[tuple[str, Callable[[Certificates], dict[str, str]]]] = [
    (
        "HEVLAYER_TLS_CERT",
        lambda c: {**_server(c, "embedder", "embedder"), "HEVLAYER_TLS_CERT": "/missing.pem"},
    ),
    ("HEVLAYER_TLS_KEY", lambda c: _server(c, "embedder", "gateway")),
    ("HEVLAYER_TLS_KEY", lambda c: {"HEVLAYER_TLS_CERT": str(c.cert("embedder"))}),
    (
        "HEVLAYER_TLS_CLIENT_CA",
        lambda c: {**_server(c, "embedder", "embedder"), "HEVLAYER_TLS_CLIENT_CA": str(c.key("user"))},
    ),
    (
        "HEVLAYER_TLS_ALLOWED_CLIENTS",
        lambda c: {**_server(c, "embedder", "embedder"), "HEVLAYER_TLS_ALLOWED_CLIENTS": "gateway"},
    ),
    ("HEVLAYER_CLIENT_TLS_CA", lambda c: {"HEVLAYER_CLIENT_TLS_CA": "/missing.pem"}),
    ("HEVLAYER_CLIENT_TLS_KEY", lambda c: {"HEVLAYER_CLIENT_TLS_CERT": str(c.cert("embedder"))}),
    ("EMBEDDER_TRITON_TLS", lambda c: {"EMBEDDER_TRITON_TLS": "true"}),
]


@pytest.mark.parametrize(("variable", "env"), UNUSABLE)
def test_unusable_tls_settings_stop_the_service_naming_the_variable(
    certificates: Certificates, variable: str, env: Callable[[Certificates], dict[str, str]]
) -> None:
    stderr = _start_fails("hevlayer-embedder", env(certificates))
    assert f"configuration error: {variable}:" in stderr


def _hevlayer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEVLAYER_CLIENT_TLS_")}
    return subprocess.run(
        [sys.executable, "-m", "hevlayer.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_cli_talks_mutual_tls_with_flags_or_environment(stack: SecureStack, tmp_path: Path) -> None:
    c = stack.certificates
    pipeline_id = f"cli-{uuid.uuid4().hex[:8]}"
    base = {
        "HEVLAYER_DATA_DIR": str(tmp_path),
        "HEVLAYER_GATEWAY": stack.gateway,
        "HEVLAYER_TOKEN": ADMIN.secret,
    }
    flags = ["--tls-ca", str(c.ca), "--tls-cert", str(c.cert("user")), "--tls-key", str(c.key("user"))]
    created = _hevlayer(*flags, "pipelines", "create", pipeline_id, env=base)
    assert created.returncode == 0, created.stderr
    listed = _hevlayer("pipelines", "list", env={**base, **c.client_env("user")})
    assert listed.returncode == 0, listed.stderr
    assert pipeline_id in listed.stdout
    plaintext = _hevlayer("pipelines", "list", env=base)
    assert plaintext.returncode == 1
    assert "UNAVAILABLE" in plaintext.stderr
    half = _hevlayer("--tls-ca", str(c.ca), "--tls-cert", str(c.cert("user")), "pipelines", "list", env=base)
    assert half.returncode == 2
    assert "--tls-key (HEVLAYER_CLIENT_TLS_KEY)" in half.stderr
