"""``hevlayer add``: the Object Lane on the client side.

1. Enumerate the files under the given paths, and the objects under the given
   ``s3://bucket/prefix`` URIs (or the one object ``s3://bucket/key`` names;
   aiobotocore with the ``EXTRACTOR_S3_*`` endpoint and credentials the extract
   workers use); detect each one's kind and content hash (SHA-256 of the bytes,
   plus the producer's kind and version: the hash the extract loop stages, so
   an unchanged object is skipped like an unchanged file).
2. Record them as durable tasks: their ids (absolute paths) go through
   ``EnqueueDocuments`` into stage ``extract`` with ``skip_unchanged``, so an
   unchanged file is not queued again.
3. Extract workers claim ids from ``extract`` into ``extracting`` under leases
   (``ClaimDocuments``), read the file, run the producer of its kind (or take
   its chunks from the Artifact Cache) and stage the chunks
   (``StageDocuments``), which makes the document ``pending`` for the embedder;
   a file that cannot be read is moved to ``failed`` with the reason. The
   workers are :class:`hevlayer.ingest.extract_loop.ExtractLoop` tasks of this
   process, or, with ``remote_workers``, running extract workers
   (``hevlayer-extractor``) and this process only enqueues and waits. A crashed
   ``add`` loses nothing: its leases expire and the next ``add`` claims the ids
   again.
4. Documents under the given directories (and S3 prefixes) whose files (objects)
   are gone are deleted (``ListDocuments`` against the tree, then
   ``DeleteDocuments``): their state, chunks and vectors.
5. Progress per stage comes from ``WatchPipelineStatus``; with ``wait`` the
   run ends when the pipeline has nothing left in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.cli.resilience import retry_seconds
from hevlayer.client import Client
from hevlayer.client.errors import NotFound, ServiceError
from hevlayer.client.staging import EnqueueEntry
from hevlayer.ingest.artifacts import ArtifactCache, LocalArtifactCache
from hevlayer.ingest.extract_loop import (
    EXTRACT_STAGE,
    EXTRACTING_STAGE,
    FAILED_STAGE,
    Extraction,
    ExtractLoop,
    ExtractObserver,
    LoopOptions,
    extract_object,
    to_document,
)
from hevlayer.ingest.files import (
    DEFAULT_MAX_FILE_BYTES,
    FileEntry,
    Root,
    Skipped,
    examine,
    walk,
)
from hevlayer.ingest.producers import (
    DEFAULT_BUDGET,
    Budget,
    content_hash,
    detect_kind,
    select_producer,
    unsupported_reason,
)
from hevlayer.ingest.s3 import S3Connection, open_s3_client
from hevlayer.ingest.sources import LocalSource, ObjectData, ObjectMissing, S3Source, SourceError, Sources

__all__ = [
    "AddOptions",
    "AddSummary",
    "Extraction",
    "Failure",
    "Ingest",
    "Progress",
    "Reporter",
    "ensure_pipeline",
    "examine_object",
    "extract",
    "is_s3_uri",
    "outstanding",
    "s3_connection_from_env",
    "to_document",
]

PENDING_STAGE = "pending"
INDEXED_STAGE = "indexed"
TERMINAL_STAGES = frozenset({INDEXED_STAGE, FAILED_STAGE})
_EXAMINE_BATCH = 64
_DELETE_BATCH = 1000
_HEAD_BYTES = 8192
_S3_READS = 8
"""S3 objects read at once while enumerating."""


def is_s3_uri(path: str | os.PathLike[str]) -> bool:
    """Whether an ``add`` argument names S3 (``s3://bucket/prefix`` or ``s3://bucket/key``)."""
    return str(path).startswith("s3://")


def s3_connection_from_env(environ: Mapping[str, str] = os.environ) -> S3Connection:
    """The S3 endpoint and credentials of ``add s3://...``: the variables the extract worker reads
    (``EXTRACTOR_S3_ENDPOINT_URL``, ``EXTRACTOR_S3_ACCESS_KEY_ID``,
    ``EXTRACTOR_S3_SECRET_ACCESS_KEY``, ``EXTRACTOR_S3_REGION``); unset ones fall back to
    botocore's defaults (AWS, the default credential chain)."""
    return S3Connection(
        environ.get("EXTRACTOR_S3_ENDPOINT_URL", ""),
        environ.get("EXTRACTOR_S3_ACCESS_KEY_ID", ""),
        environ.get("EXTRACTOR_S3_SECRET_ACCESS_KEY", ""),
        environ.get("EXTRACTOR_S3_REGION", "") or "us-east-1",
    )


def examine_object(obj: ObjectData) -> tuple[str, str] | Skipped:
    """An object's kind and content hash (what :func:`hevlayer.ingest.files.examine` gives a
    file, and the hash the extract loop stages), or why it is skipped."""
    head = obj.data[:_HEAD_BYTES]
    kind = detect_kind(obj.name, head)
    if kind is None:
        return Skipped(obj.document_id, unsupported_reason(obj.name, head))
    return kind, content_hash(obj.data, select_producer(kind))


@dataclass(frozen=True)
class AddOptions:
    """How ``add`` runs."""

    workers: int = 4
    """Extract workers (asyncio tasks; the producers run in threads)."""
    remote_workers: bool = False
    """Run no extract workers here: enumerate, enqueue and wait while running extract workers
    (``hevlayer-extractor``) extract."""
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
    artifact_dir: str | None = None
    """Directory of the Artifact Cache the in-process workers use (None: no cache)."""
    artifact_bytes: int = 1 << 30
    """Byte budget of that cache (least recently used entries are evicted beyond it)."""
    s3: S3Connection | None = None
    """The S3 endpoint of ``s3://`` arguments (None: :func:`s3_connection_from_env`)."""
    priority: int = 0
    """Claim priority of every id this run enqueues (``EnqueuedDocument.priority``, an int32:
    lower is claimed first, then oldest first; 0 is the default)."""


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
    conversions: int = 0
    """Producer runs of this process's extract workers."""
    cache_hits: int = 0
    """Objects whose chunks came from the Artifact Cache instead."""

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


def extract(
    document_id: str, roots: Sequence[Root], budget: Budget, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Extraction:
    """Read the file behind ``document_id`` and run its producer (blocking; no cache)."""
    try:
        obj = LocalSource(roots).read_blocking(document_id, max_bytes)
    except ObjectMissing:
        return Extraction(document_id, missing=True)
    except SourceError as exc:
        return Extraction(document_id, reason=exc.reason)
    return extract_object(obj, budget)


class _Observer(ExtractObserver):
    """The in-process loop's events, into the run's summary and progress."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def finished(self, pipeline_id: str, count: int) -> None:
        self.ingest._publish()

    def staged(self, pipeline_id: str, document_id: str, chunks: int) -> None:
        self.ingest.summary.extracted += 1
        self.ingest.summary.chunks += chunks
        self.ingest.progress.chunks = self.ingest.summary.chunks

    def failed(self, pipeline_id: str, document_id: str, reason: str) -> None:
        self.ingest._extract_failures[document_id] = Failure(document_id, reason, EXTRACT_STAGE)

    def deleted(self, pipeline_id: str, count: int) -> None:
        self.ingest.summary.deleted += count


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
        cache: ArtifactCache | None = None,
    ) -> None:
        self.gateway = gateway
        self.pipeline_id = pipeline_id
        self.roots = [Root.of(p) for p in paths if not is_s3_uri(p)]
        self.s3_uris = [str(p) for p in paths if is_s3_uri(p)]
        """``s3://`` arguments: prefixes (or single objects) enumerated with :class:`S3Source`."""
        self._s3: S3Source | None = None
        self._s3_unlisted: set[str] = set()
        """``s3://`` arguments whose listing failed: nothing under them is deleted."""
        self._sources = Sources([LocalSource(self.roots)])
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
        self.loop = ExtractLoop(
            gateway,
            pipeline_id,
            self._sources,
            LoopOptions(
                claim_limit=options.claim_limit,
                lease_seconds=options.lease_seconds,
                poll_seconds=options.poll_seconds,
                budget=options.budget,
                max_bytes=options.max_file_bytes,
                retry_seconds=retry_seconds(),
                interrupted_reason="add was interrupted",
                worker_prefix=f"hevlayer-cli-{socket.gethostname()[:64]}-{os.getpid()}",
            ),
            cache=cache
            if cache is not None or options.artifact_dir is None
            else LocalArtifactCache(options.artifact_dir, options.artifact_bytes),
            observer=_Observer(self),
        )
        """The in-process extract workers (none run with ``remote_workers``)."""

    @property
    def _in_flight(self) -> int:
        return self.loop.in_flight

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> AddSummary:
        if not self.s3_uris:
            return await self._run()
        async with contextlib.AsyncExitStack() as stack:
            client = await open_s3_client(self.options.s3 or s3_connection_from_env(), stack)
            self._s3 = S3Source(client)
            self._sources.sources.append(self._s3)
            return await self._run()

    async def _run(self) -> AddSummary:
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
        workers = [] if self.options.remote_workers else self.loop.start(self.options.workers, stop)
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
        self.summary.conversions = self.loop.stats.conversions
        self.summary.cache_hits = self.loop.stats.cache_hits
        await self._collect_states()
        self._publish()
        self.reporter.close()
        return self.summary

    async def _finish(self, stop: asyncio.Event, workers: list[asyncio.Task[None]], started: float) -> None:
        """Wait until extraction (and, with ``wait``, indexing) is done, a worker fails, or time is up."""
        deadline = None if self.options.wait_timeout is None else started + self.options.wait_timeout
        last_change = self.clock()
        last_indexed = (-1, -1)
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
            moved = (self.progress.indexed, self.progress.extracted)
            if moved != last_indexed or self._in_flight:
                last_indexed = moved
                last_change = now
            elif (
                self.options.remote_workers
                and not warned
                and self._counts.get(EXTRACT_STAGE, 0) > 0
                and now - last_change > self.options.stall_seconds
            ):
                warned = True
                self.reporter.note(
                    f"{self._counts.get(EXTRACT_STAGE, 0)} documents wait in extract and none has been "
                    f"extracted for {self.options.stall_seconds:.0f} s: is an extract worker "
                    f"(hevlayer-extractor) running for pipeline {self.pipeline_id!r}?"
                )
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

    async def _batches(self) -> AsyncIterator[list[EnqueueEntry]]:
        """``(document id, content hash, priority)`` batches of the supported files, as they are
        examined."""
        paths: list[Path | Skipped] = await asyncio.to_thread(
            lambda: list(
                walk(self.roots, include_hidden=self.options.include_hidden, exclude=self.options.exclude)
            )
        )
        batch: list[EnqueueEntry] = []
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
                batch.append((item.document_id, item.content_hash, self.options.priority))
            self.progress.files = self.summary.files
            if len(batch) >= self.options.enqueue_batch:
                self._sent += len(batch)
                yield batch
                batch = []
            self._publish()
        async for obj in self._s3_objects():
            self.summary.files += 1
            self.progress.files = self.summary.files
            if isinstance(obj, Skipped):
                self.summary.skipped.append(obj)
                continue
            document_id, kind, hash_value = obj
            self.summary.supported += 1
            self.summary.by_kind[kind] = self.summary.by_kind.get(kind, 0) + 1
            batch.append((document_id, hash_value, self.options.priority))
            if len(batch) >= self.options.enqueue_batch:
                self._sent += len(batch)
                yield batch
                batch = []
                self._publish()
        if batch or not self._sent:
            # an empty message when nothing was queued: the stream still names the pipeline
            # (a stream without messages is INVALID_ARGUMENT)
            self._sent += len(batch)
            yield batch
        self.progress.files_done = True
        self._publish()

    def _s3_members(self, uri: str, found: str) -> bool:
        """Whether the listed object ``found`` belongs to the argument ``uri``: the object
        itself, or one under the prefix (``s3://b/docs`` takes ``s3://b/docs/a.md`` but not
        ``s3://b/docs-old/a.md``)."""
        if uri.endswith("/") or uri.count("/") == 2:
            return True
        return found == uri or found.startswith(uri + "/")

    async def _s3_objects(self) -> AsyncIterator[tuple[str, str, str] | Skipped]:
        """``(document id, kind, content hash)`` of every object the ``s3://`` arguments name
        (read :data:`_S3_READS` at a time, each whole: the hash is of its bytes), or why one
        is skipped."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self._s3 is None:
            return
        s3 = self._s3
        for uri in self.s3_uris:
            listed: list[str] = []
            too_large: list[Skipped] = []
            try:
                async for found, size, _etag in s3.list_objects(uri):
                    if not self._s3_members(uri, found):
                        continue
                    self._present.add(found)
                    if size > self.options.max_file_bytes:
                        too_large.append(
                            Skipped(found, f"larger than {self.options.max_file_bytes} bytes ({size})")
                        )
                    else:
                        listed.append(found)
            except ClientError as exc:
                self._s3_unlisted.add(uri)
                code = exc.response.get("Error", {}).get("Code", "") or str(exc)
                yield Skipped(uri, f"S3 refused the listing: {code}")
                continue
            except (BotoCoreError, OSError, ValueError) as exc:
                self._s3_unlisted.add(uri)
                yield Skipped(uri, f"S3 listing failed: {exc}")
                continue
            for skipped in too_large:
                yield skipped
            if not listed and not too_large:
                yield Skipped(uri, "no S3 object under it")
                continue
            for offset in range(0, len(listed), _S3_READS):
                reads = await asyncio.gather(
                    *[s3.read(d, self.options.max_file_bytes) for d in listed[offset : offset + _S3_READS]],
                    return_exceptions=True,
                )
                for document_id, read in zip(listed[offset : offset + _S3_READS], reads, strict=True):
                    if isinstance(read, SourceError):
                        yield Skipped(document_id, read.reason)
                    elif isinstance(read, BaseException):
                        raise read
                    else:
                        examined = examine_object(read)
                        yield examined if isinstance(examined, Skipped) else (document_id, *examined)

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
        for uri in self.s3_uris:
            if uri in self._present or uri in self._s3_unlisted:  # one object, still there; or unknown
                continue
            prefix = uri if uri.endswith("/") or uri.count("/") == 2 else uri + "/"
            async for document in self.gateway.staging.list_documents(self.pipeline_id, id_prefix=prefix):
                if document.document_id not in self._present:
                    gone.append(document.document_id)
            if prefix != uri:  # the argument may also have named one object, now gone
                with contextlib.suppress(NotFound):
                    await self.gateway.staging.get_document(self.pipeline_id, uri)
                    gone.append(uri)
        deleted = 0
        unique = sorted(set(gone))
        for offset in range(0, len(unique), _DELETE_BATCH):
            deleted += await self.gateway.staging.delete_documents(
                self.pipeline_id, unique[offset : offset + _DELETE_BATCH]
            )
        if deleted:
            self.reporter.note(f"deleted {deleted} documents whose files are gone")
        return deleted

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
        prefixes = [(root.id_prefix, "") for root in self.roots] + [(uri, uri) for uri in self.s3_uris]
        for prefix, uri in prefixes:
            async for document in self.gateway.staging.list_documents(self.pipeline_id, id_prefix=prefix):
                if document.document_id in seen or (uri and not self._s3_members(uri, document.document_id)):
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
