"""One server interceptor that admits or refuses calls: the gateway's token check, the
claimer's check that its caller is the gateway.

A :class:`Guard` decides in three steps: :meth:`Guard.admit` from the method and the
call's metadata (before any request is read), :meth:`Guard.admit_request` for every
request message (a stream is refused at the first message it may not send; the
servicer never sees that message), :meth:`Guard.filter_response` on a unary answer.
Each step refuses by raising a :class:`~hevlayer.common.errors.ServiceError`, which
ends the call with that status (details included). Handlers are wrapped once per
method; health and reflection are never guarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from grpc import aio

from hevlayer.common.auth import same_secret
from hevlayer.common.errors import ServiceError, Unauthenticated
from hevlayer.common.wrapping import WrapOnceInterceptor


class Guard(Protocol):
    """What :class:`GuardInterceptor` asks about each call."""

    async def admit(self, method: str, context: aio.ServicerContext) -> Any:
        """Admit a call of ``method`` (``/pkg.Service/Method``) or raise; the value
        returned is handed to the other two steps."""

    async def admit_request(self, admitted: Any, method: str, request: Any, index: int) -> None:
        """Admit the ``index``-th request message (a message, or its wire bytes) or raise."""

    def filter_response(self, admitted: Any, method: str, response: Any) -> Any:
        """The unary response as the caller may see it (a message, or wire bytes)."""


async def _refuse(context: aio.ServicerContext, error: ServiceError) -> None:
    status = error.to_grpc_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class _Checked:
    """A request stream whose messages are admitted one by one."""

    def __init__(
        self, guard: Guard, admitted: Any, method: str, requests: Any, context: aio.ServicerContext
    ) -> None:
        self._guard, self._admitted, self._method = guard, admitted, method
        self._requests, self._context = requests, context

    async def __aiter__(self) -> AsyncIterator[Any]:
        index = 0
        async for request in self._requests:
            try:
                await self._guard.admit_request(self._admitted, self._method, request, index)
            except ServiceError as error:
                # Abort sends the status now: even a servicer that swallows the
                # exception cannot answer for the refused message.
                await _refuse(self._context, error)
            index += 1
            yield request


_KINDS: tuple[tuple[str, Callable[..., grpc.RpcMethodHandler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _guarded(guard: Guard, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    found = next(((a, b) for a, b in _KINDS if getattr(handler, a)), None)
    if found is None:
        return handler
    attribute, build = found
    inner = getattr(handler, attribute)
    streaming_request = attribute.startswith("stream_")

    async def admitted(request: Any, context: aio.ServicerContext) -> tuple[Any, Any]:
        try:
            verdict = await guard.admit(method, context)
            if not streaming_request:
                await guard.admit_request(verdict, method, request, 0)
        except ServiceError as error:
            await _refuse(context, error)
        if streaming_request:
            request = _Checked(guard, verdict, method, request, context).__aiter__()
        return verdict, request

    async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        _, request = await admitted(request, context)
        async for response in inner(request, context):
            yield response

    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        verdict, request = await admitted(request, context)
        response = await inner(request, context)
        return guard.filter_response(verdict, method, response)

    return build(
        stream if attribute.endswith("_stream") else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class GuardInterceptor(WrapOnceInterceptor):
    """Runs every call (but health and reflection) past ``guard``."""

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self._guard = guard

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return _guarded(self._guard, method, handler)


def metadata_value(context: aio.ServicerContext, key: str) -> str | None:
    """The first value of ``key`` in the call's metadata (str; None if absent)."""
    for entry_key, value in context.invocation_metadata() or ():
        if entry_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class SharedSecretGuard:
    """Admits only calls carrying ``secret`` under ``key`` (the claimer's check that its
    caller is the gateway: CLAIMER_INTERNAL_TOKEN). The secret is compared in constant
    time and never named in an answer."""

    def __init__(self, key: str, secret: str, who: str) -> None:
        if not secret:
            raise ValueError("SharedSecretGuard: the secret must not be empty")
        self._key, self._secret, self._who = key, secret, who

    async def admit(self, method: str, context: aio.ServicerContext) -> None:
        given = metadata_value(context, self._key)
        if given is None or not same_secret(given, self._secret):
            raise Unauthenticated(
                f"{method} answers only {self._who}: the call lacks the right {self._key} metadata",
                reason="INTERNAL_TOKEN_REQUIRED",
            )

    async def admit_request(self, admitted: Any, method: str, request: Any, index: int) -> None:
        return None

    def filter_response(self, admitted: Any, method: str, response: Any) -> Any:
        return response
