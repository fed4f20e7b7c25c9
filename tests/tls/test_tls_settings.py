"""TLS settings without servers: what the environment turns into, and the claimer's default identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.certificates import Authority

from hevlayer.claimer.settings import server_defaults
from hevlayer.client import ClientOptions
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.config import ConfigError, describe_settings, load_settings
from hevlayer.common.server import ServerSettings
from hevlayer.common.tls import peer_identities
from hevlayer.devstack.stack import PLAINTEXT_ENV


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority()
    (directory / "ca.pem").write_bytes(authority.certificate)
    issued = authority.issue("gateway", server=True)
    (directory / "gateway.pem").write_bytes(issued.certificate)
    (directory / "gateway.key").write_bytes(issued.private_key)
    return directory


def test_no_client_tls_variables_mean_plaintext() -> None:
    settings = ClientTLSSettings.from_env({})
    assert not settings.enabled
    assert settings.options().tls is None


def test_client_tls_variables_become_the_channels_tls(pki: Path) -> None:
    settings = ClientTLSSettings.from_env(
        {
            "HEVLAYER_CLIENT_TLS_CA": str(pki / "ca.pem"),
            "HEVLAYER_CLIENT_TLS_CERT": str(pki / "gateway.pem"),
            "HEVLAYER_CLIENT_TLS_KEY": str(pki / "gateway.key"),
        }
    )
    options = settings.options(ClientOptions(keepalive_time=7.0), traced=False)
    assert options.tls is not None
    assert options.tls.root_certificates == (pki / "ca.pem").read_bytes()
    assert options.tls.certificate_chain == (pki / "gateway.pem").read_bytes()
    assert options.tls.private_key == (pki / "gateway.key").read_bytes()
    assert (options.keepalive_time, options.traced) == (7.0, False)
    options.tls.credentials()  # the PEM bytes make channel credentials


def test_server_authentication_only(pki: Path) -> None:
    options = ClientTLSSettings.from_env({"HEVLAYER_CLIENT_TLS_CA": str(pki / "ca.pem")}).options()
    assert options.tls is not None
    assert options.tls.certificate_chain is None


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HEVLAYER_CLIENT_TLS_CA": "gateway.key"}, "HEVLAYER_CLIENT_TLS_CA"),
        ({"HEVLAYER_CLIENT_TLS_KEY": "gateway.key"}, "HEVLAYER_CLIENT_TLS_CERT"),
        (
            {"HEVLAYER_CLIENT_TLS_CERT": "gateway.pem", "HEVLAYER_CLIENT_TLS_KEY": "ca.pem"},
            "HEVLAYER_CLIENT_TLS_KEY",
        ),
        (
            {"HEVLAYER_CLIENT_TLS_CERT": "missing.pem", "HEVLAYER_CLIENT_TLS_KEY": "gateway.key"},
            "HEVLAYER_CLIENT_TLS_CERT",
        ),
    ],
)
def test_unusable_client_files_name_the_variable(pki: Path, env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{variable}: "):
        ClientTLSSettings.from_env({key: str(pki / name) for key, name in env.items()})


def test_the_claimer_accepts_only_the_gateway_once_mutual_tls_is_on(pki: Path) -> None:
    assert "HEVLAYER_TLS_ALLOWED_CLIENTS" not in server_defaults({})
    mutual = {
        "HEVLAYER_TLS_CERT": str(pki / "gateway.pem"),
        "HEVLAYER_TLS_KEY": str(pki / "gateway.key"),
        "HEVLAYER_TLS_CLIENT_CA": str(pki / "ca.pem"),
    }
    settings = load_settings(ServerSettings, mutual, defaults=server_defaults(mutual))
    assert settings.tls_allowed_clients == ("gateway",)
    assert settings.grpc_address.startswith("127.0.0.1:")
    anyone = load_settings(
        ServerSettings, {**mutual, "HEVLAYER_TLS_ALLOWED_CLIENTS": ""}, defaults=server_defaults(mutual)
    )
    assert anyone.tls_allowed_clients == ()


def test_peer_identities_are_the_common_name_and_the_alternative_names() -> None:
    context = {
        "x509_common_name": [b"gateway"],
        "x509_subject_alternative_name": [b"layer-gateway.layer.svc", b"127.0.0.1"],
        "transport_security_type": [b"ssl"],
    }
    assert peer_identities(context) == {"gateway", "layer-gateway.layer.svc", "127.0.0.1"}
    assert peer_identities({"transport_security_type": [b"ssl"]}) == set()


def test_the_local_stack_clears_every_tls_variable() -> None:
    """``hevlayer up`` stays plaintext on loopback even when the shell exports TLS variables for the CLI."""
    tls_variables = {
        row.env
        for cls in (ServerSettings, ClientTLSSettings)
        for row in describe_settings(cls)
        if "_TLS_" in row.env
    }
    assert tls_variables
    assert tls_variables == set(PLAINTEXT_ENV)
