"""The embedder's worker loop: pending documents in, vectors in the index out.

Stateless; its only peers are the gateway (``EMBEDDER_GATEWAY_ADDRESS``) and
Triton. One :class:`Worker` per process owns

* one bounded :class:`~hevlayer.embedder.chunk_queue.ChunkQueue`
  (``maxsize`` = batch size x ``EMBEDDER_WORKER_QUEUE_BATCHES``),
* one :class:`~hevlayer.embedder.consumer.EmbedConsumer` batching chunks
  across every document and pipeline, and one
  :class:`~hevlayer.embedder.consumer.DocumentWriter`,
* one :class:`~hevlayer.embedder.pipeline_worker.PipelineWorker` per
  pipeline it works (``EMBEDDER_WORKER_PIPELINES``: ids, or ``*`` for every
  pipeline, re-listed periodically).

Flow of a document: lease (StreamLeases) → ReadChunks into the queue →
embedded in one or more flushes → WriteVectors (the gateway checks the lease
and token, deletes the document's old rows, upserts the new ones and moves
it to ``indexed``). A crash at any point loses nothing: the lease expires,
the document is claimed again, and the rewrite replaces its rows (row ids
are derived from the document and chunk ids).

:meth:`Worker.drain` (SIGTERM): stop claiming, release at once the held
documents no reader has started on, let the others finish for up to
``EMBEDDER_WORKER_DRAIN_SECONDS``, release what is left to pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from hevlayer.client import Claim, Client, ServiceError
from hevlayer.embedder import worker_metrics as metrics
from hevlayer.embedder.chunk_queue import ChunkQueue
from hevlayer.embedder.consumer import Backoff, DocumentWriter, EmbedConsumer, EmbedTexts
from hevlayer.embedder.pipeline_worker import PipelineWorker
from hevlayer.embedder.settings import WorkerSettings

log = logging.getLogger("hevlayer.embedder.worker")

SHUTDOWN_REASON = "the embedder worker shut down before finishing the document"


def default_worker_id() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in GetDocument."""
    return f"{socket.gethostname()[:200]}-{os.getpid()}-{secrets.token_hex(3)}"


def chunk_budget(settings: WorkerSettings, batch_size: int, max_in_flight: int) -> int:
    """Chunks a pipeline worker aims to hold: enough to fill the chunk queue, every
    flush slot and one more batch."""
    return min(10_000, batch_size * (settings.queue_batches + max_in_flight + 2))


def max_documents(settings: WorkerSettings, batch_size: int, max_in_flight: int) -> int:
    """Most documents held per pipeline: the setting, else the chunk budget in
    one-chunk documents (documents with more chunks are held fewer at a time)."""
    if settings.max_documents:
        return settings.max_documents
    return chunk_budget(settings, batch_size, max_in_flight)


