"""Is a Triton server ready, and its models? Two calls of Triton's gRPC API over a plain channel.

``tritonclient.grpc`` would do the same, but it brings NumPy and its whole generated API into
the process; :class:`LocalTriton.wait_ready <hevlayer.triton.local.LocalTriton.wait_ready>`
runs in the ``hevlayer-triton-local`` launcher, which stays up beside the server for as long as
it runs, so its memory counts (``bench/memory.py``). The two messages are small enough to write
by hand: ``ServerReadyRequest`` is empty, ``ModelReadyRequest`` is ``name`` (field 1) and
``version`` (field 2, left empty: the server's choice), and both responses are ``bool ready = 1``
(``grpc_service.proto`` of Triton's ``common`` repository; ``tests/embedder`` checks the bytes
against tritonclient's generated classes).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from hevlayer.common.encoded import varint

SERVICE = "/inference.GRPCInferenceService/"


def model_ready_request(name: str) -> bytes:
    """``ModelReadyRequest(name=name)`` serialized."""
    encoded = name.encode("utf-8")
    return b"\x0a" + varint(len(encoded)) + encoded if encoded else b""


def ready_field(payload: bytes) -> bool:
    """``ready`` (field 1, a bool) of a ``ServerReadyResponse`` or ``ModelReadyResponse``.

    Fields this does not know are skipped by wire type; a truncated message is not ready.
    """
    ready = False
    position = 0
    try:
        while position < len(payload):
            key, position = _read_varint(payload, position)
            field, wire_type = key >> 3, key & 0x7
            if wire_type == 0:
                value, position = _read_varint(payload, position)
                if field == 1:
                    ready = value != 0
            elif wire_type == 2:
                length, position = _read_varint(payload, position)
                position += length
            elif wire_type == 1:
                position += 8
            elif wire_type == 5:
                position += 4
            else:
                return False
    except IndexError:
        return False
    return ready if position == len(payload) else False


def _read_varint(payload: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = payload[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _identity(payload: bytes) -> bytes:
    return payload


class ReadinessProbe:
    """``ServerReady`` and ``ModelReady`` of one server; any RPC error reads as not ready."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._server_ready = self._channel.unary_unary(
            SERVICE + "ServerReady", request_serializer=_identity, response_deserializer=_identity
        )
        self._model_ready = self._channel.unary_unary(
            SERVICE + "ModelReady", request_serializer=_identity, response_deserializer=_identity
        )

    def server_ready(self, timeout: float) -> bool:
        try:
            return ready_field(self._server_ready(b"", timeout=timeout))
        except grpc.RpcError:
            return False

    def model_ready(self, name: str, timeout: float) -> bool:
        try:
            return ready_field(self._model_ready(model_ready_request(name), timeout=timeout))
        except grpc.RpcError:
            return False

    def close(self) -> None:
        self._channel.close()


def tls_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca``, presenting ``cert``/``key`` when both are given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None and cert is not None else None,
        certificate_chain=cert.read_bytes() if key is not None and cert is not None else None,
    )
