"""hevlayer.client over TLS and mutual TLS, against a real server with throwaway certificates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.certificates import Authority
from support.fakes.pipeline_service import Script, serve

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.client import TLS, Client, ClientOptions, ServiceError, Unavailable


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority()


async def test_tls_with_the_servers_ca(authority: Authority, tmp_path: Path) -> None:
    issued = authority.issue("localhost", server=True)
    server, _, address = await serve(
        Script(), grpc.ssl_server_credentials([(issued.private_key, issued.certificate)])
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.certificate)
    try:
        async with Client.connect(address, ClientOptions(tls=TLS(root_certificates=ca))) as client:
            created = await client.pipelines.create(pb.Pipeline(id="secure"))
        assert created.id == "secure"
        async with Client.connect(
            address, ClientOptions(tls=TLS(root_certificates=Authority().certificate))
        ) as other:
            with pytest.raises(Unavailable):
                await other.pipelines.get("secure", timeout=5)
        async with Client.connect(address, ClientOptions()) as plaintext:
            with pytest.raises(Unavailable):
                await plaintext.pipelines.get("secure", timeout=5)
    finally:
        await server.stop(None)


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(authority: Authority) -> None:
    issued = authority.issue("localhost", server=True)
    credentials = grpc.ssl_server_credentials(
        [(issued.private_key, issued.certificate)],
        root_certificates=authority.certificate,
        require_client_auth=True,
    )
    script = Script()
    server, _, address = await serve(script, credentials)
    worker = authority.issue("worker-1", server=False)
    try:
        mutual = TLS(
            authority.certificate, certificate_chain=worker.certificate, private_key=worker.private_key
        )
        async with Client.connect(address, ClientOptions(tls=mutual)) as client:
            await client.pipelines.create(pb.Pipeline(id="mtls"))
            assert (await client.pipelines.get("mtls")).id == "mtls"
        async with Client.connect(address, ClientOptions(tls=TLS(authority.certificate))) as anonymous:
            with pytest.raises(ServiceError) as caught:
                await anonymous.pipelines.get("mtls", timeout=5)
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        stranger = Authority().issue("intruder", server=False)
        forged = TLS(
            authority.certificate, certificate_chain=stranger.certificate, private_key=stranger.private_key
        )
        async with Client.connect(address, ClientOptions(tls=forged)) as intruder:
            with pytest.raises(Unavailable):
                await intruder.pipelines.get("mtls", timeout=5)
    finally:
        await server.stop(None)
    assert script.calls["GetPipeline"] == 1


async def test_call_credentials_ride_on_tls(authority: Authority) -> None:
    issued = authority.issue("localhost", server=True)
    script = Script()
    server, _, address = await serve(
        script, grpc.ssl_server_credentials([(issued.private_key, issued.certificate)])
    )
    options = ClientOptions(
        tls=TLS(authority.certificate), call_credentials=grpc.access_token_call_credentials("s3cret")
    )
    try:
        async with Client.connect(address, options) as client:
            await client.pipelines.create(pb.Pipeline(id="token"))
    finally:
        await server.stop(None)
    assert script.metadata[-1]["authorization"] == "Bearer s3cret"


def test_options_refuse_what_cannot_work(authority: Authority) -> None:
    with pytest.raises(ValueError, match="call_credentials needs TLS"):
        Client.connect("127.0.0.1:1", ClientOptions(call_credentials=grpc.access_token_call_credentials("x")))
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        TLS(authority.certificate, certificate_chain=b"pem").credentials()