class Worker:
    """The worker loop of one embedder process (see the module docstring)."""

    def __init__(
        self,
        settings: WorkerSettings,
        gateway: Client,
        embed: EmbedTexts,
        *,
        batch_size: int,
        max_in_flight: int,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.worker_id = settings.worker_id or default_worker_id()
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.max_documents = max_documents(settings, batch_size, max_in_flight)
        self.chunk_budget = chunk_budget(settings, batch_size, max_in_flight)
        self.backoff = Backoff(
            attempts=settings.retry_attempts, initial=0.5, maximum=settings.retry_max_backoff_seconds
        )
        self.queue = ChunkQueue.for_batch_size(batch_size, settings.queue_batches)
        self.writer = DocumentWriter(concurrency=settings.write_concurrency, backoff=self.backoff)
        self.consumer = EmbedConsumer(
            self.queue,
            embed,
            self.writer,
            batch_size=batch_size,
            idle_seconds=settings.flush_idle_seconds,
            max_in_flight=max_in_flight,
            backoff=self.backoff,
            max_text_bytes=settings.max_text_bytes,
        )
        self.pipelines: dict[str, PipelineWorker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        metrics.QUEUE_CAPACITY.set(self.queue.maxsize)
        metrics.QUEUE_DEPTH.set_function(self.queue.qsize)

    def start(self) -> None:
        """Start the consumer, the writer and the pipelines' workers."""
        log.info(
            "worker %s starting: pipelines %s, batch %d, chunk queue %d, %d documents per pipeline",
            self.worker_id,
            ",".join(self.settings.pipeline_ids),
            self.batch_size,
            self.queue.maxsize,
            self.max_documents,
            extra={
                "worker_id": self.worker_id,
                "pipelines": list(self.settings.pipeline_ids),
                "gateway": self.settings.gateway,
                "batch_size": self.batch_size,
                "queue_maxsize": self.queue.maxsize,
                "max_documents": self.max_documents,
                "flushes_in_flight": self.max_in_flight,
            },
        )
        self._tasks.append(asyncio.create_task(self.consumer.run(), name="embed-consumer"))
        self._tasks.append(asyncio.create_task(self.writer.run(), name="vector-writer"))
        if self.settings.all_pipelines:
            self._tasks.append(asyncio.create_task(self._follow_pipelines(), name="pipelines"))
        else:
            for pipeline_id in self.settings.pipeline_ids:
                self._add(pipeline_id)

    def _add(self, pipeline_id: str) -> None:
        worker = PipelineWorker(
            Claim(
                pipeline_id=pipeline_id,
                worker_id=self.worker_id,
                from_stage=self.settings.from_stage,
                claim_stage=self.settings.claim_stage,
                lease_seconds=self.settings.lease_seconds,
            ),
            self.gateway,
            self.queue,
            max_documents=self.max_documents,
            chunk_budget=self.chunk_budget,
            read_concurrency=self.settings.read_concurrency,
            read_documents=self.settings.read_documents,
            backoff=self.backoff,
        )
        self.pipelines[pipeline_id] = worker
        worker.start()

    async def _follow_pipelines(self) -> None:
        """EMBEDDER_WORKER_PIPELINES=*: work every pipeline (but those of
        EMBEDDER_WORKER_EXCLUDE_PIPELINES), re-listed periodically."""
        while not self._draining:
            try:
                listed = {p.id for p in await self.gateway.pipelines.list() if self.settings.works(p.id)}
            except ServiceError as error:
                log.warning(
                    "ListPipelines failed (%s); retrying", error.message, extra={"error": error.message}
                )
                await asyncio.sleep(min(5.0, self.settings.refresh_seconds))
                continue
            for pipeline_id in sorted(listed - self.pipelines.keys()):
                log.info("working a new pipeline: %s", pipeline_id, extra={"pipeline_id": pipeline_id})
                self._add(pipeline_id)
            for pipeline_id in sorted(self.pipelines.keys() - listed):
                log.info(
                    "pipeline %s gone; stopping its worker", pipeline_id, extra={"pipeline_id": pipeline_id}
                )
                await self.pipelines.pop(pipeline_id).close("the pipeline was deleted")
            await asyncio.sleep(self.settings.refresh_seconds)

    @property
    def held(self) -> int:
        """Documents held now, over every pipeline."""
        return sum(len(p.held) for p in self.pipelines.values())

    async def drain(self, timeout: float | None = None) -> None:
        """Stop claiming, release unread documents, finish the others for up to ``timeout``
        seconds (``EMBEDDER_WORKER_DRAIN_SECONDS``), release the rest, stop everything."""
        if self._draining:
            return
        self._draining = True
        timeout = self.settings.drain_seconds if timeout is None else timeout
        log.info(
            "worker draining: %d documents held", self.held, extra={"held": self.held, "timeout": timeout}
        )
        for task in self._tasks[2:]:
            task.cancel()
        for pipeline in self.pipelines.values():
            pipeline.stop_claiming()
        await asyncio.gather(*(p.release_unread(SHUTDOWN_REASON) for p in self.pipelines.values()))
        if self.pipelines and timeout > 0:
            waiting = asyncio.gather(*(p.wait_idle() for p in self.pipelines.values()))
            try:
                await asyncio.wait_for(waiting, timeout)
            except TimeoutError:
                log.info(
                    "drain timeout: releasing the %d documents still held",
                    self.held,
                    extra={"held": self.held},
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(p.close(SHUTDOWN_REASON) for p in self.pipelines.values()))
        log.info("worker stopped", extra={"worker_id": self.worker_id})
