"""The job runner: the Job Lane's engine, transport free.

A job is one directory tree (:class:`~hevlayer.summarizer.tree.DirTree`),
filled by SubmitJob batches while it is ``ENUMERATING``. When enumeration
completes its leaf directories go to the :class:`~hevlayer.summarizer.queue.Dispatcher`
(per-job depth heaps, round robin across jobs, one bounded ready queue) and
the job is ``RUNNING``. ``workers`` fold tasks take ready directories and
fold each one:

1. gather the children: sub-directories (their summaries) and files (their
   ``text`` excerpts), sorted by name;
2. key = :func:`~hevlayer.ingest.transform.cache_key` (model, prompt version,
   the children's digests); the Transformation Cache answers, or runs the
   provider once (single flight) inside the process-wide ``summary_gate``;
3. stage the summary through the :class:`~hevlayer.summarizer.staging.Stager`;
4. record it in the tree, which releases the parent once all its
   sub-directories are done, and tell the job's watchers.

A directory that fails (provider or staging error) counts in
``failed_directories``; its parent still folds, without it. The job ends
``SUCCEEDED`` when every directory is summarized, ``FAILED`` when some
failed, or ``CANCELLED``.

Jobs are held in memory and journaled (:mod:`hevlayer.summarizer.journal`,
when the runner has a journal): a restarted summarizer replays the journal,
so its jobs answer WatchJob and GetSummary again and a running job carries on
with the directories not finished yet; a finished directory is neither
folded nor staged again. Submitting the id of an ended job starts that job
anew (a new tree); every unchanged directory is then a cache hit (no provider
call) and is staged with ``skip_unchanged``, so the gateway keeps its document
and vectors.

Success hooks. A staged summary is embedded and written by the embedding
tail (an embedder worker and the gateway's WriteVectors), which moves its
document to stage ``indexed`` (or ``failed``) in the pipeline's durable state.
The claimer pushes each such change as it commits (``WatchDocuments``); the
completion tracker (:class:`~hevlayer.summarizer.completion.CompletionTracker`,
one watch per pipeline with jobs to settle, resumed from its cursor after a
lost connection, starting from a snapshot after a restart) runs the hook
:meth:`JobRunner._indexed`, which advances the job's ``indexed_directories`` /
``index_failed_directories`` and tells its watchers; ``WatchJob`` with
``until_indexed`` streams until every summary is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hevlayer.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from hevlayer.ingest.transform import CacheOutcome, TransformationCache, cache_key
from hevlayer.summarizer import metrics
from hevlayer.summarizer.completion import CompletionTracker
from hevlayer.summarizer.gates import Gate, summary_gate
from hevlayer.summarizer.journal import JobJournal, JournaledJob
from hevlayer.summarizer.providers import DIRECTORY_KIND, ChildInput, ProviderError, SummaryProvider
from hevlayer.summarizer.queue import Dispatcher
from hevlayer.summarizer.staging import (
    MAX_DOCUMENT_ID_BYTES,
    StagedSummary,
    StageError,
    Stager,
    TrackingStager,
    summary_document_id,
)
from hevlayer.summarizer.tree import (
    DirNode,
    DirState,
    DirTree,
    ObjectSpec,
    SummaryRecord,
    TreeError,
    check_directory_path,
)

log = logging.getLogger("hevlayer.summarizer.jobs")

INDEXED_STAGE = "indexed"
FAILED_STAGE = "failed"

MAX_JOB_ID_BYTES = 128
MAX_DOCUMENT_ID_FIELD_BYTES = 512
MAX_CONTENT_HASH_CHARS = 256
MAX_KIND_CHARS = 64


class JobState(enum.Enum):
    """The lifecycle of a job (JobState in the API)."""

    ENUMERATING = "enumerating"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobLimits:
    """Bounds of what SubmitJob accepts."""

    max_objects: int = 1_000_000
    max_text_bytes: int = 16384


@dataclass(frozen=True)
class SubmitBatch:
    """One SubmitJob message."""

    job_id: str
    pipeline_id: str
    objects: Sequence[ObjectSpec] = ()
    enumeration_complete: bool = False


@dataclass(frozen=True)
class JobSnapshot:
    """A job's state and counters at one moment."""

    job_id: str
    pipeline_id: str
    state: JobState
    objects: int
    directories: int
    summarized_directories: int
    failed_directories: int
    cache_hits: int
    create_time: datetime
    end_time: datetime | None
    indexed_directories: int = 0
    index_failed_directories: int = 0


