"""``HEVLAYER_TLS_ALLOWED_CLIENTS`` on a real ServiceApp: unary and streaming calls from a
certificate that names no allowed client are refused before their handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.certificates import Authority
from support.fakes.pipeline_service import Script, ScriptedPipelines

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.client import TLS, Client, ClientOptions, ServiceError
from hevlayer.common.config import load_settings
from hevlayer.common.server import ServerSettings, ServiceApp


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority()
    (directory / "ca.pem").write_bytes(authority.certificate)
    for name, server in (("server", True), ("gateway", False), ("worker", False)):
        issued = authority.issue(name, server=server)
        (directory / f"{name}.pem").write_bytes(issued.certificate)
        (directory / f"{name}.key").write_bytes(issued.private_key)
    return directory


@pytest.fixture
async def served(pki: Path) -> AsyncIterator[tuple[str, Script]]:
    settings = load_settings(
        ServerSettings,
        {
            "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:0",
            "HEVLAYER_HTTP_ADDRESS": "",
            "HEVLAYER_TLS_CERT": str(pki / "server.pem"),
            "HEVLAYER_TLS_KEY": str(pki / "server.key"),
            "HEVLAYER_TLS_CLIENT_CA": str(pki / "ca.pem"),
            "HEVLAYER_TLS_ALLOWED_CLIENTS": "gateway, layer-gateway.layer.svc",
        },
    )
    assert settings.tls_allowed_clients == ("gateway", "layer-gateway.layer.svc")
    script = Script()
    app = ServiceApp("claimer", settings)
    servicer = ScriptedPipelines(script)
    servicer.pipelines["p"] = pb.Pipeline(id="p")
    app.add_service(
        pb.DESCRIPTOR.services_by_name["PipelineService"].full_name,
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        servicer,
    )
    await app.start()
    try:
        yield f"localhost:{app.grpc_port}", script
    finally:
        await app.stop()


def _as(pki: Path, name: str) -> ClientOptions:
    return ClientOptions(tls=TLS(pki / "ca.pem", pki / f"{name}.pem", pki / f"{name}.key"))


async def test_the_allowed_client_is_served(pki: Path, served: tuple[str, Script]) -> None:
    address, script = served
    async with Client.connect(address, _as(pki, "gateway")) as client:
        assert (await client.pipelines.get("p")).id == "p"
        statuses = [s.pending_count async for s in client.pipelines.watch_status("p")]
    assert statuses == [3, 1, 0]
    assert (script.calls["GetPipeline"], script.calls["WatchPipelineStatus"]) == (1, 1)


async def test_another_certificate_is_refused_before_any_handler_runs(
    pki: Path, served: tuple[str, Script]
) -> None:
    address, script = served
    async with Client.connect(address, _as(pki, "worker")) as client:
        with pytest.raises(ServiceError) as unary:
            await client.pipelines.get("p")
        with pytest.raises(ServiceError) as streamed:
            _ = [s async for s in client.pipelines.watch_status("p")]
    for refused in (unary.value, streamed.value):
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        assert "HEVLAYER_TLS_ALLOWED_CLIENTS" in refused.message
        assert "worker" not in refused.message
    assert script.calls == {}
