"""Responses a service encodes itself and hands to gRPC as wire bytes.

A servicer registered with :func:`add_servicer` may return (or yield)
:class:`Encoded` bytes instead of a response message: they go to the wire as
they are. A hand-written encoder of a large repeated answer (the claimer's
leases) then saves parsing its own output into a message only for gRPC to
serialize that message again. Ordinary messages are serialized as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class Encoded:
    """The serialized form of a response message (what the client will parse)."""

    data: bytes


def varint(value: int) -> bytes:
    """The protobuf varint encoding of a non-negative ``value`` (a length, a tag, a bool)."""
    if value < 0:
        raise ValueError(f"varint: {value} is negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def serialize(response: Message | Encoded) -> bytes:
    """Wire bytes of a response: an :class:`Encoded` as it is, a message serialized."""
    if type(response) is Encoded:
        return response.data
    return response.SerializeToString()  # type: ignore[union-attr]


_HANDLER_KINDS: dict[tuple[bool, bool], Any] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_handlers(service: ServiceDescriptor, servicer: object) -> dict[str, grpc.RpcMethodHandler]:
    """A handler per method of ``service``, calling the servicer's method of the same name;
    requests are parsed into their generated message class, responses go through
    :func:`serialize`. Raises TypeError if the servicer lacks a method."""
    missing = [m.name for m in service.methods if not callable(getattr(servicer, m.name, None))]
    if missing:
        raise TypeError(f"{type(servicer).__name__} does not implement {service.full_name}: {missing}")
    return {
        method.name: _HANDLER_KINDS[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=serialize,
        )
        for method in service.methods
    }


def add_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer`` for every method of ``service`` (as the generated
    ``add_XServicer_to_server`` does), letting it answer with :class:`Encoded` bytes."""
    handlers = method_handlers(service, servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