@dataclass(frozen=True)
class JobEvent:
    """One WatchJob update: the job, and the directory just summarized if any."""

    job: JobSnapshot
    completed_path: str | None = None


@dataclass(frozen=True)
class DirectorySummary:
    """A summarized directory (DirectorySummary in the API)."""

    path: str
    depth: int
    text: str
    child_count: int
    cache_key: str
    model: str
    document_id: str


def check_job_id(job_id: str, field: str = "job_id") -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``job_id`` is 1 to 128 bytes without control characters."""
    if not job_id:
        raise InvalidArgument.field(field, "is required")
    if len(job_id.encode("utf-8", "surrogatepass")) > MAX_JOB_ID_BYTES:
        raise InvalidArgument.field(field, f"must be at most {MAX_JOB_ID_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in job_id):
        raise InvalidArgument.field(field, "must not contain control characters")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class Job:
    """One job's tree, state, counters and watchers."""

    def __init__(self, job_id: str, pipeline_id: str, now: datetime, tick: float) -> None:
        self.id = job_id
        self.pipeline_id = pipeline_id
        self.tree = DirTree()
        self.state = JobState.ENUMERATING
        self.cache_hits = 0
        self.create_time = now
        self.end_time: datetime | None = None
        self.touched = tick
        self.inflight: set[asyncio.Task[Any]] = set()
        self.watchers: set[asyncio.Queue[JobEvent | None]] = set()
        self.indexed: set[str] = set()
        """Summary documents the embedding tail indexed (the success hook's count)."""
        self.index_failed: set[str] = set()
        """Summary documents that failed in the embedding tail, or were deleted before indexed."""

    def staged(self) -> set[str]:
        """Document ids of the summaries staged so far."""
        return {n.summary.document_id for n in self.tree.dirs.values() if n.summary is not None}

    def unsettled(self) -> set[str]:
        """Staged summaries neither indexed nor failed yet."""
        return self.staged() - self.indexed - self.index_failed

    @property
    def ended(self) -> bool:
        """The job reached a final state."""
        return self.state.ended

    def snapshot(self) -> JobSnapshot:
        """The job now."""
        return JobSnapshot(
            job_id=self.id,
            pipeline_id=self.pipeline_id,
            state=self.state,
            objects=len(self.tree.files),
            directories=len(self.tree.dirs),
            summarized_directories=self.tree.summarized,
            failed_directories=self.tree.failed,
            cache_hits=self.cache_hits,
            create_time=self.create_time,
            end_time=self.end_time,
            indexed_directories=len(self.indexed),
            index_failed_directories=len(self.index_failed),
        )

    def emit(self, completed_path: str | None = None) -> None:
        """Tell every watcher about the job as it is now."""
        if not self.watchers:
            return
        event = JobEvent(self.snapshot(), completed_path)
        for queue in self.watchers:
            queue.put_nowait(event)

    def close_watchers(self) -> None:
        """End every watch stream (server shutdown)."""
        for queue in self.watchers:
            queue.put_nowait(None)


