"""Client TLS and the API token from the environment: the one place every hevlayer process
turns ``HEVLAYER_CLIENT_TLS_*`` and ``HEVLAYER_TOKEN`` / ``HEVLAYER_TOKEN_FILE`` into
:class:`~hevlayer.client.options.ClientOptions`.

Every internal channel (gateway to claimer and embedder, embedder to gateway
and Triton, summarizer to gateway, operator to gateway) and the ``hevlayer``
command open their channels with :meth:`ClientTLSSettings.options`:

* nothing set: plaintext (what ``hevlayer up`` runs on loopback);
* ``HEVLAYER_CLIENT_TLS_CA``: TLS, the server's certificate checked against that CA;
* with ``HEVLAYER_CLIENT_TLS_CERT`` and ``HEVLAYER_CLIENT_TLS_KEY`` too: mutual TLS,
  the process presents that certificate (servers with ``HEVLAYER_TLS_CLIENT_CA`` require one).

and with ``HEVLAYER_TOKEN`` (or ``HEVLAYER_TOKEN_FILE``) every call carries that API token
(``authorization: Bearer``; docs/security.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hevlayer.client.options import TLS, ClientOptions
from hevlayer.common.auth import TOKEN_ENV, bearer_metadata
from hevlayer.common.config import ConfigError, load_settings, setting
from hevlayer.common.tls import check_ca_file, check_key_pair

CA_ENV = "HEVLAYER_CLIENT_TLS_CA"
CERT_ENV = "HEVLAYER_CLIENT_TLS_CERT"
KEY_ENV = "HEVLAYER_CLIENT_TLS_KEY"
TOKEN_FILE_ENV = f"{TOKEN_ENV}_FILE"


@dataclass(frozen=True)
class ClientTLSSettings:
    """TLS of every channel this process opens to another hevlayer service."""

    ca: str = setting(
        CA_ENV,
        "PEM file of the CA(s) that signed the servers' certificates; set: every channel this process "
        "opens to a hevlayer service (and the CLI's) uses TLS. Empty, with HEVLAYER_CLIENT_TLS_CERT set: "
        "the system's trust store. Both empty: plaintext.",
        "",
    )
    cert: str = setting(
        CERT_ENV,
        "PEM file of this process's client certificate chain (mutual TLS; goes with "
        "HEVLAYER_CLIENT_TLS_KEY). Its subject CN or a SAN is the identity servers check (the claimer "
        "accepts only gateway).",
        "",
    )
    key: str = setting(KEY_ENV, "PEM file of the private key of HEVLAYER_CLIENT_TLS_CERT (unencrypted).", "")
    token: str = setting(
        TOKEN_ENV,
        "API token sent as authorization: Bearer on every call to the gateway (the embedder worker, the "
        "summarizer, the operator, the CLI). Empty: HEVLAYER_TOKEN_FILE, else none.",
        "",
        secret=True,
    )
    token_file: str = setting(
        TOKEN_FILE_ENV,
        "File holding the API token (e.g. a mounted Kubernetes secret), read at start when "
        "HEVLAYER_TOKEN is empty.",
        "",
    )

    @property
    def enabled(self) -> bool:
        """Whether channels use TLS."""
        return bool(self.ca or self.cert)

    def validate(self) -> None:
        """Raise ConfigError naming the first variable whose file is missing or not usable PEM."""
        if bool(self.cert) != bool(self.key):
            missing = KEY_ENV if self.cert else CERT_ENV
            raise ConfigError(f"{missing}: required with {CERT_ENV if self.cert else KEY_ENV} (mutual TLS)")
        if self.ca:
            check_ca_file(self.ca, CA_ENV)
        if self.cert:
            check_key_pair(self.cert, self.key, CERT_ENV, KEY_ENV)
        if not self.token and self.token_file:
            try:
                Path(self.token_file).read_text()
            except OSError as exc:
                raise ConfigError(
                    f"{TOKEN_FILE_ENV}: cannot read {self.token_file}: {exc.strerror}"
                ) from None

    def api_token(self) -> str:
        """The API token (HEVLAYER_TOKEN, else the content of HEVLAYER_TOKEN_FILE); "" if none."""
        if self.token:
            return self.token.strip()
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return ""

    def tls(self) -> TLS | None:
        """The :class:`TLS` these settings describe (None: plaintext)."""
        if not self.enabled:
            return None
        return TLS(
            root_certificates=Path(self.ca).read_bytes() if self.ca else None,
            certificate_chain=Path(self.cert).read_bytes() if self.cert else None,
            private_key=Path(self.key).read_bytes() if self.key else None,
        )

    def options(
        self, base: ClientOptions | None = None, *, api_token: bool = True, **fields: Any
    ) -> ClientOptions:
        """``base`` (default :class:`ClientOptions`) with ``fields`` replaced, TLS from these
        settings and, unless ``api_token`` is off (the gateway's own channels), the API token
        added to the metadata."""
        options = dataclasses.replace(base or ClientOptions(), **fields, tls=self.tls())
        token = self.api_token() if api_token else ""
        if token:
            options = dataclasses.replace(options, metadata=[*options.metadata, bearer_metadata(token)])
        return options

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ClientTLSSettings:
        """Load from the environment; ConfigError naming the variable when a file is unusable."""
        return load_settings(cls, environ)


def client_options_from_env(**fields: Any) -> ClientOptions:
    """:class:`ClientOptions` with ``fields``, TLS from ``HEVLAYER_CLIENT_TLS_*`` and the API token
    of ``HEVLAYER_TOKEN``/``HEVLAYER_TOKEN_FILE`` (ConfigError naming the variable when one is
    unusable)."""
    return ClientTLSSettings.from_env().options(**fields)
