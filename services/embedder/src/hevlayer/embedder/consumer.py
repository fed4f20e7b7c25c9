"""The one embed consumer of a worker process, and the writer of complete documents.

:class:`EmbedConsumer` takes chunks from the bounded
:class:`~hevlayer.embedder.chunk_queue.ChunkQueue` — chunks of every
document of every pipeline the process works — and cuts them into batches:

* a batch is flushed as soon as it holds ``batch_size`` chunks, or once no
  chunk has arrived for ``idle_seconds`` (a partial batch);
* a flush embeds its texts with one call (one Triton request when the batch
  size is the Triton request size); up to ``max_in_flight`` flushes run at
  once, so Triton always has the next batch waiting. While every flush slot
  is taken the consumer stops taking chunks (a ready batch waits), the
  queue fills, and the readers block: backpressure;
* the vectors are attached to their documents; a document whose every chunk
  is embedded and whose end marker has been consumed is *complete* and goes
  to the :class:`DocumentWriter`.

A flush that fails UNAVAILABLE (Triton down past the client's own retries)
or FAILED_PRECONDITION (the model is missing) is retried ``attempts`` times
with exponential backoff, then its documents are released to pending (the
owner's hook moves them) and the next flushes wait a growing backoff first
(their chunks wait in the queue, their leases heartbeated); a flush failing otherwise (INVALID_ARGUMENT,
INTERNAL) is split by document, and only the documents that fail alone are
failed, with the error.

:class:`DocumentWriter` streams complete documents to the gateway with
WriteVectors (many documents per call, one result per document), with the
same retry rule; the per-document results finish the documents: indexed,
lost (stale lease: the next holder's write replaces the rows) or failed
(rejected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from opentelemetry.trace import Span

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client import WriteResult
from hevlayer.common.errors import FailedPrecondition, NotFound, ServiceError, Unavailable
from hevlayer.common.telemetry import DOCUMENT_WRITE_SPAN, traceparent
from hevlayer.embedder import worker_metrics as metrics
from hevlayer.embedder.chunk_queue import ChunkQueue, take_or_cancel
from hevlayer.embedder.document_trace import (
    WRITE_BATCH_SPAN,
    DocumentTrace,
    batch_links,
    batch_span,
    embed_spans,
    end_span,
)
from hevlayer.embedder.inflight import (
    ChunkItem,
    DocumentOwner,
    EndOfDocument,
    Fate,
    InFlightDocument,
    QueueItem,
    fate_of,
)

log = logging.getLogger("hevlayer.embedder.worker")

Vectors = npt.NDArray[np.float32]
EmbedTexts = Callable[[Sequence[str]], Awaitable[Vectors]]

RESERVED_ATTRIBUTES = ("document_id", "chunk_id")
TEXT_ATTRIBUTE = "text"


@dataclass(frozen=True)
class Backoff:
    """Attempts of a failing flush step and the exponential delays between them."""

    attempts: int = 3
    initial: float = 0.5
    maximum: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), with jitter."""
        return min(self.maximum, self.initial * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character)."""
    if len(text) * 4 <= limit:
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore")


def make_vector(chunk: document_pb2.Chunk, values: list[float], max_text_bytes: int) -> document_pb2.Vector:
    """The Vector of a chunk: id = chunk id (the gateway derives the row id from the
    document id and this), attributes = the chunk's metadata plus its ``text``."""
    vector = document_pb2.Vector(id=chunk.id, values=values)
    if chunk.HasField("metadata"):
        vector.attributes.CopyFrom(chunk.metadata)
        for key in RESERVED_ATTRIBUTES:
            if key in vector.attributes:
                del vector.attributes[key]
    if max_text_bytes:
        vector.attributes[TEXT_ATTRIBUTE] = cut_utf8(chunk.text, max_text_bytes)
    return vector


def by_owner(documents: Iterable[InFlightDocument]) -> dict[DocumentOwner, list[InFlightDocument]]:
    """Distinct documents grouped by owner, in first-seen order."""
    groups: dict[DocumentOwner, list[InFlightDocument]] = {}
    seen: set[int] = set()
    for document in documents:
        if id(document) not in seen:
            seen.add(id(document))
            groups.setdefault(document.owner, []).append(document)
    return groups


