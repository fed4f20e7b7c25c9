"""TLS on the server side: certificate checks at start, credentials, and the check of
the client's certificate identity (:class:`PeerIdentityInterceptor`).

With ``HEVLAYER_TLS_CERT`` and ``HEVLAYER_TLS_KEY`` a server speaks TLS only; with
``HEVLAYER_TLS_CLIENT_CA`` too, every client must present a certificate that CA
issued (mutual TLS, refused in the handshake otherwise); with
``HEVLAYER_TLS_ALLOWED_CLIENTS`` as well, only certificates whose subject common
name or a subject alternative name is in that list may call (the others get
PERMISSION_DENIED). Health checks stay open to any client that passed the
handshake, so that probes need no identity of their own.
"""

from __future__ import annotations

import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from hevlayer.common.config import ConfigError
from hevlayer.common.wrapping import WrapOnceInterceptor

log = logging.getLogger("hevlayer.tls")

_IDENTITY_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")


def _readable(path: str, variable: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{variable}: {path!r} is not a PEM file")
    return data


def check_ca_file(path: str, variable: str) -> None:
    """ConfigError naming ``variable`` unless ``path`` holds PEM CA certificates."""
    _readable(path, variable)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{variable}: {path!r} holds no usable certificate ({exc})") from None


def check_key_pair(cert: str, key: str, cert_variable: str, key_variable: str) -> None:
    """ConfigError naming the variable at fault unless ``cert`` and ``key`` are PEM files
    that go together (``key`` is the private key of the first certificate of ``cert``)."""
    _readable(cert, cert_variable)
    key_data = _readable(key, key_variable)
    if b"PRIVATE KEY-----" not in key_data:
        raise ConfigError(f"{key_variable}: {key!r} holds no PEM private key")
    if b"ENCRYPTED PRIVATE KEY" in key_data or b"Proc-Type: 4,ENCRYPTED" in key_data:
        raise ConfigError(f"{key_variable}: {key!r} is encrypted; give an unencrypted key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:
        text = str(exc).lower()
        if "mismatch" in text:
            raise ConfigError(f"{key_variable}: {key!r} is not the private key of {cert_variable}") from None
        if "pem" in text and "key" in text:
            raise ConfigError(f"{key_variable}: {key!r} holds no usable private key ({exc})") from None
        raise ConfigError(f"{cert_variable}: {cert!r} holds no usable certificate ({exc})") from None


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS server credentials from PEM files; with ``client_ca``, client certificates from
    that CA are required (mutual TLS)."""
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(client_ca).read_bytes() if client_ca else None,
        require_client_auth=bool(client_ca),
    )


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> set[str]:
    """The names a verified client certificate carries: its subject common name and its
    subject alternative names (as gRPC's auth context reports them)."""
    names: set[str] = set()
    for prop in _IDENTITY_PROPERTIES:
        for value in auth_context.get(prop, ()):
            names.add(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
    return names


class PeerIdentityInterceptor(WrapOnceInterceptor):
    """Refuses, with PERMISSION_DENIED, every call whose client certificate names none of
    ``allowed`` (subject CN or SAN); health checks excepted. Only meaningful with mutual
    TLS, where the certificate has been verified against the client CA."""

    open_prefixes = ("/grpc.health.v1.Health/",)

    def __init__(self, allowed: Sequence[str], service: str) -> None:
        super().__init__()
        self.allowed = frozenset(allowed)
        self.service = service

    def permits(self, context: aio.ServicerContext) -> bool:
        """Whether the caller's verified certificate names an allowed client."""
        return not self.allowed.isdisjoint(peer_identities(context.auth_context()))

    async def _check(self, context: aio.ServicerContext) -> None:
        if self.permits(context):
            return
        log.warning(
            "refused a client whose certificate names no allowed client", extra={"peer": context.peer()}
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the {self.service} accepts calls only from the clients named by HEVLAYER_TLS_ALLOWED_CLIENTS; "
            "this client's certificate names none of them",
        )

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        check = self._check

        def unary_response(inner: Any) -> Any:
            async def call(request: Any, context: aio.ServicerContext) -> Any:
                await check(context)
                return await inner(request, context)

            return call

        def stream_response(inner: Any) -> Any:
            async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                result = inner(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result

            return call

        kinds: tuple[tuple[str, Callable[[Any], Any], Callable[..., grpc.RpcMethodHandler]], ...] = (
            ("unary_unary", unary_response, grpc.unary_unary_rpc_method_handler),
            ("stream_unary", unary_response, grpc.stream_unary_rpc_method_handler),
            ("unary_stream", stream_response, grpc.unary_stream_rpc_method_handler),
            ("stream_stream", stream_response, grpc.stream_stream_rpc_method_handler),
        )
        for attribute, wrap, build in kinds:
            inner = getattr(handler, attribute)
            if inner:
                return build(
                    wrap(inner),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
