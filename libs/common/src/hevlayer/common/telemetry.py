"""OpenTelemetry tracing: provider setup, exporters, and W3C trace context
carried in gRPC metadata (``traceparent``/``tracestate``) or, for the trace of
one document's journey, stored with the document (:func:`traceparent`,
:func:`context_of`; see docs/operations.md, "The trace of a document")."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Metadata = Sequence[tuple[str, str | bytes]]


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line.

    Meant for local runs and tests: every process of a stack can share one
    file. Each export is one ``write(2)`` of whole lines on a descriptor
    opened with ``O_APPEND``, so the kernel places every write at the end of
    the file as one piece and lines of different processes never interleave
    (``tests/observability/test_span_file.py`` checks it).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "kind": span.kind.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_span_id": format(parent.span_id, "016x") if parent else None,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": dict(span.attributes or {}),
                        "links": [
                            {
                                "trace_id": format(link.context.trace_id, "032x"),
                                "span_id": format(link.context.span_id, "016x"),
                            }
                            for link in span.links
                        ],
                    },
                    default=str,
                )
            )
        if lines:
            data = ("\n".join(lines) + "\n").encode()
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                view = memoryview(data)
                while view:  # a regular file takes the whole write; loop for safety
                    view = view[os.write(self._fd, view) :]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def configure_tracing(service: str, exporter: str) -> TracerProvider:
    """Install a tracer provider for ``service``.

    ``exporter``: ``none`` (spans are created, context still propagates),
    ``console``, ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-grpc``;
    honours the standard ``OTEL_EXPORTER_OTLP_*`` variables) or
    ``file:PATH`` (JSON lines).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(exporter[5:])))
    elif exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter != "none":
        raise ValueError(f"HEVLAYER_TRACES_EXPORTER: unknown exporter {exporter!r}")
    trace.set_tracer_provider(provider)
    return provider


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The trace context carried by incoming gRPC metadata."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            carrier[key.lower()] = value
    return propagate.extract(carrier)


# The spans of one document's journey, one trace from staging to indexed
# (docs/operations.md, "The trace of a document"). The staging span is the
# gateway's StageDocuments (or REST) server span; the claimer stores its
# trace context with the document and leases hand it to workers.
DOCUMENT_PROCESS_SPAN = "document.process"
"""Embedder: the document's time in the worker, lease to finish (child of the staging span)."""
DOCUMENT_CLAIM_SPAN = "document.claim"
"""Embedder: the document's lease, as the worker received it from a claim."""
DOCUMENT_READ_SPAN = "document.read_chunks"
"""Embedder: the document's chunks read from the gateway (ReadChunks)."""
DOCUMENT_EMBED_SPAN = "document.embed"
"""Embedder: one Triton call that embedded chunks of the document (a batch may mix documents)."""
DOCUMENT_WRITE_SPAN = "document.write_vectors"
"""Embedder: the document's vectors sent with WriteVectors (its trace context goes along)."""
DOCUMENT_INDEX_SPAN = "document.index"
"""Gateway: lease check, sink write and move to indexed of the document (WriteVectors)."""
DOCUMENT_TRANSITION_SPAN = "document.transition"
"""Claimer: the document's move to another stage (TransitionDocuments), e.g. to indexed."""

MAX_TRACE_PARENT_BYTES = 512
"""Longest trace context accepted with a document (a version-00 ``traceparent`` has 55)."""

_TRACE_CONTEXT = TraceContextTextMapPropagator()


def traceparent(span: trace.Span | None = None) -> str:
    """The W3C ``traceparent`` value naming ``span`` (default: the current span), or ""
    when there is no valid span. Spans are created (and so named) even with the
    ``none`` exporter, so this is what carries a document's trace across processes."""
    ctx = (span if span is not None else trace.get_current_span()).get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def context_of(trace_parent: str) -> otel_context.Context:
    """A context whose parent span is the remote span ``trace_parent`` names; an empty
    context (spans started in it begin a new trace) when it is empty or malformed."""
    if not trace_parent:
        return otel_context.Context()
    return _TRACE_CONTEXT.extract({"traceparent": trace_parent}, context=otel_context.Context())