async def finish(documents: Iterable[InFlightDocument], outcome: Fate, error: str = "") -> None:
    """Tell each document's owner how it finished (the success/failure hook)."""
    for owner, group in by_owner(d for d in documents if not d.finished).items():
        try:
            await owner.finish(group, outcome, error)
        except Exception:
            log.exception("finish hook failed", extra={"pipeline_id": owner.pipeline_id})


def systemic(error: ServiceError) -> bool:
    """Errors that say nothing about the documents: retry, then release them."""
    return isinstance(error, Unavailable | FailedPrecondition)


class DocumentWriter:
    """Writes complete documents with WriteVectors (see the module docstring)."""

    def __init__(
        self,
        *,
        concurrency: int = 2,
        max_documents: int = 64,
        max_vectors: int = 4096,
        backoff: Backoff | None = None,
    ) -> None:
        self._concurrency = concurrency
        self._max_documents = max_documents
        self._max_vectors = max_vectors
        self._backoff = backoff or Backoff()
        self._ready: deque[InFlightDocument] = deque()
        self._wake = asyncio.Event()

    def submit(self, document: InFlightDocument) -> None:
        """Queue a complete document for writing."""
        if document.submitted or document.finished:
            return
        document.submitted = True
        self._ready.append(document)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._ready)

    async def run(self) -> None:
        """Write until cancelled."""
        await asyncio.gather(*(self._loop() for _ in range(self._concurrency)))

    async def _loop(self) -> None:
        while True:
            batch = await self._take()
            if batch:
                await self._write(batch)

    async def _take(self) -> list[InFlightDocument]:
        while not self._ready:
            self._wake.clear()
            await self._wake.wait()
        first = self._ready.popleft()
        batch = [first]
        vectors = first.total or 0
        keep: deque[InFlightDocument] = deque()
        while self._ready and len(batch) < self._max_documents:
            document = self._ready.popleft()
            size = document.total or 0
            if document.owner is not first.owner or vectors + size > self._max_vectors:
                keep.append(document)
                if vectors + size > self._max_vectors:
                    break
                continue
            batch.append(document)
            vectors += size
        keep.extend(self._ready)
        self._ready = keep
        return [d for d in batch if not d.finished]

    async def _write(self, documents: list[InFlightDocument]) -> None:
        owner = documents[0].owner
        attempt = 0
        while True:
            live = [d for d in documents if not d.finished]
            if not live:
                return
            attempt += 1
            for document in live:
                document.writing = True
            started = time.perf_counter()
            try:
                results = await _traced_write(owner, live, attempt)
            except ServiceError as error:
                if isinstance(error, NotFound):
                    await finish(live, Fate.LOST, error.message)
                    return
                if systemic(error) and attempt < self._backoff.attempts:
                    metrics.FLUSH_RETRIES.labels("write").inc()
                    delay = self._backoff.delay(attempt)
                    log.warning(
                        "WriteVectors failed (%s); retrying in %.2f s",
                        error.message,
                        delay,
                        extra={"attempt": attempt, "delay": round(delay, 3), "error": error.message},
                    )
                    await asyncio.sleep(delay)
                    continue
                log.warning(
                    "WriteVectors failed (%s); releasing %d documents",
                    error.message,
                    len(live),
                    extra={"documents": len(live), "error": error.message},
                )
                await finish(live, Fate.RELEASED, f"WriteVectors failed: {error.message}")
                return
            finally:
                for document in live:
                    document.writing = False
                metrics.STAGE_SECONDS.labels("write").observe(time.perf_counter() - started)
            groups: dict[tuple[Fate, str], list[InFlightDocument]] = {}
            for document, result in zip(live, results, strict=True):
                fate = fate_of(result)
                key = (fate, result.error if fate is Fate.FAILED else "")
                groups.setdefault(key, []).append(document)
            for (outcome, message), group in groups.items():
                await finish(group, outcome, message)
            return


async def _traced_write(
    owner: DocumentOwner, documents: list[InFlightDocument], attempt: int
) -> list[WriteResult]:
    """``owner.write(documents)`` under a batch span, with a ``document.write_vectors`` span
    per document whose context goes along with the document's vectors."""
    with batch_span(WRITE_BATCH_SPAN, len(documents)):
        links = batch_links()
        spans: dict[int, Span] = {}
        for document in documents:
            if document.trace is not None:
                span = document.trace.child(DOCUMENT_WRITE_SPAN, {"hevlayer.attempt": attempt}, links)
                spans[id(document)] = span
                document.trace_parent = traceparent(span)
        try:
            results = await owner.write(documents)
        except BaseException as exc:
            message = exc.message if isinstance(exc, ServiceError) else type(exc).__name__
            _end_spans(spans.values(), f"WriteVectors: {message}")
            raise
        finally:
            for document in documents:
                document.trace_parent = ""
        for document, result in zip(documents, results, strict=True):
            written = spans.get(id(document))
            if written is not None:
                fate = fate_of(result)
                written.set_attribute("hevlayer.outcome", fate.value)
                end_span(written, "" if fate is Fate.INDEXED else result.error or fate.value)
        return results


