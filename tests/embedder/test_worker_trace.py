"""The worker's spans of a document's journey, in-process (spans kept in memory).

The live-suite test (tests/observability/test_document_trace.py) follows one
document through every process; these check the worker's side where the live
suite cannot steer it: a lease without trace context, a document the model
refuses, the context each WriteVectors document carries, and outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client import WriteOutcome, WriteResult
from hevlayer.common.errors import InvalidArgument
from hevlayer.common.telemetry import (
    DOCUMENT_CLAIM_SPAN,
    DOCUMENT_EMBED_SPAN,
    DOCUMENT_PROCESS_SPAN,
    DOCUMENT_WRITE_SPAN,
)
from hevlayer.embedder import document_trace
from hevlayer.embedder.chunk_queue import ChunkQueue
from hevlayer.embedder.consumer import Backoff, DocumentWriter, EmbedConsumer, Vectors
from hevlayer.embedder.document_trace import WRITE_BATCH_SPAN, DocumentTrace
from hevlayer.embedder.inflight import ChunkItem, EndOfDocument, Fate, InFlightDocument

STAGING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NO_WAIT = Backoff(attempts=2, initial=0.001, maximum=0.002)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(document_trace, "tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def new_trace(document_id: str, trace_parent: str = STAGING) -> DocumentTrace:
    return DocumentTrace(
        trace_parent,
        pipeline_id="p",
        document_id=document_id,
        worker_id="w",
        stage="embedding",
        fencing_token=7,
        attempts=1,
        chunk_count=2,
    )


def named(exporter: InMemorySpanExporter, name: str, document_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name == name and (s.attributes or {}).get("hevlayer.document_id") == document_id
    ]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_the_process_span_continues_the_leases_trace(spans: InMemorySpanExporter) -> None:
    traced = new_trace("a")
    traced.end(Fate.INDEXED.value)
    (process,) = named(spans, DOCUMENT_PROCESS_SPAN, "a")
    assert format(process.context.trace_id, "032x") == STAGING.split("-")[1]
    assert parent_id(process) == int(STAGING.split("-")[2], 16), "the staging span is the parent"
    assert process.status.status_code is StatusCode.UNSET
    assert (process.attributes or {})["hevlayer.outcome"] == "indexed"
    (claim,) = named(spans, DOCUMENT_CLAIM_SPAN, "a")
    assert parent_id(claim) == process.context.span_id
    assert (claim.attributes or {})["hevlayer.fencing_token"] == 7

    # a lease without context (an id of the segmented queue): a new trace of its own
    untraced = new_trace("b", trace_parent="")
    untraced.end(Fate.LOST.value, "heartbeat: the lease is no longer held")
    (root,) = named(spans, DOCUMENT_PROCESS_SPAN, "b")
    assert root.parent is None
    assert root.context.trace_id != process.context.trace_id
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "heartbeat: the lease is no longer held"


@dataclass(eq=False)
class Owner:
    """A pipeline worker stand-in: records the trace context each written document carries."""

    pipeline_id: str = "p"
    sent: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, Fate] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, documents: Sequence[InFlightDocument]) -> list[WriteResult]:
        self.sent.update({d.document_id: d.trace_parent for d in documents})
        return [WriteResult(d.document_id, WriteOutcome.INDEXED, len(d.written_vectors())) for d in documents]

    async def finish(self, documents: Sequence[InFlightDocument], outcome: Fate, error: str = "") -> None:
        for document in documents:
            document.finished = True
            self.outcomes[document.document_id] = outcome
        if len(self.outcomes) == 2:
            self.done.set()


async def refusing_model(texts: Sequence[str]) -> Vectors:
    if any("refused" in text for text in texts):
        raise InvalidArgument("the model refuses this text")
    return np.ones((len(texts), 2), dtype=np.float32)


async def test_embed_and_write_spans_and_the_context_each_write_carries(spans: InMemorySpanExporter) -> None:
    owner = Owner()
    queue = ChunkQueue(64)
    documents = {
        name: InFlightDocument(
            owner=owner, document_id=name, fencing_token=7, expires_at=1e12, trace=new_trace(name)
        )
        for name in ("good", "bad")
    }
    for name, document in documents.items():
        for index, text in enumerate([f"{name} one", f"{name} two" if name == "good" else "refused"]):
            await queue.put(ChunkItem(document, index, document_pb2.Chunk(id=f"c{index}", text=text)))
        await queue.put(EndOfDocument(document, 2))
    writer = DocumentWriter(concurrency=1, backoff=NO_WAIT)
    consumer = EmbedConsumer(queue, refusing_model, writer, batch_size=4, idle_seconds=0.01, backoff=NO_WAIT)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(writer.run())]
    try:
        await asyncio.wait_for(owner.done.wait(), 30)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert owner.outcomes == {"good": Fate.INDEXED, "bad": Fate.FAILED}

    good = documents["good"].trace
    assert good is not None
    # one Triton call with both documents (refused), then each alone
    good_embeds = named(spans, DOCUMENT_EMBED_SPAN, "good")
    assert [s.status.status_code for s in good_embeds] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(parent_id(s) == good.span.get_span_context().span_id for s in good_embeds)
    assert [(s.attributes or {}).get("hevlayer.batch_chunks") for s in good_embeds] == [4, 2]
    bad_embeds = named(spans, DOCUMENT_EMBED_SPAN, "bad")
    assert [s.status.status_code for s in bad_embeds] == [StatusCode.ERROR, StatusCode.ERROR]

    # the written document carried its write span's context; the refused one was never written
    (write,) = named(spans, DOCUMENT_WRITE_SPAN, "good")
    assert parent_id(write) == good.span.get_span_context().span_id
    context = write.context
    assert owner.sent == {
        "good": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    }
    assert documents["good"].trace_parent == "", "the context is sent with that write only"
    assert (write.attributes or {})["hevlayer.outcome"] == "indexed"
    batches = [s for s in spans.get_finished_spans() if s.name == WRITE_BATCH_SPAN]
    assert [link.context.span_id for link in write.links] == [batches[0].context.span_id]
    assert not named(spans, DOCUMENT_WRITE_SPAN, "bad")
