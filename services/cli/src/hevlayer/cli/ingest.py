"""``hevlayer add``: the Object Lane on the client side.

1. Enumerate the files under the given paths; detect each one's kind and
   content hash (SHA-256 of the bytes, plus the producer's kind and version).
2. Record them as durable tasks: their ids (absolute paths) go through
   ``EnqueueDocuments`` into stage ``extract`` with ``skip_unchanged``, so an
   unchanged file is not queued again.
3. Extract workers (asyncio tasks of this process) claim ids from ``extract``
   into ``extracting`` under leases (``ClaimDocuments``), read the file, run
   the producer of its kind and stage the chunks (``StageDocuments``), which
   makes the document ``pending`` for the embedder; a file that cannot be read
   is moved to ``failed`` with the reason. A crashed ``add`` loses nothing: its
   leases expire and the next ``add`` claims the ids again.
4. Documents under the given directories whose files are gone are deleted
   (``ListDocuments`` against the tree, then ``DeleteDocuments``): their
   state, chunks and vectors.
5. Progress per stage comes from ``WatchPipelineStatus``; with ``wait`` the
   run ends when the pipeline has nothing left in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.cli.resilience import MAX_BACKOFF, retry_seconds
from hevlayer.client import Claim, Client, Lease, LeaseRef
from hevlayer.client.errors import NotFound, ServiceError, Unavailable
from hevlayer.ingest.files import (
    DEFAULT_MAX_FILE_BYTES,
    FileEntry,
    Root,
    Skipped,
    display_name,
    examine,
    walk,
)
from hevlayer.ingest.producers import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    ProducerError,
    Source,
    content_hash,
    detect_kind,
    select_producer,
    unsupported_reason,
)

EXTRACT_STAGE = "extract"
EXTRACTING_STAGE = "extracting"
PENDING_STAGE = "pending"
INDEXED_STAGE = "indexed"
FAILED_STAGE = "failed"
TERMINAL_STAGES = frozenset({INDEXED_STAGE, FAILED_STAGE})
MAX_REASON_CHARS = 1000
_EXAMINE_BATCH = 64
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class AddOptions:
    """How ``add`` runs."""

    workers: int = 4
    """Extract workers (asyncio tasks; the producers run in threads)."""
    claim_limit: int = 16
    """Documents one claim takes."""
    lease_seconds: int = 300
    """Lease of a claimed document (heartbeated while it is extracted)."""
    wait: bool = True
    """Wait until the pipeline has nothing in flight (embedded and indexed)."""
    wait_timeout: float | None = None
    """Give up waiting after this many seconds (None: wait as long as it takes)."""
    delete_missing: bool = True
    """Delete the documents of files gone from the given directories."""
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    budget: Budget = DEFAULT_BUDGET
    enqueue_batch: int = 500
    stall_seconds: float = 30.0
    """Say so when pending documents are not picked up for this long."""
    poll_seconds: float = 0.5
    """How often idle workers claim again."""
    queue_backend: pipeline_pb2.QueueBackend.ValueType = pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED
    """Queue backend of the pipeline when ``add`` creates it (unspecified: the server's default)."""


@dataclass(frozen=True)
class Failure:
    """A document that could not be processed."""

    path: str
    reason: str
    stage: str
    """Where it failed: ``extract`` (this process) or the stage the pipeline reports."""


@dataclass
class Progress:
    """What a reporter shows; every count is of documents unless it says files or chunks."""

    files: int = 0
    """Files enumerated so far."""
    files_done: bool = False
    """Enumeration has finished (``files`` is the total)."""
    total: int = 0
    """Documents this run waits for: in flight before it started, plus the ones it queued."""
    extracted: int = 0
    embedded: int = 0
    """Documents past ``pending`` (claimed by an embedder, or done)."""
    indexed: int = 0
    """Documents done: indexed (or failed)."""
    failed: int = 0
    chunks: int = 0
    """Chunks staged by this run."""
    counts: dict[str, int] = field(default_factory=dict)
    """The pipeline's per-stage counts, as last reported."""


@dataclass
class AddSummary:
    """The outcome of ``add``."""

    pipeline: str
    created_pipeline: bool = False
    files: int = 0
    supported: int = 0
    unchanged: int = 0
    enqueued: int = 0
    extracted: int = 0
    chunks: int = 0
    deleted: int = 0
    indexed: int = 0
    """Documents under the given paths that are indexed when ``add`` returns."""
    outstanding: int = 0
    """Documents under the given paths still in flight when ``add`` returns (0 after a complete wait)."""
    stages: dict[str, int] = field(default_factory=dict)
    """Documents under the given paths per stage, when ``add`` returns."""
    waited: bool = False
    timed_out: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    elapsed: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def files_per_second(self) -> float:
        return self.extracted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.elapsed if self.elapsed > 0 else 0.0


class Reporter(Protocol):
    """Where ``add`` reports progress (a rich display on a terminal, plain lines otherwise)."""

    def progress(self, progress: Progress) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


def outstanding(counts: dict[str, int]) -> int:
    """Documents in flight: every stage but ``indexed`` and ``failed``."""
    return sum(n for stage, n in counts.items() if stage not in TERMINAL_STAGES)


def worker_id(number: int) -> str:
    return f"hevlayer-cli-{socket.gethostname()[:64]}-{os.getpid()}-{number}"


async def ensure_pipeline(
    gateway: Client,
    pipeline_id: str,
    queue_backend: pipeline_pb2.QueueBackend.ValueType = pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED,
) -> bool:
    """Create the pipeline if it does not exist; whether it was created."""
    try:
        await gateway.pipelines.get(pipeline_id)
        return False
    except NotFound:
        pass
    try:
        await gateway.pipelines.create(pipeline_pb2.Pipeline(id=pipeline_id, queue_backend=queue_backend))
    except ServiceError as error:
        if error.reason == "ALREADY_EXISTS":
            return False
        raise
    return True


def to_document(document_id: str, chunks: Sequence[Chunk], hash_value: str) -> document_pb2.Document:
    """The Document proto of a producer's chunks."""
    document = document_pb2.Document(id=document_id, content_hash=hash_value)
    for chunk in chunks:
        proto = document.chunks.add(id=chunk.id, text=chunk.text)
        proto.metadata.update(chunk.metadata)
    return document


@dataclass(frozen=True)
class Extraction:
    """The result of reading and chunking one claimed document."""

    document_id: str
    document: document_pb2.Document | None = None
    reason: str = ""
    missing: bool = False
    kind: str = ""


def extract(
    document_id: str, roots: Sequence[Root], budget: Budget, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Extraction:
    """Read the file behind ``document_id`` and run its producer (blocking; run it in a thread)."""
    path = Path(document_id)
    try:
        if path.stat().st_size > max_bytes:
            return Extraction(document_id, reason=f"larger than {max_bytes} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        return Extraction(document_id, missing=True)
    except OSError as exc:
        return Extraction(document_id, reason=f"unreadable: {exc.strerror or exc}")
    name = display_name(path, roots)
    kind = detect_kind(name, data[:8192])
    if kind is None:
        return Extraction(document_id, reason=unsupported_reason(name, data[:8192]))
    producer = select_producer(kind)
    try:
        chunks = producer.produce(Source(document_id, name, data), budget)
    except ProducerError as exc:
        return Extraction(document_id, reason=str(exc), kind=kind)
    except Exception as exc:  # a producer bug must not stop the run; the file is reported
        return Extraction(
            document_id, reason=f"{kind} producer failed: {type(exc).__name__}: {exc}", kind=kind
        )
    document = to_document(document_id, chunks, content_hash(data, producer))
    return Extraction(document_id, document=document, kind=kind)


class Ingest:
    """One ``add`` run."""

    def __init__(
        self,
        gateway: Client,
        pipeline_id: str,
        paths: Sequence[str | os.PathLike[str]],
        reporter: Reporter,
        options: AddOptions = AddOptions(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.pipeline_id = pipeline_id
        self.roots = [Root.of(p) for p in paths]
        self.reporter = reporter
        self.options = options
        self.clock = clock
        self.summary = AddSummary(pipeline_id)
        self.progress = Progress()
        self._present: set[str] = set()
        self._sent = 0
        self._enqueued: int | None = None
        self._before = 0
        self._counts: dict[str, int] = {}
        self._counts_changed = asyncio.Event()
        self._extract_failures: dict[str, Failure] = {}
        self._in_flight = 0
        self._unavailable_since: float | None = None
        """When the extract workers' calls started failing UNAVAILABLE (None: they answer)."""

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> AddSummary:
        started = self.clock()
        self.summary.created_pipeline = await ensure_pipeline(
            self.gateway, self.pipeline_id, self.options.queue_backend
        )
        if self.summary.created_pipeline:
            self.reporter.note(f"created pipeline {self.pipeline_id!r}")
        first = await self.gateway.pipelines.status(self.pipeline_id)
        self._set_counts(dict(first.counts))
        self._before = outstanding(self._counts)
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(stop))
        workers = [asyncio.create_task(self._worker(n, stop)) for n in range(self.options.workers)]
        try:
            response = await self.gateway.staging.enqueue(
                self.pipeline_id, self._batches(), stage=EXTRACT_STAGE, skip_unchanged=True
            )
            self._enqueued = int(response.enqueued)
            self.summary.enqueued = int(response.enqueued)
            self.summary.unchanged = int(response.unchanged)
            self._publish()
            if self.options.delete_missing:
                self.summary.deleted = await self._delete_missing()
            await self._finish(stop, workers, started)
        finally:
            stop.set()
            for task in [watcher, *workers]:
                task.cancel()
            results = await asyncio.gather(watcher, *workers, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    raise result
        self.summary.elapsed = self.clock() - started
        await self._collect_states()
        self._publish()
        self.reporter.close()
        return self.summary

    async def _finish(self, stop: asyncio.Event, workers: list[asyncio.Task[None]], started: float) -> None:
        """Wait until extraction (and, with ``wait``, indexing) is done, a worker fails, or time is up."""
        deadline = None if self.options.wait_timeout is None else started + self.options.wait_timeout
        last_change = self.clock()
        last_indexed = -1
        warned = False
        while True:
            for task in workers:
                error = task.exception() if task.done() else None
                if error is not None:
                    raise error
            if await self._done():
                self.summary.waited = self.options.wait
                return
            now = self.clock()
            if deadline is not None and now >= deadline:
                self.summary.timed_out = True
                self.reporter.note(
                    f"stopped waiting after {self.options.wait_timeout:.0f} s; "
                    f"{outstanding(self._counts)} documents are still in flight (they carry on)"
                )
                return
            if self.progress.indexed != last_indexed or self._in_flight:
                last_indexed = self.progress.indexed
                last_change = now
            elif (
                self.options.wait
                and not warned
                and self._counts.get(PENDING_STAGE, 0) > 0
                and now - last_change > self.options.stall_seconds
            ):
                warned = True
                self.reporter.note(
                    f"{self._counts.get(PENDING_STAGE, 0)} documents are pending and none has been "
                    f"embedded for {self.options.stall_seconds:.0f} s: is an embedder worker running "
                    f"for pipeline {self.pipeline_id!r}?"
                )
            self._counts_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._counts_changed.wait(), timeout=1.0)

    async def _done(self) -> bool:
        """Extraction finished (and with ``wait``, nothing in flight), confirmed by a fresh status read."""
        if self._enqueued is None or self._in_flight:
            return False
        waiting = (
            outstanding(self._counts)
            if self.options.wait
            else self._counts.get(EXTRACT_STAGE, 0) + self._counts.get(EXTRACTING_STAGE, 0)
        )
        if waiting:
            return False
        status = await self.gateway.pipelines.status(self.pipeline_id)
        self._set_counts(dict(status.counts))
        if self.options.wait:
            return outstanding(self._counts) == 0
        return self._counts.get(EXTRACT_STAGE, 0) + self._counts.get(EXTRACTING_STAGE, 0) == 0

    # -- enumeration ------------------------------------------------------------------------------

    async def _batches(self) -> AsyncIterator[list[tuple[str, str]]]:
        """``(document id, content hash)`` batches of the supported files, as they are examined."""
        paths: list[Path | Skipped] = await asyncio.to_thread(
            lambda: list(
                walk(self.roots, include_hidden=self.options.include_hidden, exclude=self.options.exclude)
            )
        )
        batch: list[tuple[str, str]] = []
        for offset in range(0, len(paths), _EXAMINE_BATCH):
            items = paths[offset : offset + _EXAMINE_BATCH]
            examined = await asyncio.to_thread(self._examine_all, items)
            for item in examined:
                self.summary.files += 1
                if isinstance(item, Skipped):
                    self.summary.skipped.append(item)
                    continue
                self.summary.supported += 1
                self.summary.by_kind[item.kind] = self.summary.by_kind.get(item.kind, 0) + 1
                batch.append((item.document_id, item.content_hash))
            self.progress.files = self.summary.files
            if len(batch) >= self.options.enqueue_batch:
                self._sent += len(batch)
                yield batch
                batch = []
            self._publish()
        if batch:
            self._sent += len(batch)
            yield batch
        self.progress.files_done = True
        self._publish()

    def _examine_all(self, items: Sequence[Path | Skipped]) -> list[FileEntry | Skipped]:
        out: list[FileEntry | Skipped] = []
        for item in items:
            if isinstance(item, Skipped):
                out.append(item)
                continue
            self._present.add(item.as_posix())
            out.append(examine(item, self.roots, max_bytes=self.options.max_file_bytes))
        return out

    async def _delete_missing(self) -> int:
        """Delete the documents under the given paths whose files are gone."""
        gone: list[str] = []
        for root in self.roots:
            if root.is_dir:
                async for document in self.gateway.staging.list_documents(
                    self.pipeline_id, id_prefix=root.id_prefix
                ):
                    if document.document_id not in self._present:
                        gone.append(document.document_id)
            elif not root.path.exists():
                with contextlib.suppress(NotFound):
                    await self.gateway.staging.get_document(self.pipeline_id, root.id_prefix)
                    gone.append(root.id_prefix)
        deleted = 0
        unique = sorted(set(gone))
        for offset in range(0, len(unique), _DELETE_BATCH):
            deleted += await self.gateway.staging.delete_documents(
                self.pipeline_id, unique[offset : offset + _DELETE_BATCH]
            )
        if deleted:
            self.reporter.note(f"deleted {deleted} documents whose files are gone")
        return deleted

    # -- extraction -------------------------------------------------------------------------------

    async def _worker(self, number: int, stop: asyncio.Event) -> None:
        worker = worker_id(number)
        idle = self.options.poll_seconds / 4
        while not stop.is_set():
            try:
                leases = await self.gateway.leases.claim(self._claim(worker), self.options.claim_limit)
            except Unavailable as error:
                await self._ride_out(error, stop)
                continue
            self._unavailable_since = None
            if not leases:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle)
                idle = min(self.options.poll_seconds, idle * 2)
                continue
            idle = self.options.poll_seconds / 4
            self._in_flight += len(leases)
            try:
                await self._process(worker, leases)
            finally:
                self._in_flight -= len(leases)
                self._publish()

    async def _ride_out(self, error: Unavailable, stop: asyncio.Event | None) -> None:
        """Back off after UNAVAILABLE (a gateway restarting under ``hevlayer up``); re-raise it
        once the gateway has been unavailable for ``HEVLAYER_RETRY_SECONDS``."""
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
        if now - self._unavailable_since > retry_seconds():
            raise error
        pause = min(MAX_BACKOFF, error.retry_after or MAX_BACKOFF / 5)
        if stop is None:
            await asyncio.sleep(pause)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)

    def _claim(self, worker: str) -> Claim:
        return Claim(
            self.pipeline_id,
            worker,
            EXTRACT_STAGE,
            EXTRACTING_STAGE,
            lease_seconds=self.options.lease_seconds,
        )

    async def _process(self, worker: str, leases: Sequence[Lease]) -> None:
        held = {lease.document_id: lease.fencing_token for lease in leases}
        try:
            await self._extract_and_stage(worker, held)
        except Unavailable as error:
            # The gateway (or what it needs) went away mid-call: once it answers again, hand the
            # documents back to ``extract`` (fenced by their tokens: a no-op for any the lost call
            # did stage) and let the workers claim them again.
            await self._ride_out(error, None)
            with contextlib.suppress(ServiceError):
                await self.gateway.leases.transition_claimed(
                    self._claim(worker),
                    [LeaseRef(d, t) for d, t in held.items()],
                    EXTRACT_STAGE,
                    reason="the gateway was unavailable during staging",
                )
        except asyncio.CancelledError:
            # Interrupted: hand the documents back to ``extract`` now rather than when the leases expire.
            with contextlib.suppress(ServiceError, asyncio.CancelledError):
                await asyncio.wait_for(
                    self.gateway.leases.transition_claimed(
                        self._claim(worker),
                        [LeaseRef(d, t) for d, t in held.items()],
                        EXTRACT_STAGE,
                        reason="add was interrupted",
                    ),
                    timeout=5,
                )
            raise

    async def _extract_and_stage(self, worker: str, held: dict[str, int]) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(worker, held))
        try:
            extractions = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        extract, doc, self.roots, self.options.budget, self.options.max_file_bytes
                    )
                    for doc in held
                )
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        missing = [e.document_id for e in extractions if e.missing]
        failed = [(e.document_id, e.reason) for e in extractions if not e.missing and e.document is None]
        documents = [e.document for e in extractions if e.document is not None]
        if documents:
            results = await self.gateway.staging.stage(
                self.pipeline_id, documents, leases=[LeaseRef(d.id, held[d.id]) for d in documents]
            )
            for result, document in zip(results, documents, strict=False):
                if result.outcome == staging_pb2.STAGE_OUTCOME_REJECTED:
                    failed.append((result.document_id, f"rejected: {result.error.message}"))
                else:
                    self.summary.extracted += 1
                    self.summary.chunks += len(document.chunks)
            self.progress.chunks = self.summary.chunks
        for document_id, reason in failed:
            reason = reason[:MAX_REASON_CHARS] or "extraction failed"
            self._extract_failures[document_id] = Failure(document_id, reason, EXTRACT_STAGE)
            await self.gateway.leases.transition_claimed(
                self._claim(worker), [LeaseRef(document_id, held[document_id])], FAILED_STAGE, reason=reason
            )
        if missing:
            self.summary.deleted += await self.gateway.staging.delete_documents(self.pipeline_id, missing)

    async def _heartbeat(self, worker: str, held: dict[str, int]) -> None:
        interval = max(1.0, self.options.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ServiceError):
                await self.gateway.leases.heartbeat(
                    self._claim(worker), [LeaseRef(d, t) for d, t in held.items()]
                )

    # -- status -----------------------------------------------------------------------------------

    async def _watch(self, stop: asyncio.Event) -> None:
        """Follow the pipeline's status: WatchPipelineStatus, or polling when the stream fails."""
        while not stop.is_set():
            try:
                async for status in self.gateway.pipelines.watch_status(
                    self.pipeline_id, min_interval_ms=200
                ):
                    self._set_counts(dict(status.counts))
                    if stop.is_set():
                        return
            except ServiceError:
                pass
            with contextlib.suppress(ServiceError):
                status = await self.gateway.pipelines.status(self.pipeline_id)
                self._set_counts(dict(status.counts))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.poll_seconds)

    def _set_counts(self, counts: dict[str, int]) -> None:
        self._counts = {stage: int(n) for stage, n in counts.items()}
        self._counts_changed.set()
        self._publish()

    def _publish(self) -> None:
        """Recompute the stage bars from the counts and the local figures; tell the reporter."""
        counts = self._counts
        queued = self._enqueued if self._enqueued is not None else self._sent
        total = self._before + queued
        in_flight = outstanding(counts)
        extracting = counts.get(EXTRACT_STAGE, 0) + counts.get(EXTRACTING_STAGE, 0)
        before_embedder = extracting + counts.get(PENDING_STAGE, 0)
        progress = self.progress
        progress.total = total
        progress.extracted = max(0, min(total, total - extracting))
        progress.embedded = max(0, min(total, total - before_embedder))
        progress.indexed = max(0, min(progress.embedded, total - in_flight))
        progress.failed = len(self._extract_failures)
        progress.counts = dict(counts)
        progress.chunks = self.summary.chunks
        self.reporter.progress(progress)

    async def _collect_states(self) -> None:
        """Documents under the given paths per stage; this run's extraction failures and the
        failed documents the pipeline reports under the paths."""
        failures = dict(self._extract_failures)
        stages: dict[str, int] = {}
        seen: set[str] = set()
        for root in self.roots:
            async for document in self.gateway.staging.list_documents(
                self.pipeline_id, id_prefix=root.id_prefix
            ):
                if document.document_id in seen:
                    continue
                seen.add(document.document_id)
                stages[document.stage] = stages.get(document.stage, 0) + 1
                if document.stage == FAILED_STAGE and document.document_id not in failures:
                    failures[document.document_id] = Failure(
                        document.document_id, document.last_error or "failed", "pipeline"
                    )
        self.summary.stages = stages
        self.summary.indexed = stages.get(INDEXED_STAGE, 0)
        self.summary.outstanding = outstanding(stages)
        self.summary.failures = sorted(failures.values(), key=lambda f: f.path)
