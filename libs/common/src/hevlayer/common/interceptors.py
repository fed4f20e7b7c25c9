"""gRPC interceptors: server spans, access logs, metrics and error mapping
on the server; trace-context injection and client spans on the client.

Client streaming calls must be made with a request iterator (not
``call.write()``): interceptors wrap the call object, and ``write()`` is not
forwarded through an intercepted stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hevlayer.common import metrics
from hevlayer.common.errors import ServiceError
from hevlayer.common.telemetry import extract_context, inject_metadata

log = logging.getLogger("hevlayer.rpc")
_tracer = trace.get_tracer("hevlayer.grpc")


def _split_method(full: str) -> tuple[str, str]:
    _, _, rest = full.partition("/")
    service, _, method = rest.partition("/")
    return service, method


class _Observation:
    """Span, metrics and access log of one server-side RPC."""

    def __init__(self, full_method: str, rpc_type: str, metadata: Any) -> None:
        self.service, self.method = _split_method(full_method)
        self.full_method = full_method
        self.rpc_type = rpc_type
        self.parent = extract_context(metadata)
        self.start = time.perf_counter()
        self.span = _tracer.start_span(
            full_method.lstrip("/"),
            context=self.parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": self.service,
                "rpc.method": self.method,
            },
        )
        self.token = otel_context.attach(trace.set_span_in_context(self.span, self.parent))
        metrics.GRPC_STARTED.labels(self.service, self.method, rpc_type).inc()

    def finish(self, code: grpc.StatusCode, message: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        metrics.GRPC_HANDLED.labels(self.service, self.method, self.rpc_type, code.name).inc()
        metrics.GRPC_LATENCY.labels(self.service, self.method, self.rpc_type).observe(elapsed)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, message or code.name))
        level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
        log.log(
            level,
            "rpc %s %s",
            self.full_method,
            code.name,
            extra={
                "rpc_method": self.full_method,
                "grpc_code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                **({"error": message} if message else {}),
            },
        )
        otel_context.detach(self.token)
        self.span.end()


_SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


async def _fail(context: aio.ServicerContext, obs: _Observation, exc: BaseException) -> None:
    """Record ``exc`` and abort the RPC with the matching status."""
    if isinstance(exc, ServiceError):
        status = exc.to_grpc_status()
        obs.finish(exc.code, exc.message)
        await context.abort(status.code, status.details, status.trailing_metadata)
    obs.span.record_exception(exc)
    log.exception("unhandled error in %s", obs.full_method, exc_info=exc)
    obs.finish(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")


def _code_of(context: aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK


class ServerInterceptor(aio.ServerInterceptor):
    """Wraps every handler with a SERVER span (parented on the caller's trace
    context), Prometheus metrics, an access log line and the mapping of
    :class:`ServiceError` to a rich gRPC status (anything else is INTERNAL)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler

        def response_unary(inner: Any, rpc_type: str) -> Any:
            async def call(request: Any, context: aio.ServicerContext) -> Any:
                obs = _Observation(method, rpc_type, metadata)
                try:
                    response = await inner(request, context)
                except aio.AbortError:
                    obs.finish(_code_of(context), context.details() or "")
                    raise
                except BaseException as exc:
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    if isinstance(exc, asyncio.CancelledError):
                        obs.finish(grpc.StatusCode.CANCELLED)
                        raise
                    await _fail(context, obs, exc)
                    raise
                obs.finish(_code_of(context))
                return response

            return call

        def response_stream(inner: Any, rpc_type: str) -> Any:
            async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                obs = _Observation(method, rpc_type, metadata)
                try:
                    result = inner(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                except aio.AbortError:
                    obs.finish(_code_of(context), context.details() or "")
                    raise
                except BaseException as exc:
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    if isinstance(exc, asyncio.CancelledError):
                        obs.finish(grpc.StatusCode.CANCELLED)
                        raise
                    await _fail(context, obs, exc)
                    raise
                obs.finish(_code_of(context))

            return call

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(response_unary(handler.unary_unary, "unary"), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                response_unary(handler.stream_unary, "client_stream"), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                response_stream(handler.unary_stream, "server_stream"), **kwargs
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                response_stream(handler.stream_stream, "bidi_stream"), **kwargs
            )
        return handler


def _with_trace_metadata(details: aio.ClientCallDetails) -> aio.ClientCallDetails:
    existing = [(k, v) for k, v in (details.metadata or ()) if k not in ("traceparent", "tracestate")]
    merged = aio.Metadata(*existing, *inject_metadata())
    return aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=merged,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def _client_span(details: aio.ClientCallDetails) -> trace.Span:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    service, name = _split_method(method)
    return _tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


_pending_spans: set[asyncio.Task[None]] = set()


def _end_span_when_done(span: trace.Span, call: Any) -> None:
    """End ``span`` with the call's status once the call finishes."""

    async def finish() -> None:
        try:
            code = await call.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        if isinstance(code, grpc.StatusCode):
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()

    task = asyncio.get_running_loop().create_task(finish())
    _pending_spans.add(task)
    task.add_done_callback(_pending_spans.discard)


class _ClientTracing:
    def _start(self, details: aio.ClientCallDetails) -> tuple[trace.Span, aio.ClientCallDetails]:
        span = _client_span(details)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return span, _with_trace_metadata(details)
        finally:
            otel_context.detach(token)

    async def _traced(self, continuation: Any, details: Any, request: Any) -> Any:
        """Start the call under a CLIENT span that ends with the call's status.

        grpc.aio files each interceptor under one call kind only, hence one
        class per kind below, all sharing this body."""
        span, details = self._start(details)
        call = await continuation(details, request)
        _end_span_when_done(span, call)
        return call


class UnaryUnaryTracing(_ClientTracing, aio.UnaryUnaryClientInterceptor):
    """CLIENT span + trace context for unary calls."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._traced(continuation, details, request)


class UnaryStreamTracing(_ClientTracing, aio.UnaryStreamClientInterceptor):
    """CLIENT span + trace context for server-streaming calls."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._traced(continuation, details, request)


class StreamUnaryTracing(_ClientTracing, aio.StreamUnaryClientInterceptor):
    """CLIENT span + trace context for client-streaming calls."""

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await self._traced(continuation, details, request_iterator)


class StreamStreamTracing(_ClientTracing, aio.StreamStreamClientInterceptor):
    """CLIENT span + trace context for bidirectional calls."""

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await self._traced(continuation, details, request_iterator)


def client_interceptors() -> list[aio.ClientInterceptor]:
    """The interceptors every hevlayer client channel uses."""
    return [UnaryUnaryTracing(), UnaryStreamTracing(), StreamUnaryTracing(), StreamStreamTracing()]
