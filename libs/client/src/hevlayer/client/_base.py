"""What every service client shares: deadlines, metadata and error conversion per call."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from grpc import aio

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
        try:
            return await stub(request, **self._call_kwargs(method, timeout))
        except aio.AioRpcError as error:
            raise error_from_rpc(error) from None

    async def _stream(
        self, method: Method, stub: Any, request: Any, timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        """Responses of a server- or bidi-streaming call; the call is cancelled when the caller stops."""
        call = stub(request, **self._call_kwargs(method, timeout))
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()
