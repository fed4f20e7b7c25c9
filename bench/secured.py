"""The secured path of the benchmarks (bench/claims.py, bench/staging.py): what a
claimer + gateway pair and its clients need to run it, from one place.

"Secured" means:

* **mutual TLS on every hop**: the client's channel to the gateway and the
  gateway's channel to the claimer. A throwaway CA (made here with
  ``cryptography``) issues one certificate per party (``claimer``,
  ``gateway``, ``worker``, ``probe``); each server serves TLS only and requires
  a client certificate of that CA; the claimer accepts only the gateway's
  (``HEVLAYER_TLS_ALLOWED_CLIENTS=gateway``, as in production);
* **API tokens**: every call of the benchmark's clients carries
  ``authorization: Bearer <token>``, a real API token of the clients' role (seeded
  into the claimer by its hash), which the gateway verifies (GATEWAY_AUTH=on) and
  checks against the method's role on every call. The claimer relies on mutual TLS
  for the gateway's identity (no internal token).

The plaintext path next to it runs with GATEWAY_AUTH=off and CLAIMER_AUTH=off.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hevlayer.common.auth import SeedToken, generate_token, write_seed_file

PARTIES = ("claimer", "gateway", "worker", "probe")
"""Who gets a certificate: the two servers (whose certificates also serve their client
channels), the benchmark's clients, and the health probe of ``wait_ready``."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_certificates(directory: Path) -> None:
    """A CA (``ca.pem``) and, for each of :data:`PARTIES`, ``NAME.pem`` and ``NAME.key``:
    P-256 keys, valid for a day, for localhost and 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("hevlayer bench CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for party in PARTIES:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(party))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{party}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{party}.key"
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)


@dataclass(frozen=True)
class Secured:
    """Certificates and token of the secured path. Picklable (plain fields), so spawned
    worker processes get it as an argument."""

    directory: Path
    token: str
    """Sent as ``authorization: Bearer`` on every call of the benchmark's clients."""

    @classmethod
    def create(cls, directory: Path, role: str = "worker") -> Secured:
        """Certificates in ``directory`` and the clients' API token of ``role`` (every pipeline),
        written by hash to the claimer's bootstrap file."""
        issue_certificates(directory)
        token = generate_token()
        write_seed_file(directory / "bootstrap.json", [SeedToken.of(token, f"bench {role}", role)])
        return cls(directory, token.secret)

    def _cert(self, party: str) -> str:
        return str(self.directory / f"{party}.pem")

    def _key(self, party: str) -> str:
        return str(self.directory / f"{party}.key")

    def _server_env(self, party: str) -> dict[str, str]:
        return {
            "HEVLAYER_TLS_CERT": self._cert(party),
            "HEVLAYER_TLS_KEY": self._key(party),
            "HEVLAYER_TLS_CLIENT_CA": str(self.directory / "ca.pem"),
        }

    def claimer_env(self) -> dict[str, str]:
        """The claimer: mutual TLS, only the gateway's certificate may call; the clients'
        token seeded."""
        return {
            **self._server_env("claimer"),
            "HEVLAYER_TLS_ALLOWED_CLIENTS": "gateway",
            "CLAIMER_AUTH": "on",
            "CLAIMER_INTERNAL_TOKEN": "",
            "CLAIMER_BOOTSTRAP_TOKENS_FILE": str(self.directory / "bootstrap.json"),
        }

    def gateway_env(self) -> dict[str, str]:
        """The gateway: mutual TLS for its clients, and its channel to the claimer over
        mutual TLS with its own certificate."""
        return {
            **self._server_env("gateway"),
            "HEVLAYER_CLIENT_TLS_CA": str(self.directory / "ca.pem"),
            "HEVLAYER_CLIENT_TLS_CERT": self._cert("gateway"),
            "HEVLAYER_CLIENT_TLS_KEY": self._key("gateway"),
            "GATEWAY_AUTH": "on",
            "CLAIMER_INTERNAL_TOKEN": "",
        }

    def pem(self, party: str = "worker") -> tuple[bytes, bytes, bytes]:
        """(CA, certificate chain, private key) of ``party``, as PEM bytes."""
        return (
            (self.directory / "ca.pem").read_bytes(),
            (self.directory / f"{party}.pem").read_bytes(),
            (self.directory / f"{party}.key").read_bytes(),
        )

    def credentials(self, party: str = "worker") -> grpc.ChannelCredentials:
        """Channel credentials of ``party``: the CA to check servers against, and its certificate."""
        ca, chain, key = self.pem(party)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call of the benchmark's clients carries."""
        return (("authorization", f"Bearer {self.token}"),)
