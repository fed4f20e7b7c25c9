"""OpenTelemetry tracing: provider setup, exporters, and W3C trace context
carried in gRPC metadata (``traceparent``/``tracestate``)."""

from __future__ import annotations

import json
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

Metadata = Sequence[tuple[str, str | bytes]]


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line.

    Meant for local runs and tests (every process of a stack can share one
    file, since lines are written with a single ``write`` in append mode).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

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
                    },
                    default=str,
                )
            )
        if lines:
            with self._lock, self._path.open("a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS


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
