"""The worker of one pipeline: claims, reads, heartbeats, and the finish hook.

A :class:`PipelineWorker` holds at most ``max_documents`` documents of its
pipeline, and fewer when documents have many chunks: it aims at holding about
``chunk_budget`` chunks (the chunk queue, every flush and one more batch),
using the mean chunk count of the documents it has leased (a lease carries
its document's chunk count), so that one worker
does not lease a whole backlog that other workers (or a scaled-out replica)
could be embedding. It

* **claims** through ``LeaseService.StreamLeases`` (the gateway relays it to
  the claimer): the stream is opened with as many credits as free document
  slots, and one credit goes back each time a document finishes, so leases
  arrive as documents become pending, without polling, and never more than
  the worker wants to hold. If the gateway does not implement the stream
  (UNIMPLEMENTED) it falls back to ``ClaimDocuments`` batches;
* **reads** the chunks of claimed documents with ``StagingService.ReadChunks``
  (``read_concurrency`` streams of up to ``read_documents`` documents) into
  the process's bounded chunk queue, blocking while it is full;
* **heartbeats** every held lease every third of the lease length; a lease
  reported lost drops its document's work (its queued chunks are skipped,
  its vectors discarded);
* is the documents' **owner**: it writes complete documents
  (``IndexService.WriteVectors``) for the writer, and :meth:`finish` is the
  hook that learns how each one ended — indexed and lost need nothing more,
  released documents go back to the stage they were claimed from and failed
  ones to ``failed``, with the error as the reason
  (``TransitionDocuments``), and each frees a credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from google.rpc import code_pb2
from opentelemetry.trace import Span

from hevlayer.client import (
    Claim,
    Client,
    DocumentVectors,
    Lease,
    NotFound,
    ServiceError,
    Unimplemented,
    WriteResult,
)
from hevlayer.common.telemetry import DOCUMENT_READ_SPAN
from hevlayer.embedder import worker_metrics as metrics
from hevlayer.embedder.chunk_queue import ChunkQueue
from hevlayer.embedder.consumer import Backoff, cut_utf8
from hevlayer.embedder.document_trace import READ_BATCH_SPAN, DocumentTrace, batch_links, batch_span, end_span
from hevlayer.embedder.inflight import ChunkItem, EndOfDocument, Fate, InFlightDocument

log = logging.getLogger("hevlayer.embedder.worker")

FAILED_STAGE = "failed"
MAX_BATCH = 10_000
"""Most documents per claim, heartbeat or transition (the claimer's limit)."""
MAX_REASON_BYTES = 4096
POLL_SECONDS = 1.0
"""Interval of ClaimDocuments polls in the fallback mode, when nothing was claimable."""


class Credits:
    """Document slots freed since the claim stream was (re)opened."""

    def __init__(self) -> None:
        self._pending = 0
        self._closed = False
        self._event = asyncio.Event()

    def grant(self, count: int) -> None:
        if count > 0:
            self._pending += count
            self._event.set()

    def reset(self) -> None:
        """Forget ungranted credits (a new stream is opened with the free slots instead)."""
        self._pending = 0

    def close(self) -> None:
        """End :meth:`stream` (the claim stream is then half-closed)."""
        self._closed = True
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait(self, timeout: float) -> None:
        """Until credits are granted, the credits are closed, or ``timeout`` passes."""
        if self._pending or self._closed:
            return
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the credits are closed meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._closed and (left := deadline - time.monotonic()) > 0:
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    async def stream(self) -> AsyncIterator[int]:
        """Each batch of granted credits, as they are granted, until closed."""
        while True:
            while not self._pending and not self._closed:
                self._event.clear()
                await self._event.wait()
            if self._closed:
                return
            granted, self._pending = self._pending, 0
            yield granted


class PipelineWorker:
    """Claims and reads one pipeline's documents; owns them until they finish."""

    def __init__(
        self,
        claim: Claim,
        gateway: Client,
        queue: ChunkQueue,
        *,
        max_documents: int,
        chunk_budget: int | None = None,
        read_concurrency: int = 2,
        read_documents: int = 64,
        backoff: Backoff | None = None,
    ) -> None:
        self.claim = claim
        self._gateway = gateway
        self._queue = queue
        self.max_documents = max_documents
        self.chunk_budget = chunk_budget if chunk_budget is not None else max_documents
        """Chunks the worker aims to hold (``max_documents`` stays the hard cap)."""
        self.chunks_per_document: float | None = None
        """Running mean of the chunk counts of the documents leased (None before the first)."""
        self._outstanding = 0
        """Credits given to the claim stream that no lease has used yet."""
        self._read_concurrency = read_concurrency
        self._read_documents = read_documents
        self._backoff = backoff or Backoff()
        self.held: dict[str, InFlightDocument] = {}
        self._to_read: asyncio.Queue[InFlightDocument] = asyncio.Queue()
        self._credits = Credits()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._lease_length = 0.0
        self.streaming = True
        """False once the gateway answered StreamLeases UNIMPLEMENTED (ClaimDocuments polls instead)."""

    @property
    def pipeline_id(self) -> str:
        return self.claim.pipeline_id

    def __repr__(self) -> str:
        return f"PipelineWorker({self.pipeline_id!r}, held={len(self.held)})"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming, reading and heartbeating."""
        name = self.pipeline_id
        self._tasks.append(asyncio.create_task(self._claim_loop(), name=f"claim-{name}"))
        for index in range(self._read_concurrency):
            self._tasks.append(asyncio.create_task(self._read_loop(), name=f"read-{name}-{index}"))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat-{name}"))

    def stop_claiming(self) -> None:
        """Claim nothing more: the claim stream is half-closed and ends."""
        self._credits.close()

    async def release_unread(self, reason: str) -> None:
        """Release the held documents no reader has started on (the drain finishes only
        documents already on their way, so the others go back to pending at once)."""
        unread: list[InFlightDocument] = []
        while not self._to_read.empty():
            unread.append(self._to_read.get_nowait())
        await self.finish(unread, Fate.RELEASED, reason)

    async def wait_idle(self) -> None:
        """Until no document is held."""
        await self._idle.wait()

    async def close(self, reason: str) -> None:
        """Stop every task and release the documents still held (with ``reason``)."""
        self.stop_claiming()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        remaining = [d for d in self.held.values() if not d.finished]
        if remaining:
            log.info(
                "%s: releasing %d held documents (%s)",
                self.pipeline_id,
                len(remaining),
                reason,
                extra={"pipeline_id": self.pipeline_id, "documents": len(remaining), "reason": reason},
            )
            await self.finish(remaining, Fate.RELEASED, reason)

    # -- the owner's side -------------------------------------------------------------------

    async def write(self, documents: Sequence[InFlightDocument]) -> list[WriteResult]:
        return await self._gateway.index.write_vectors(
            self.claim.pipeline_id,
            [DocumentVectors(d, d.written_vectors()) for d in documents],
            worker_id=self.claim.worker_id,
            from_stage=self.claim.claim_stage,
        )

    async def finish(self, documents: Sequence[InFlightDocument], outcome: Fate, error: str = "") -> None:
        """The hook: bookkeeping, a credit per document, and the transition a failure needs."""
        live = self._mark_finished(documents, outcome, error)
        if not live:
            return
        if outcome is Fate.FAILED:
            log.warning(
                "%s: %d documents failed: %s",
                self.pipeline_id,
                len(live),
                error,
                extra={
                    "pipeline_id": self.pipeline_id,
                    "documents": [d.document_id for d in live[:10]],
                    "error": error,
                },
            )
        elif outcome is Fate.LOST:
            log.info(
                "%s: %d leases lost, their work dropped (%s)",
                self.pipeline_id,
                len(live),
                error,
                extra={"pipeline_id": self.pipeline_id, "documents": len(live), "reason": error},
            )
        if outcome not in (Fate.RELEASED, Fate.FAILED):
            return
        to_stage = FAILED_STAGE if outcome is Fate.FAILED else self.claim.from_stage
        reason = cut_utf8(error, MAX_REASON_BYTES)
        started = time.perf_counter()
        try:
            for start in range(0, len(live), MAX_BATCH):
                await self._gateway.leases.transition_claimed(
                    self.claim, live[start : start + MAX_BATCH], to_stage, reason
                )
        except ServiceError as exc:
            log.warning(
                "%s: could not move documents to %s (%s); their leases expire and they are claimed again",
                self.pipeline_id,
                to_stage,
                exc.message,
                extra={"pipeline_id": self.pipeline_id, "to_stage": to_stage, "error": exc.message},
            )
        finally:
            metrics.STAGE_SECONDS.labels("transition").observe(time.perf_counter() - started)

    def _mark_finished(
        self, documents: Sequence[InFlightDocument], outcome: Fate, error: str = ""
    ) -> list[InFlightDocument]:
        live: list[InFlightDocument] = []
        for document in documents:
            if document.finished:
                continue
            document.finished = True
            document.outcome = outcome
            document.drop_vectors()
            if document.trace is not None:
                document.trace.end(outcome.value, error)
            if self.held.get(document.document_id) is document:
                del self.held[document.document_id]
            live.append(document)
        if live:
            self._refill()
            metrics.DOCUMENTS.labels(outcome.value).inc(len(live))
            metrics.IN_FLIGHT.dec(len(live))
        if not self.held:
            self._idle.set()
        return live

    # -- claiming ---------------------------------------------------------------------------

    @property
    def target_documents(self) -> int:
        """Documents to hold now: ``chunk_budget`` chunks at the mean chunk count (before
        any lease, a sixteenth of the budget, to learn the mean without leasing a whole
        backlog), at least two (one read while another is embedded), at most ``max_documents``."""
        mean = self.chunks_per_document
        wanted = self.chunk_budget // 16 if mean is None else -(-self.chunk_budget // max(1, round(mean)))
        return max(1, min(self.max_documents, max(2, wanted)))

    def _observe_chunks(self, counts: Sequence[int]) -> None:
        """Leases arrived for documents of ``counts`` chunks: update the mean (EWMA, 1/16)."""
        for count in counts:
            count = max(1, count)  # a lightweight id (no chunks) still costs a slot
            mean = self.chunks_per_document
            self.chunks_per_document = float(count) if mean is None else mean + (count - mean) / 16

    def _free_slots(self) -> int:
        return max(0, self.target_documents - len(self.held))

    def _refill(self) -> None:
        """Grant the claim stream the credits that bring held + outstanding up to the target."""
        wanted = self._free_slots() - self._outstanding
        if wanted > 0:
            self._outstanding += wanted
            self._credits.grant(wanted)

    def _accept(self, leases: list[Lease]) -> None:
        now = time.monotonic()
        for lease in leases:
            old = self.held.get(lease.document_id)
            if old is not None:  # our previous lease on it expired and we claimed it again
                self._mark_finished([old], Fate.LOST, "claimed again after the lease expired")
            document = InFlightDocument(
                owner=self,
                document_id=lease.document_id,
                fencing_token=lease.fencing_token,
                expires_at=lease.expires_at,
                attempts=lease.attempts,
                trace=DocumentTrace(
                    lease.trace_parent,
                    pipeline_id=self.claim.pipeline_id,
                    document_id=lease.document_id,
                    worker_id=self.claim.worker_id,
                    stage=self.claim.claim_stage,
                    fencing_token=lease.fencing_token,
                    attempts=lease.attempts,
                    chunk_count=lease.chunk_count,
                ),
            )
            self.held[lease.document_id] = document
            self._to_read.put_nowait(document)
            self._lease_length = max(lease.expires_at - now, 0.3)
        self._outstanding = max(0, self._outstanding - len(leases))
        if leases:
            self._observe_chunks([lease.chunk_count for lease in leases])
            self._refill()
            if self.held:
                self._idle.clear()
            metrics.LEASES.inc(len(leases))
            metrics.IN_FLIGHT.inc(len(leases))

    async def _claim_loop(self) -> None:
        attempt = 0
        while not self._credits.closed:
            try:
                if self.streaming:
                    self._credits.reset()
                    self._outstanding = self._free_slots()
                    async for leases in self._gateway.leases.stream_leases(
                        self.claim, self._credits.stream(), self._outstanding
                    ):
                        self._accept(leases)
                        attempt = 0
                    if self._credits.closed:
                        return
                    log.info(
                        "%s: the claim stream ended; reopening",
                        self.pipeline_id,
                        extra={"pipeline_id": self.pipeline_id},
                    )
                else:
                    self._credits.reset()
                    self._outstanding = 0
                    free = self._free_slots()
                    if free:
                        leases = await self._gateway.leases.claim(self.claim, min(free, MAX_BATCH))
                        self._accept(leases)
                        attempt = 0
                        if leases:
                            continue
                    await self._credits.wait(POLL_SECONDS)
                    continue
            except ServiceError as error:
                if isinstance(error, Unimplemented) and self.streaming:
                    log.info(
                        "%s: StreamLeases is not implemented by the gateway; polling ClaimDocuments",
                        self.pipeline_id,
                        extra={"pipeline_id": self.pipeline_id},
                    )
                    self.streaming = False
                    continue
                level = logging.WARNING if attempt or not isinstance(error, NotFound) else logging.ERROR
                log.log(
                    level,
                    "%s: claiming failed (%s); retrying",
                    self.pipeline_id,
                    error.message,
                    extra={"pipeline_id": self.pipeline_id, "error": error.message, "code": error.code.name},
                )
            attempt += 1
            await self._credits.pause(self._backoff.delay(min(attempt, 16)))

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            documents = [await self._to_read.get()]
            while len(documents) < self._read_documents and not self._to_read.empty():
                documents.append(self._to_read.get_nowait())
            documents = [d for d in documents if not d.finished]
            if documents:
                await self._read(documents)

    async def _read(self, documents: list[InFlightDocument]) -> None:
        by_id = {d.document_id: d for d in documents}
        unread = dict(by_id)
        started = time.perf_counter()
        with batch_span(READ_BATCH_SPAN, len(documents)):
            links = batch_links()
            spans = {
                d.document_id: d.trace.child(DOCUMENT_READ_SPAN, {}, links)
                for d in documents
                if d.trace is not None
            }
            try:
                await self._read_batch(documents, by_id, unread, spans, started)
            finally:
                for span in spans.values():
                    end_span(span, "the read ended before the document's last chunk")

    async def _read_batch(
        self,
        documents: list[InFlightDocument],
        by_id: dict[str, InFlightDocument],
        unread: dict[str, InFlightDocument],
        spans: dict[str, Span],
        started: float,
    ) -> None:
        try:
            async for response in self._gateway.staging.read_chunks(
                self.claim.pipeline_id,
                worker_id=self.claim.worker_id,
                stage=self.claim.claim_stage,
                leases=documents,
            ):
                document = by_id.get(response.document_id)
                if document is None:
                    continue
                if response.HasField("error"):
                    unread.pop(document.document_id, None)
                    code = response.error.code
                    outcome = (
                        Fate.LOST
                        if code in (code_pb2.FAILED_PRECONDITION, code_pb2.NOT_FOUND)
                        else Fate.RELEASED
                    )
                    message = f"ReadChunks: {response.error.message}"
                    span = spans.pop(document.document_id, None)
                    if span is not None:
                        end_span(span, message)
                    await self.finish([document], outcome, message)
                    continue
                for chunk in response.chunks:
                    if document.finished:
                        break
                    await self._queue.put(ChunkItem(document, document.queued, chunk))
                    document.queued += 1
                if response.end_of_document:
                    unread.pop(document.document_id, None)
                    span = spans.pop(document.document_id, None)
                    if span is not None:
                        span.set_attribute("hevlayer.chunks", document.queued)
                        end_span(span)
                    if not document.finished:
                        await self._queue.put(EndOfDocument(document, document.queued))
        except ServiceError as error:
            log.warning(
                "%s: ReadChunks failed (%s); releasing its %d unread documents",
                self.pipeline_id,
                error.message,
                len(unread),
                extra={"pipeline_id": self.pipeline_id, "documents": len(unread), "error": error.message},
            )
            await self.finish(list(unread.values()), Fate.RELEASED, f"ReadChunks failed: {error.message}")
            await asyncio.sleep(self._backoff.delay(1))
            return
        finally:
            metrics.STAGE_SECONDS.labels("read").observe(time.perf_counter() - started)
        if unread:
            await self.finish(
                list(unread.values()), Fate.RELEASED, "ReadChunks returned nothing for the document"
            )

    # -- heartbeats -------------------------------------------------------------------------

    def heartbeat_interval(self) -> float:
        """A third of the lease length (1 s before the first lease)."""
        if not self._lease_length:
            return 1.0
        return min(60.0, max(0.1, self._lease_length / 3))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval())
            documents = [d for d in self.held.values() if not d.finished]
            for start in range(0, len(documents), MAX_BATCH):
                await self._heartbeat(documents[start : start + MAX_BATCH])

    async def _heartbeat(self, documents: list[InFlightDocument]) -> None:
        started = time.perf_counter()
        try:
            deadlines = await self._gateway.leases.heartbeat(self.claim, documents)
        except ServiceError as error:
            log.warning(
                "%s: heartbeat failed (%s); retrying at the next beat",
                self.pipeline_id,
                error.message,
                extra={"pipeline_id": self.pipeline_id, "documents": len(documents), "error": error.message},
            )
            return
        finally:
            metrics.STAGE_SECONDS.labels("heartbeat").observe(time.perf_counter() - started)
        lost: list[InFlightDocument] = []
        for document, deadline in zip(documents, deadlines, strict=True):
            if deadline is not None:
                document.expires_at = deadline
            elif not document.writing and not document.finished:
                # (A document being written may just have been indexed: its write result decides.)
                lost.append(document)
        if lost:
            await self.finish(lost, Fate.LOST, "heartbeat: the lease is no longer held")
