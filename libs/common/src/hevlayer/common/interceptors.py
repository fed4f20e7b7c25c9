"""gRPC interceptors: server spans, access logs, metrics and error mapping
on the server; trace-context injection and client spans on the client.

Client streaming calls must be made with a request iterator (not
``call.write()``): interceptors wrap the call object, and ``write()`` is not
forwarded through an intercepted stream.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hevlayer.common import metrics
from hevlayer.common.errors import ResourceExhausted, ServiceError
from hevlayer.common.telemetry import extract_context
from hevlayer.common.wrapping import WrapOnceInterceptor

log = logging.getLogger("hevlayer.rpc")
_tracer = trace.get_tracer("hevlayer.grpc")


def _split_method(full: str) -> tuple[str, str]:
    _, _, rest = full.partition("/")
    service, _, method = rest.partition("/")
    return service, method


@functools.lru_cache(maxsize=1024)
def _span_shape(full_method: str) -> tuple[str, dict[str, str]]:
    """Span name and attributes of a call of ``full_method`` (``/pkg.Service/Method``)."""
    service, method = _split_method(full_method)
    return full_method.lstrip("/"), {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


class _Method:
    """What every call of one method shares: its names, span attributes and metric series."""

    def __init__(self, full_method: str, rpc_type: str) -> None:
        self.full_method = full_method
        self.span_name, self.attributes = _span_shape(full_method)
        self.service, self.method = self.attributes["rpc.service"], self.attributes["rpc.method"]
        self.rpc_type = rpc_type
        self.started = metrics.GRPC_STARTED.labels(self.service, self.method, rpc_type)
        self.latency = metrics.GRPC_LATENCY.labels(self.service, self.method, rpc_type)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        """The ``grpc_server_handled_total`` series of ``code``."""
        series = self._handled.get(code)
        if series is None:
            series = self._handled[code] = metrics.GRPC_HANDLED.labels(
                self.service, self.method, self.rpc_type, code.name
            )
        return series


class _Observation:
    """Span, metrics and access log of one server-side RPC."""

    def __init__(self, method: _Method, metadata: Any) -> None:
        self.rpc = method
        self.full_method = method.full_method
        self.parent = extract_context(metadata)
        self.start = time.perf_counter()
        self.span = _tracer.start_span(
            method.span_name, context=self.parent, kind=SpanKind.SERVER, attributes=method.attributes
        )
        self.token = otel_context.attach(trace.set_span_in_context(self.span, self.parent))
        method.started.inc()

    def finish(self, code: grpc.StatusCode, message: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        self.rpc.handled(code).inc()
        self.rpc.latency.observe(elapsed)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, message or code.name))
        level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
        if log.isEnabledFor(level):
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


class Admission(Protocol):
    """A check every observed call passes before its handler runs (health and reflection
    are never checked). A refusal is recorded like any error (span, metrics, access log).
    The concurrency limit is one (:class:`CallLimiter`); per-token rate limits plug in the
    same way, with :meth:`hevlayer.common.server.ServiceApp.add_admission`, answering
    :class:`~hevlayer.common.errors.ResourceExhausted` with ``retry_after`` (RetryInfo)."""

    def admit(self, method: str, metadata: Any) -> ServiceError | None:
        """None to let the call of ``method`` (``/pkg.Service/Method``, with its invocation
        metadata) in, then :meth:`release` follows when it ends; else the error to refuse
        it with."""
        ...

    def release(self, method: str) -> None:
        """An admitted call has ended."""
        ...


class CallLimiter:
    """At most ``limit`` calls inside their handlers at once (0: no limit).

    A call beyond it is answered RESOURCE_EXHAUSTED (reason TOO_MANY_CALLS) with a
    ``RetryInfo`` of ``retry_after`` seconds before its handler runs. Streams count
    for as long as they are open; health and reflection are never limited.
    (gRPC's own ``maximum_concurrent_rpcs`` answers RESOURCE_EXHAUSTED without
    details, so a client could not tell when to retry.)"""

    def __init__(self, limit: int, retry_after: float = 1.0) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = 0

    def admit(self, method: str, metadata: Any) -> ServiceError | None:
        """Count one more call in; the refusal (nothing counted) when at the limit."""
        if self.limit and self.in_flight >= self.limit:
            return self.refusal()
        self.in_flight += 1
        return None

    def release(self, method: str) -> None:
        """Count an admitted call out."""
        self.in_flight -= 1

    def refusal(self) -> ResourceExhausted:
        """The error of a call over the limit."""
        return ResourceExhausted(
            f"the server is handling its limit of {self.limit} concurrent calls "
            "(HEVLAYER_GRPC_MAX_CONCURRENT_RPCS); retry after the RetryInfo delay",
            reason="TOO_MANY_CALLS",
            retry_after=self.retry_after,
            metadata={"limit": str(self.limit)},
        )


class ServerInterceptor(WrapOnceInterceptor):
    """Wraps every handler with a SERVER span (parented on the caller's trace
    context), Prometheus metrics, an access log line, the mapping of
    :class:`ServiceError` to a rich gRPC status (anything else is INTERNAL) and the
    :attr:`admissions` every call passes first: a :class:`CallLimiter` of
    ``max_concurrent_rpcs``, then any added later (:class:`Admission`)."""

    def __init__(self, max_concurrent_rpcs: int = 0) -> None:
        super().__init__()
        self.limiter = CallLimiter(max_concurrent_rpcs)
        self.admissions: list[Admission] = [self.limiter]

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return _observed(method, handler, self.admissions)


class _Observed:
    """``async with`` around one call's work: finishes its observation with the outcome
    (OK, the code it aborted with, CANCELLED) and maps any other exception to a status."""

    def __init__(self, rpc: _Method, context: aio.ServicerContext, admissions: list[Admission]) -> None:
        self.context = context
        self.admissions = admissions
        self.admitted = 0
        self.metadata = context.invocation_metadata()
        self.obs = _Observation(rpc, self.metadata)

    async def __aenter__(self) -> _Observed:
        method = self.obs.full_method
        for admission in self.admissions:
            refusal = admission.admit(method, self.metadata)
            if refusal is not None:
                self._release()
                await _fail(self.context, self.obs, refusal)  # aborts
            self.admitted += 1
        return self

    def _release(self) -> None:
        method = self.obs.full_method
        for admission in reversed(self.admissions[: self.admitted]):
            admission.release(method)
        self.admitted = 0

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._release()
        context, obs = self.context, self.obs
        if exc is None:
            obs.finish(_code_of(context))
        elif isinstance(exc, aio.AbortError):
            obs.finish(_code_of(context), context.details() or "")
        elif isinstance(exc, asyncio.CancelledError):
            obs.finish(grpc.StatusCode.CANCELLED)
        elif not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            await _fail(context, obs, exc)  # aborts: raises AbortError in place of exc


def _response_unary(rpc: _Method, inner: Any, admissions: list[Admission]) -> Any:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        async with _Observed(rpc, context, admissions):
            return await inner(request, context)

    return call


def _response_stream(rpc: _Method, inner: Any, admissions: list[Admission]) -> Any:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Observed(rpc, context, admissions):
            result = inner(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result

    return call


# (handler attribute, rpc type label, wrapper, handler factory) per call kind
_CallKind = tuple[
    str, str, Callable[[_Method, Any, list[Admission]], Any], Callable[..., grpc.RpcMethodHandler]
]
_CALL_KINDS: tuple[_CallKind, ...] = (
    ("unary_unary", "unary", _response_unary, grpc.unary_unary_rpc_method_handler),
    ("stream_unary", "client_stream", _response_unary, grpc.stream_unary_rpc_method_handler),
    ("unary_stream", "server_stream", _response_stream, grpc.unary_stream_rpc_method_handler),
    ("stream_stream", "bidi_stream", _response_stream, grpc.stream_stream_rpc_method_handler),
)


def _observed(
    method: str, handler: grpc.RpcMethodHandler, admissions: list[Admission]
) -> grpc.RpcMethodHandler:
    """``handler`` with every call observed (span, metrics, access log, error mapping)
    and admitted by ``admissions`` (the interceptor's list: one added later applies too)."""
    for attribute, rpc_type, wrap, build in _CALL_KINDS:
        inner = getattr(handler, attribute)
        if inner:
            return build(
                wrap(_Method(method, rpc_type), inner, admissions),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def start_client_span(method: str | bytes) -> tuple[trace.Span, list[tuple[str, str]]]:
    """A CLIENT span for a call of ``method`` (``/pkg.Service/Method``), child of the
    current span, and the metadata entries that carry it to the server. For calls
    made without the channel interceptors (the gateway's byte-level forwarding);
    end it with :func:`end_client_span`."""
    name, attributes = _span_shape(method.decode() if isinstance(method, bytes) else method)
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, list(carrier.items())


def end_client_span(span: trace.Span, code: grpc.StatusCode | None) -> None:
    """End a CLIENT span with the call's status code."""
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


_pending_spans: set[asyncio.Task[None]] = set()


def _end_span_when_done(span: trace.Span, call: Any) -> None:
    """End ``span`` with the call's status once the call finishes."""

    async def finish() -> None:
        try:
            code = await call.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        end_client_span(span, code)

    task = asyncio.get_running_loop().create_task(finish())
    _pending_spans.add(task)
    task.add_done_callback(_pending_spans.discard)


class _ClientTracing:
    def __init__(self, metadata: Sequence[tuple[str, str]] = (), traced: bool = True) -> None:
        self._extra = tuple(metadata)
        self._traced_calls = traced

    async def _traced(self, continuation: Any, details: Any, request: Any) -> Any:
        """Start the call under a CLIENT span that ends with the call's status (when
        traced), with the channel's own metadata added.

        grpc.aio files each interceptor under one call kind only, hence one
        class per kind below, all sharing this body."""
        span, carrier = start_client_span(details.method) if self._traced_calls else (None, [])
        existing = [(k, v) for k, v in (details.metadata or ()) if k not in ("traceparent", "tracestate")]
        details = aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=aio.Metadata(*existing, *self._extra, *carrier),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )
        call = await continuation(details, request)
        if span is not None:
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


def client_interceptors(
    metadata: Sequence[tuple[str, str]] = (), *, traced: bool = True
) -> list[aio.ClientInterceptor]:
    """The interceptors every hevlayer client channel uses: CLIENT spans (unless ``traced``
    is off) and ``metadata`` added to every call (the gateway's internal token to the
    claimer, sent even by raw stubs)."""
    kinds = (UnaryUnaryTracing, UnaryStreamTracing, StreamUnaryTracing, StreamStreamTracing)
    return [kind(metadata, traced) for kind in kinds]
