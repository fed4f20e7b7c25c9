"""Byte-level forwarding of whole gRPC services to a backend.

The gateway is the one public address, but pipeline and lease state belong
to the claimer. Forwarded calls are relayed as serialized bytes (no decode,
no re-encode), with the caller's deadline, the trace context and, on failure,
the backend's exact status: code, message and ``grpc-status-details-bin``
rich details.

The forwarding channel has no client interceptors (grpc.aio runs every
intercepted call through extra tasks, which cost more than the relay itself):
each handler starts its CLIENT span and puts the trace context into the
call's metadata itself.

A client-streaming call's messages are sent by :func:`hevlayer.client._requests.start_writer`:
with grpcio's own request consumer, a backend that refuses the stream before reading it all
(INVALID_ARGUMENT on a bad first message) reached the caller as INTERNAL about half the time
(grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from hevlayer.client._requests import finish_writer, start_writer
from hevlayer.common.interceptors import end_client_span, start_client_span

_FORWARDED_TRAILERS = ("grpc-status-details-bin",)


def _trailers(error: aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (error.trailing_metadata() or ()) if k in _FORWARDED_TRAILERS)


async def _final_code(call: Any) -> grpc.StatusCode:
    """The status a finished (or cancelled) streaming call ended with."""
    try:
        code: grpc.StatusCode = await call.code()
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED
    return code


class Forwarder:
    """Builds generic handlers relaying every method of a service over ``channel``."""

    def __init__(
        self, channel: aio.Channel, default_timeout: float, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._channel = channel
        self._default_timeout = default_timeout
        self._metadata = tuple(metadata)
        """Sent with every forwarded call (the internal token); the caller's own metadata never is."""

    def _timeout(self, context: aio.ServicerContext, streaming: bool) -> float | None:
        remaining: float | None = context.time_remaining()
        if remaining is not None and remaining < 1e9:
            return max(remaining, 0.001)
        return None if streaming else self._default_timeout

    async def _abort(self, context: aio.ServicerContext, error: aio.AioRpcError) -> None:
        await context.abort(error.code(), error.details() or "", _trailers(error))

    async def _relay_unary(
        self, path: str, method: Any, request: Any, context: aio.ServicerContext, streaming: bool
    ) -> Any:
        """One call with a single response (``request``: bytes, or an iterator of them)."""
        span, metadata = start_client_span(path)
        metadata.extend(self._metadata)
        code = grpc.StatusCode.OK
        timeout = self._timeout(context, streaming)
        writer = None
        try:
            if not streaming:
                return await method(request, timeout=timeout, metadata=metadata)
            call = method(timeout=timeout, metadata=metadata)
            writer = start_writer(call, request)
            return await call
        except aio.AioRpcError as error:
            code = error.code()
            await self._abort(context, error)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if writer is not None:
                await finish_writer(writer)
            end_client_span(span, code)

    async def _relay_stream(
        self, path: str, method: Any, request: Any, context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """One call with a stream of responses (``request``: bytes, or an iterator of them)."""
        span, metadata = start_client_span(path)
        metadata.extend(self._metadata)
        if isinstance(request, bytes):
            call = method(request, timeout=self._timeout(context, True), metadata=metadata)
            writer = None
        else:
            call = method(timeout=self._timeout(context, True), metadata=metadata)
            writer = start_writer(call, request)
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as error:
            await self._abort(context, error)
        finally:
            call.cancel()
            if writer is not None:
                await finish_writer(writer)
            end_client_span(span, await _final_code(call))

    def handler(self, path: str, client_streaming: bool, server_streaming: bool) -> grpc.RpcMethodHandler:
        """A method handler forwarding ``path`` (``/pkg.Service/Method``)."""
        channel = self._channel

        if not server_streaming:
            method = channel.stream_unary(path) if client_streaming else channel.unary_unary(path)

            async def unary(request: Any, context: aio.ServicerContext) -> Any:
                return await self._relay_unary(path, method, request, context, client_streaming)

            if client_streaming:
                return grpc.stream_unary_rpc_method_handler(unary)
            return grpc.unary_unary_rpc_method_handler(unary)

        streamed = channel.stream_stream(path) if client_streaming else channel.unary_stream(path)

        async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in self._relay_stream(path, streamed, request, context):
                yield response

        if client_streaming:
            return grpc.stream_stream_rpc_method_handler(stream)
        return grpc.unary_stream_rpc_method_handler(stream)

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
