"""Byte-level forwarding of whole gRPC services to a backend.

The gateway is the one public address, but pipeline and lease state belong
to the claimer. Forwarded calls are relayed as serialized bytes (no decode,
no re-encode), with the caller's deadline, the trace context (through the
channel's interceptors) and, on failure, the backend's exact status: code,
message and ``grpc-status-details-bin`` rich details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

_FORWARDED_TRAILERS = ("grpc-status-details-bin",)


def _trailers(error: aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (error.trailing_metadata() or ()) if k in _FORWARDED_TRAILERS)


class Forwarder:
    """Builds generic handlers relaying every method of a service over ``channel``."""

    def __init__(self, channel: aio.Channel, default_timeout: float) -> None:
        self._channel = channel
        self._default_timeout = default_timeout

    def _timeout(self, context: aio.ServicerContext, streaming: bool) -> float | None:
        remaining: float | None = context.time_remaining()
        if remaining is not None and remaining < 1e9:
            return max(remaining, 0.001)
        return None if streaming else self._default_timeout

    async def _abort(self, context: aio.ServicerContext, error: aio.AioRpcError) -> None:
        await context.abort(error.code(), error.details() or "", _trailers(error))

    def handler(self, path: str, client_streaming: bool, server_streaming: bool) -> grpc.RpcMethodHandler:
        """A method handler forwarding ``path`` (``/pkg.Service/Method``)."""
        channel = self._channel

        if not client_streaming and not server_streaming:
            method_uu = channel.unary_unary(path)

            async def unary_unary(request: bytes, context: aio.ServicerContext) -> Any:
                try:
                    return await method_uu(request, timeout=self._timeout(context, False))
                except aio.AioRpcError as error:
                    await self._abort(context, error)

            return grpc.unary_unary_rpc_method_handler(unary_unary)

        if not client_streaming:
            method_us = channel.unary_stream(path)

            async def unary_stream(request: bytes, context: aio.ServicerContext) -> AsyncIterator[Any]:
                call = method_us(request, timeout=self._timeout(context, True))
                try:
                    async for response in call:
                        yield response
                except aio.AioRpcError as error:
                    await self._abort(context, error)
                finally:
                    call.cancel()

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        if not server_streaming:
            method_su = channel.stream_unary(path)

            async def stream_unary(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> Any:
                try:
                    return await method_su(requests, timeout=self._timeout(context, True))
                except aio.AioRpcError as error:
                    await self._abort(context, error)

            return grpc.stream_unary_rpc_method_handler(stream_unary)

        method_ss = channel.stream_stream(path)

        async def stream_stream(
            requests: AsyncIterator[bytes], context: aio.ServicerContext
        ) -> AsyncIterator[Any]:
            call = method_ss(requests, timeout=self._timeout(context, True))
            try:
                async for response in call:
                    yield response
            except aio.AioRpcError as error:
                await self._abort(context, error)
            finally:
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(stream_stream)

    def service_handler(self, service: ServiceDescriptor) -> grpc.GenericRpcHandler:
        """A generic handler forwarding every method of ``service``."""
        handlers = {
            method.name: self.handler(
                f"/{service.full_name}/{method.name}",
                method.client_streaming,
                method.server_streaming,
            )
            for method in service.methods
        }
        return grpc.method_handlers_generic_handler(service.full_name, handlers)