def _embed_spans(items: Sequence[ChunkItem]) -> list[Span]:
    """A ``document.embed`` span per document with chunks among ``items`` (one Triton call)."""
    chunks: dict[DocumentTrace, int] = {}
    for item in items:
        document_trace = item.document.trace
        if document_trace is not None:
            chunks[document_trace] = chunks.get(document_trace, 0) + 1
    return embed_spans(chunks, len(items)) if chunks else []


def _end_spans(spans: Iterable[Span], error: str = "") -> None:
    for span in spans:
        end_span(span, error)


class EmbedConsumer:
    """The process's one consumer of the chunk queue (see the module docstring)."""

    def __init__(
        self,
        queue: ChunkQueue,
        embed: EmbedTexts,
        writer: DocumentWriter,
        *,
        batch_size: int,
        idle_seconds: float = 0.05,
        max_in_flight: int = 2,
        backoff: Backoff | None = None,
        max_text_bytes: int = 16384,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._queue = queue
        self._embed = embed
        self._writer = writer
        self.batch_size = batch_size
        self._idle = idle_seconds
        self._slots = asyncio.Semaphore(max_in_flight)
        self._backoff = backoff or Backoff()
        self._max_text_bytes = max_text_bytes
        self._flushes: set[asyncio.Task[None]] = set()
        self._running = 0
        self._busy_since = 0.0
        self._failures = 0
        """Flushes released in a row for a systemic error: new flushes wait a backoff first."""

    @property
    def flushes_in_flight(self) -> int:
        return self._running

    async def run(self) -> None:
        """Consume until cancelled (in-flight flushes are cancelled with it)."""
        batch: list[ChunkItem] = []
        try:
            while True:
                if len(batch) >= self.batch_size:
                    await self._dispatch(batch, "full")
                    batch = []
                    continue
                if batch:
                    item = await self._queue.get_within(self._idle)
                    if item is None:
                        batch = await self._dispatch_partial(batch)
                        continue
                else:
                    item = await self._queue.get()
                self._take(item, batch)
        finally:
            for task in list(self._flushes):
                task.cancel()
            for task in list(self._flushes):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _take(self, item: QueueItem, batch: list[ChunkItem]) -> None:
        document = item.document
        if document.finished:
            return
        if isinstance(item, EndOfDocument):
            document.total = item.total
            if document.complete:
                self._writer.submit(document)
            return
        batch.append(item)

    async def _cool_down(self) -> None:
        """After flushes failed for Triton being down, wait before the next one (backoff)."""
        if self._failures:
            await asyncio.sleep(self._backoff.delay(min(self._failures, 8)))

    async def _dispatch(self, batch: list[ChunkItem], trigger: str) -> None:
        await self._cool_down()
        if self._slots.locked():
            started = time.perf_counter()
            await self._slots.acquire()
            metrics.SLOT_WAIT.inc(time.perf_counter() - started)
        else:
            await self._slots.acquire()
        self._start(batch, trigger)

    async def _dispatch_partial(self, batch: list[ChunkItem]) -> list[ChunkItem]:
        """Flush a partial batch once a slot is free, taking more chunks meanwhile."""
        await self._cool_down()
        if not self._slots.locked():
            await self._slots.acquire()
            self._start(batch, "idle")
            return []
        started = time.perf_counter()
        acquire = asyncio.ensure_future(self._slots.acquire())
        try:
            while not acquire.done() and len(batch) < self.batch_size:
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({acquire, getter}, return_when=asyncio.FIRST_COMPLETED)
                item = getter.result() if getter in done else await take_or_cancel(getter)
                if item is not None:
                    self._take(item, batch)
            await acquire
        except BaseException:
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                self._slots.release()
            else:
                acquire.cancel()
            raise
        metrics.SLOT_WAIT.inc(time.perf_counter() - started)
        self._start(batch, "full" if len(batch) >= self.batch_size else "idle")
        return []

    def _start(self, batch: list[ChunkItem], trigger: str) -> None:
        metrics.FLUSHES.labels(trigger).inc()
        metrics.FLUSH_CHUNKS.observe(len(batch))
        if self._running == 0:
            self._busy_since = time.perf_counter()
        self._running += 1
        metrics.FLUSHES_IN_FLIGHT.set(self._running)
        task = asyncio.create_task(self._flush(batch), name="embed-flush")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[ChunkItem]) -> None:
        try:
            await self._embed_items(batch)
        except Exception:
            log.exception("embedding flush failed unexpectedly; releasing its documents")
            await finish((item.document for item in batch), Fate.RELEASED, "embedding flush failed (bug)")
        finally:
            self._running -= 1
            metrics.FLUSHES_IN_FLIGHT.set(self._running)
            if self._running == 0:
                metrics.EMBED_BUSY.inc(time.perf_counter() - self._busy_since)
            self._slots.release()

    async def _embed_items(self, batch: list[ChunkItem]) -> None:
        attempt = 0
        while True:
            live = [item for item in batch if not item.document.finished]
            if not live:
                return
            attempt += 1
            started = time.perf_counter()
            spans = _embed_spans(live)
            try:
                vectors = await self._embed([item.chunk.text for item in live])
            except ServiceError as error:
                _end_spans(spans, f"embedding: {error.message}")
                if systemic(error):
                    if attempt < self._backoff.attempts:
                        metrics.FLUSH_RETRIES.labels("embed").inc()
                        delay = max(self._backoff.delay(attempt), error.retry_after or 0.0)
                        log.warning(
                            "embedding failed (%s); retrying the flush in %.2f s",
                            error.message,
                            delay,
                            extra={"attempt": attempt, "delay": round(delay, 3), "error": error.message},
                        )
                        await asyncio.sleep(min(delay, self._backoff.maximum))
                        continue
                    log.warning(
                        "embedding failed (%s); releasing the flush's documents",
                        error.message,
                        extra={"chunks": len(live), "error": error.message},
                    )
                    self._failures += 1
                    await finish(
                        (item.document for item in live), Fate.RELEASED, f"embedding: {error.message}"
                    )
                    return
                await self._isolate(live, error)
                return
            except BaseException as exc:
                _end_spans(spans, f"embedding: {type(exc).__name__}")
                raise
            finally:
                metrics.STAGE_SECONDS.labels("embed").observe(time.perf_counter() - started)
            _end_spans(spans)
            self._failures = 0
            self._attach(live, vectors)
            return

    async def _isolate(self, items: list[ChunkItem], error: ServiceError) -> None:
        """A non-retryable failure: embed each document alone; fail those that still fail."""
        groups: dict[int, list[ChunkItem]] = {}
        for item in items:
            groups.setdefault(id(item.document), []).append(item)
        if len(groups) == 1:
            log.warning("embedding refused a document: %s", error.message, extra={"error": error.message})
            await finish([items[0].document], Fate.FAILED, f"embedding: {error.message}")
            return
        for group in groups.values():
            document = group[0].document
            if document.finished:
                continue
            spans = _embed_spans(group)
            try:
                vectors = await self._embed([item.chunk.text for item in group])
            except ServiceError as alone:
                _end_spans(spans, f"embedding: {alone.message}")
                outcome = Fate.RELEASED if systemic(alone) else Fate.FAILED
                await finish([document], outcome, f"embedding: {alone.message}")
                continue
            except BaseException as exc:
                _end_spans(spans, f"embedding: {type(exc).__name__}")
                raise
            _end_spans(spans)
            self._attach(group, vectors)

    def _attach(self, items: list[ChunkItem], vectors: Vectors) -> None:
        if len(vectors) != len(items):
            raise RuntimeError(f"{len(vectors)} vectors for {len(items)} texts")
        rows = vectors.tolist()
        touched: dict[int, InFlightDocument] = {}
        for item, values in zip(items, rows, strict=True):
            document = item.document
            if document.finished:
                continue
            document.set_vector(item.index, make_vector(item.chunk, values, self._max_text_bytes))
            touched[id(document)] = document
        metrics.CHUNKS_EMBEDDED.inc(len(items))
        metrics.LAST_EMBEDDED.set_to_current_time()
        for document in touched.values():
            if document.complete:
                self._writer.submit(document)
