"""The worker's part of the trace of one document's journey (docs/operations.md,
"The trace of a document").

A lease carries the trace context of the document's staging
(``Lease.trace_parent``). When the lease arrives the worker starts the
document's ``document.process`` span as a child of it (a new trace when the
lease carries none) and records the lease as ``document.claim``; the
document's chunk read (``document.read_chunks``), every Triton call that
embeds some of its chunks (``document.embed``) and its vector write
(``document.write_vectors``) are children of ``document.process``, which ends
with the document's outcome. The write sends the write span's context with
the document (``LeaseRef.trace_parent``), so the gateway's ``document.index``
and the claimer's ``document.transition`` continue the same trace.

Reads, Triton calls and writes serve many documents at once: each per-document
span is linked to the batch's span (``embedder.read_chunks``,
``embedder.write_vectors``: the parents of the gRPC calls), which leads to the
gateway's side of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hevlayer.common.telemetry import (
    DOCUMENT_CLAIM_SPAN,
    DOCUMENT_EMBED_SPAN,
    DOCUMENT_PROCESS_SPAN,
    context_of,
)

tracer = trace.get_tracer("hevlayer.embedder")

READ_BATCH_SPAN = "embedder.read_chunks"
"""One ReadChunks call of the worker (many documents); the parent of its gRPC client span."""
WRITE_BATCH_SPAN = "embedder.write_vectors"
"""One WriteVectors call of the worker (many documents); the parent of its gRPC client span."""


class DocumentTrace:
    """The spans of one leased document in the worker."""

    __slots__ = ("_context", "_document_id", "span")

    def __init__(
        self,
        trace_parent: str,
        *,
        pipeline_id: str,
        document_id: str,
        worker_id: str,
        stage: str,
        fencing_token: int,
        attempts: int,
        chunk_count: int,
    ) -> None:
        received = time.time_ns()
        self._document_id = document_id
        attributes: dict[str, Any] = {
            "hevlayer.pipeline_id": pipeline_id,
            "hevlayer.document_id": document_id,
            "hevlayer.fencing_token": fencing_token,
        }
        self.span = tracer.start_span(
            DOCUMENT_PROCESS_SPAN,
            context=context_of(trace_parent),
            kind=SpanKind.CONSUMER,
            start_time=received,
            attributes={**attributes, "hevlayer.worker_id": worker_id, "hevlayer.chunk_count": chunk_count},
        )
        self._context = trace.set_span_in_context(self.span, otel_context.Context())
        tracer.start_span(
            DOCUMENT_CLAIM_SPAN,
            context=self._context,
            start_time=received,
            attributes={
                **attributes,
                "hevlayer.stage": stage,
                "hevlayer.worker_id": worker_id,
                "hevlayer.attempts": attempts,
            },
        ).end(end_time=received)

    def child(
        self,
        name: str,
        attributes: Mapping[str, Any],
        links: Sequence[trace.Link] | None = None,
        kind: SpanKind = SpanKind.CLIENT,
    ) -> trace.Span:
        """A span of this document (a child of ``document.process``): by default a call to
        another process (the gateway, Triton) made for it. The caller ends it."""
        return tracer.start_span(
            name,
            context=self._context,
            kind=kind,
            attributes={"hevlayer.document_id": self._document_id, **attributes},
            links=links,
        )

    def end(self, outcome: str, error: str = "") -> None:
        """End ``document.process`` with the document's outcome (indexed, lost, released, failed)."""
        self.span.set_attribute("hevlayer.outcome", outcome)
        if error:
            self.span.set_attribute("hevlayer.error", error)
        if outcome != "indexed":
            self.span.set_status(Status(StatusCode.ERROR, error or outcome))
        self.span.end()


def end_span(span: trace.Span, error: str = "") -> None:
    """End a per-document span, failed with ``error`` when it is set."""
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def batch_links() -> list[trace.Link] | None:
    """A link to the current span (a batch's), for the per-document spans of the batch."""
    context = trace.get_current_span().get_span_context()
    return [trace.Link(context)] if context.is_valid else None


@contextmanager
def batch_span(name: str, documents: int) -> Iterator[trace.Span]:
    """The current span of a call made for many documents (a new trace of its own: the
    documents' traces link to it)."""
    with tracer.start_as_current_span(
        name, context=otel_context.Context(), attributes={"hevlayer.documents": documents}
    ) as span:
        yield span


def embed_spans(chunks: Mapping[DocumentTrace, int], batch_chunks: int) -> list[trace.Span]:
    """A ``document.embed`` span per document with chunks in one Triton call."""
    return [
        document.child(DOCUMENT_EMBED_SPAN, {"hevlayer.chunks": count, "hevlayer.batch_chunks": batch_chunks})
        for document, count in chunks.items()
    ]
