"""What every service client shares: deadlines, metadata and error conversion per call."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from google.protobuf.message import Message
from grpc import aio

from hevlayer.client._requests import finish_writer, start_writer
from hevlayer.client.errors import error_from_rpc
from hevlayer.client.methods import Method
from hevlayer.client.options import ClientOptions


class ServiceClient:
    """Base of the per-service clients: one channel, one set of options."""

    def __init__(self, channel: aio.Channel, options: ClientOptions | None = None) -> None:
        self.channel = channel
        self.options = options or ClientOptions()
        self._metadata = tuple(self.options.metadata) or None

    def _call_kwargs(self, method: Method, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": timeout if timeout is not None else self.options.timeout(method),
            "metadata": self._metadata,
        }

    async def _unary(self, method: Method, stub: Any, request: Any, timeout: float | None = None) -> Any:
        """Make a unary (or client-streaming, with an iterator ``request``) call."""
        if isinstance(request, Message):
            try:
                return await stub(request, **self._call_kwargs(method, timeout))
            except aio.AioRpcError as error:
                raise error_from_rpc(error) from None
        call = stub(**self._call_kwargs(method, timeout))
        writer = start_writer(call, request)
        try:
            return await call
        except aio.AioRpcError as error:
            await finish_writer(writer)
            raise error_from_rpc(error) from None
        finally:
            await finish_writer(writer)

    async def _stream(
        self, method: Method, stub: Any, request: Any, timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        """Responses of a server- or bidi-streaming call; the call is cancelled when the caller stops.

        A bidi call's requests (an iterator ``request``) are sent by
        :func:`hevlayer.client._requests.start_writer`, which keeps the server's
        status when the server ends the call before reading them all."""
        if isinstance(request, Message):
            call = stub(request, **self._call_kwargs(method, timeout))
            writer = None
        else:
            call = stub(**self._call_kwargs(method, timeout))
            writer = start_writer(call, request)
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as error:
            if writer is not None:
                await finish_writer(writer)
            raise error_from_rpc(error) from None
        finally:
            call.cancel()
            if writer is not None:
                await finish_writer(writer)
