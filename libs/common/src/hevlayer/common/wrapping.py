"""The part every hevlayer server interceptor shares: wrap each method's handler once
and hand the wrapped one out again, leaving some methods (health, reflection) alone.

A subclass says how to wrap a handler (:meth:`WrapOnceInterceptor.wrap`) and which
method prefixes stay unwrapped (:attr:`WrapOnceInterceptor.open_prefixes`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
"""Methods every caller may call: health checks and reflection."""


class WrapOnceInterceptor(aio.ServerInterceptor):
    """Hands out ``wrap(method, handler)`` for every method but those starting with one of
    :attr:`open_prefixes`, wrapping each handler once: generic handlers hand out the same
    handler object per method, so the wrapped one is kept while that object stays."""

    open_prefixes: tuple[str, ...] = OPEN_PREFIXES

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @abstractmethod
    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler that serves ``method`` in place of ``handler``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self.open_prefixes):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