class JobRunner:
    """Holds the jobs and folds their directories.

    ``start`` launches the dispatcher, ``workers`` fold tasks and the
    retention sweeper; ``stop`` cancels them and every fold in flight.
    """

    def __init__(
        self,
        provider: SummaryProvider,
        cache: TransformationCache,
        stager: Stager,
        *,
        gate: Gate | None = None,
        workers: int = 8,
        limits: JobLimits | None = None,
        retention_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        journal: JobJournal | None = None,
        index_poll_seconds: float = 1.0,
    ) -> None:
        self.provider = provider
        self.cache = cache
        self.stager = stager
        self.gate = gate if gate is not None else summary_gate()
        self.workers = workers
        self.limits = limits or JobLimits()
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._dispatcher = Dispatcher(capacity=workers)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.journal = journal
        self.index_poll_seconds = index_poll_seconds
        self._tracker: CompletionTracker[Job] | None = (
            CompletionTracker(stager, self._jobs.values, self._indexed, retry_seconds=index_poll_seconds)
            if isinstance(stager, TrackingStager)
            else None
        )
        """Tracks summaries' indexing when the stager can (it stages into a gateway)."""
        self._journal_writer: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the journaled jobs; start the dispatcher, the fold workers, the retention
        sweeper and the completion tracker."""
        if self.journal is not None:
            for saved in await asyncio.to_thread(self.journal.load):
                self._restore(saved)
        if self.journal is not None:
            self._journal_writer = asyncio.create_task(self.journal.run(), name="summary-journal")
            self._tasks.append(self._journal_writer)
        if self._tracker is not None:
            self._tasks.append(asyncio.create_task(self._tracker.run(), name="summary-tracker"))
        self._tasks.append(asyncio.create_task(self._dispatcher.run(), name="summary-dispatcher"))
        for n in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"summary-worker-{n}"))
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="summary-sweeper"))

    def close_watchers(self) -> None:
        """End every WatchJob stream now (the server is stopping)."""
        self._closing = True
        for job in self._jobs.values():
            job.close_watchers()

    async def stop(self) -> None:
        """Stop folding: cancel the workers and every fold in flight; write the journal out."""
        self.close_watchers()
        tasks = [task for task in self._tasks if task is not self._journal_writer]
        for job in self._jobs.values():
            tasks.extend(job.inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer, self._journal_writer = self._journal_writer, None
        if writer is not None and self.journal is not None:
            if not writer.done():
                with contextlib.suppress(OSError):
                    await self.journal.flush()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        self._tasks.clear()

    # -- API ------------------------------------------------------------------------

    def submit(self, batch: SubmitBatch) -> JobSnapshot:
        """Apply one SubmitJob message: all of its objects or none."""
        check_job_id(batch.job_id)
        if not batch.pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        job = self._jobs.get(batch.job_id)
        if job is not None and job.ended and not job.watchers:
            # An ended job's id submitted again: the job starts anew with the new tree.
            self._forget(job)
            job = None
        if job is not None:
            if job.state is not JobState.ENUMERATING:
                raise AlreadyExists(
                    f"job {job.id!r} already exists and is {job.state.value}: its enumeration is "
                    "complete, so it takes no more objects",
                    metadata={"job_id": job.id},
                )
            if job.pipeline_id != batch.pipeline_id:
                raise InvalidArgument.field(
                    "pipeline_id",
                    f"job {job.id!r} belongs to pipeline {job.pipeline_id!r}, not {batch.pipeline_id!r}",
                )
        self._check_objects(batch, job)
        fresh = job is None
        if job is None:
            job = Job(batch.job_id, batch.pipeline_id, datetime.now(UTC), self._clock())
        try:
            job.tree.add(batch.objects)
        except TreeError as exc:
            raise InvalidArgument.field(f"objects[{exc.index}].{exc.attribute}", exc.description) from None
        if self.journal is not None:
            if fresh:
                self.journal.create(job.id, job.pipeline_id, job.create_time)
            self.journal.append_objects(job.id, list(batch.objects), batch.enumeration_complete)
        if fresh:
            self._jobs[job.id] = job
            metrics.JOBS.labels(job.state.value).inc()
            log.info("job created", extra={"job_id": job.id, "pipeline_id": job.pipeline_id})
        job.touched = self._clock()
        if batch.enumeration_complete:
            ready = job.tree.complete_enumeration()
            self._set_state(job, JobState.RUNNING)
            for node in ready:
                self._dispatcher.push(job.id, node.path, node.depth)
            log.info(
                "job enumerated",
                extra={"job_id": job.id, "objects": len(job.tree.files), "directories": len(job.tree.dirs)},
            )
        job.emit()
        return job.snapshot()

    async def flush(self) -> None:
        """Wait until the journal holds everything accepted so far (SubmitJob answers after it)."""
        if self.journal is not None and self._journal_writer is not None:
            await self.journal.flush()

    def get(self, job_id: str) -> JobSnapshot:
        """The job now; NOT_FOUND if unknown."""
        return self._job(job_id).snapshot()

    def cancel(self, job_id: str) -> JobSnapshot:
        """Cancel a job: drop its queued directories and cancel its folds in flight.
        Summaries already written stay. Cancelling an ended job changes nothing."""
        job = self._job(job_id)
        if job.ended:
            return job.snapshot()
        self._end(job, JobState.CANCELLED)
        if self.journal is not None:
            self.journal.record_cancelled(job.id)
        dropped = self._dispatcher.drop(job.id)
        for task in list(job.inflight):
            task.cancel()
        log.info("job cancelled", extra={"job_id": job.id, "dropped_directories": dropped})
        job.emit()
        return job.snapshot()

    def settled(self, job: JobSnapshot) -> bool:
        """Every summary of the (ended) job is indexed or failed in the embedding tail, or
        indexing is not tracked."""
        if self._tracker is None:
            return True
        return job.indexed_directories + job.index_failed_directories >= job.summarized_directories

    async def watch(self, job_id: str, *, until_indexed: bool = False) -> AsyncIterator[JobEvent]:
        """The job now, then each change, until it ends (or the server stops); with
        ``until_indexed``, until it ends and its summaries are settled."""
        job = self._job(job_id)
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        job.watchers.add(queue)

        def last(snapshot: JobSnapshot) -> bool:
            return snapshot.state.ended and (not until_indexed or self.settled(snapshot))

        try:
            first = job.snapshot()
            yield JobEvent(first)
            if last(first) or self._closing:
                return
            if until_indexed and self._tracker is not None:
                self._tracker.wake()
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
                if last(event.job):
                    return
        finally:
            job.watchers.discard(queue)

    def summary(self, job_id: str, path: str) -> DirectorySummary:
        """One directory's summary; NOT_FOUND or FAILED_PRECONDITION saying why not."""
        check_job_id(job_id)
        problem = check_directory_path(path)
        if problem is not None:
            raise InvalidArgument.field("path", problem)
        job = self._job(job_id)
        node = job.tree.dirs.get(path)
        if node is None:
            raise NotFound(f"job {job_id!r} has no directory {path!r}", metadata={"job_id": job_id})
        if node.summary is not None:
            record = node.summary
            return DirectorySummary(
                path=node.path,
                depth=node.depth,
                text=record.text,
                child_count=record.child_count,
                cache_key=record.cache_key,
                model=record.model,
                document_id=record.document_id,
            )
        where = f"directory {path!r} of job {job_id!r}"
        if node.state is DirState.FAILED:
            raise FailedPrecondition(f"{where} failed: {node.error}", reason="DIRECTORY_FAILED")
        if job.state is JobState.CANCELLED:
            raise FailedPrecondition(
                f"{where} is not summarized: the job was cancelled", reason="JOB_CANCELLED"
            )
        if job.state is JobState.ENUMERATING:
            raise FailedPrecondition(
                f"{where} is not summarized yet: the job is still enumerating", reason="NOT_SUMMARIZED"
            )
        if node.state is DirState.READY:
            detail = "it is queued or being folded"
        else:
            detail = f"it waits for {node.pending} sub-director{'y' if node.pending == 1 else 'ies'}"
        raise FailedPrecondition(f"{where} is not summarized yet: {detail}", reason="NOT_SUMMARIZED")

    def sweep(self) -> None:
        """Forget jobs ended more than the retention ago; cancel enumerating jobs idle that long."""
        now = self._clock()
        for job in list(self._jobs.values()):
            if now - job.touched <= self.retention_seconds:
                continue
            if job.ended:
                if not job.watchers:
                    self._forget(job)
            elif job.state is JobState.ENUMERATING:
                log.warning("cancelling idle enumerating job", extra={"job_id": job.id})
                self.cancel(job.id)

    # -- internals ------------------------------------------------------------------

    def _forget(self, job: Job) -> None:
        del self._jobs[job.id]
        if self._tracker is not None:
            self._tracker.forget(job)
        metrics.JOBS.labels(job.state.value).dec()
        if self.journal is not None:
            self.journal.remove(job.id)

    def _restore(self, saved: JournaledJob) -> None:
        """Rebuild a journaled job: its tree, its finished directories, its queue."""
        job = Job(saved.job_id, saved.pipeline_id, saved.create_time, self._clock())
        try:
            for objects in saved.batches:
                job.tree.add(objects)
        except TreeError as exc:
            log.error(
                "journaled job skipped: its tree is invalid", extra={"job_id": job.id, "error": str(exc)}
            )
            return
        self._jobs[job.id] = job
        metrics.JOBS.labels(job.state.value).inc()
        if saved.complete:
            job.tree.complete_enumeration()
            self._set_state(job, JobState.RUNNING)
            for event in saved.events:
                node = job.tree.dirs.get(event.path)
                if node is None or node.state is not DirState.READY:
                    log.error(
                        "journal event ignored: the directory is not ready",
                        extra={"job_id": job.id, "path": event.path},
                    )
                    continue
                if event.record is not None:
                    job.tree.mark_summarized(event.path, event.record)
                    job.cache_hits += int(event.reused)
                else:
                    job.tree.mark_failed(event.path, event.error)
        if saved.cancelled:
            self._end(job, JobState.CANCELLED)
        elif job.tree.finished:
            self._end(job, JobState.FAILED if job.tree.failed else JobState.SUCCEEDED)
        elif job.state is JobState.RUNNING:
            for node in job.tree.dirs.values():
                if node.state is DirState.READY:
                    self._dispatcher.push(job.id, node.path, node.depth)
        log.info(
            "job resumed from its journal",
            extra={
                "job_id": job.id,
                "state": job.state.value,
                "directories": len(job.tree.dirs),
                "finished_directories": job.tree.summarized + job.tree.failed,
            },
        )

    def _indexed(self, job: Job, settled: dict[str, str]) -> None:
        """The success hook (called by the completion tracker as the claimer reports the
        summaries' documents indexed, failed or deleted): advance the job's indexed (and
        index-failed) count and tell its watchers."""
        if self._jobs.get(job.id) is not job:
            return
        unsettled = job.unsettled()
        changed = False
        for document_id, outcome in settled.items():
            if document_id not in unsettled:
                continue
            if outcome == INDEXED_STAGE:
                job.indexed.add(document_id)
            else:
                job.index_failed.add(document_id)
            metrics.SUMMARIES_SETTLED.labels(outcome).inc()
            changed = True
        if changed:
            job.emit()

    def _job(self, job_id: str) -> Job:
        check_job_id(job_id)
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found", metadata={"job_id": job_id})
        return job

    def _check_objects(self, batch: SubmitBatch, job: Job | None) -> None:
        existing = len(job.tree.files) if job is not None else 0
        if existing + len(batch.objects) > self.limits.max_objects:
            raise InvalidArgument.field(
                "objects",
                f"the job would exceed {self.limits.max_objects} objects (SUMMARIZER_MAX_JOB_OBJECTS)",
            )
        for i, obj in enumerate(batch.objects):
            if _utf8_len(obj.text) > self.limits.max_text_bytes:
                raise InvalidArgument.field(
                    f"objects[{i}].text",
                    f"is longer than {self.limits.max_text_bytes} bytes (SUMMARIZER_MAX_OBJECT_TEXT_BYTES); "
                    "send a shorter excerpt",
                )
            if _utf8_len(obj.document_id) > MAX_DOCUMENT_ID_FIELD_BYTES:
                raise InvalidArgument.field(
                    f"objects[{i}].document_id", f"must be at most {MAX_DOCUMENT_ID_FIELD_BYTES} bytes"
                )
            if len(obj.content_hash) > MAX_CONTENT_HASH_CHARS:
                raise InvalidArgument.field(
                    f"objects[{i}].content_hash", f"must be at most {MAX_CONTENT_HASH_CHARS} characters"
                )
            if len(obj.kind) > MAX_KIND_CHARS:
                raise InvalidArgument.field(
                    f"objects[{i}].kind", f"must be at most {MAX_KIND_CHARS} characters"
                )
            directory_id = summary_document_id(batch.job_id, obj.directory)
            if obj.path and _utf8_len(directory_id) > MAX_DOCUMENT_ID_BYTES:
                raise InvalidArgument.field(
                    f"objects[{i}].path",
                    f"is too deep or long: its directory's summary document id would exceed "
                    f"{MAX_DOCUMENT_ID_BYTES} bytes",
                )

    def _set_state(self, job: Job, state: JobState) -> None:
        metrics.JOBS.labels(job.state.value).dec()
        metrics.JOBS.labels(state.value).inc()
        job.state = state

    def _end(self, job: Job, state: JobState) -> None:
        self._set_state(job, state)
        job.end_time = datetime.now(UTC)
        job.touched = self._clock()

    async def _sweep_forever(self) -> None:
        interval = min(60.0, max(0.05, self.retention_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    async def _work(self) -> None:
        while True:
            item = await self._dispatcher.get()
            job = self._jobs.get(item.job_id)
            if job is None or job.state is not JobState.RUNNING:
                continue  # cancelled (or forgotten) after it was queued
            node = job.tree.dirs[item.path]
            task = asyncio.create_task(self._fold(job, node), name=f"fold-{job.id}:{node.path}")
            job.inflight.add(task)
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                job.inflight.discard(task)
            if task.cancelled() or job.state is not JobState.RUNNING:
                continue
            error = task.exception()
            if error is None:
                record, outcome = task.result()
                self._summarized(job, node, record, outcome)
            else:
                if isinstance(error, (ProviderError, StageError)):
                    message = str(error)
                    log.warning(
                        "directory failed",
                        extra={"job_id": job.id, "path": node.path, "error": message},
                    )
                else:
                    message = f"internal error ({type(error).__name__}); see the summarizer log"
                    log.error(
                        "directory failed",
                        exc_info=error,
                        extra={"job_id": job.id, "path": node.path},
                    )
                self._failed(job, node, message)

    async def _fold(self, job: Job, node: DirNode) -> tuple[SummaryRecord, CacheOutcome]:
        subdirs, files = job.tree.children(node.path)
        children = [
            ChildInput(
                name=d.name + "/",
                kind=DIRECTORY_KIND,
                text=d.summary.text if d.summary is not None else "",
                content_hash=d.summary.cache_key if d.summary is not None else "",
                failed=d.state is DirState.FAILED,
            )
            for d in subdirs
        ] + [ChildInput(name=f.name, kind=f.kind, text=f.text, content_hash=f.content_hash) for f in files]
        provider = self.provider
        key = cache_key(provider.model, provider.prompt_version, [c.digest() for c in children])

        async def compute() -> str:
            async with self.gate:
                return await provider.summarize(children)

        text, outcome = await self.cache.get_or_compute(key, compute)
        staged = StagedSummary(job.pipeline_id, job.id, node.path, text, key)
        token = await self.stager.stage(staged)
        if self._tracker is not None:
            self._tracker.staged(staged.document_id, token)
        record = SummaryRecord(
            text=text,
            cache_key=key,
            model=provider.model,  # the key names the model: a hit was made by it too
            child_count=len(children),
            document_id=staged.document_id,
        )
        return record, outcome

    def _summarized(self, job: Job, node: DirNode, record: SummaryRecord, outcome: CacheOutcome) -> None:
        if self.journal is not None:
            self.journal.record_summarized(job.id, node.path, record, outcome.reused)
        parent = job.tree.mark_summarized(node.path, record)
        if self._tracker is not None:
            self._tracker.check(job, record.document_id)  # its change may have come first
        if outcome.reused:
            job.cache_hits += 1
        metrics.DIRECTORIES.labels("summarized").inc()
        self._advance(job, parent)
        job.emit(node.path)

    def _failed(self, job: Job, node: DirNode, error: str) -> None:
        if self.journal is not None:
            self.journal.record_failed(job.id, node.path, error)
        parent = job.tree.mark_failed(node.path, error)
        metrics.DIRECTORIES.labels("failed").inc()
        self._advance(job, parent)
        job.emit()

    def _advance(self, job: Job, parent: DirNode | None) -> None:
        if parent is not None:
            self._dispatcher.push(job.id, parent.path, parent.depth)
        if job.tree.finished:
            self._end(job, JobState.FAILED if job.tree.failed else JobState.SUCCEEDED)
            if self._tracker is not None:
                self._tracker.wake()  # its watch ends once its summaries are settled
            log.info(
                "job ended",
                extra={
                    "job_id": job.id,
                    "state": job.state.value,
                    "directories": len(job.tree.dirs),
                    "failed_directories": job.tree.failed,
                    "cache_hits": job.cache_hits,
                },
            )
