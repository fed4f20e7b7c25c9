"""``hevlayer add --summaries``: the Job Lane on the client side.

For every directory given to ``add`` one summary job is submitted to the
summarizer (``SummaryService.SubmitJob``) while the Object Lane runs:

1. the files under the directory are enumerated (the same walk and kind
   detection as ``add``) and streamed to the summarizer in batches of
   :data:`BATCH_OBJECTS`, each file with its path relative to the directory,
   its document id, content hash, kind and a source excerpt: the leading
   text of a plain text, Markdown or code file (:data:`PLAIN_KINDS`); for any
   other kind (a PDF, an image, HTML, a table, a Word or PowerPoint file, ...)
   its derived text from the Artifact Cache
   (:mod:`hevlayer.ingest.artifacts`, shared with the Object Lane), or, when
   the Object Lane has not converted it yet, converted here once and stored
   there for both lanes (its chunks too, so the Object Lane does not convert
   it again), under the cache's single flight (when both lanes reach the same
   unconverted file at the same moment, one converts and the other reads); the
   last message sets ``enumeration_complete``;
2. the summarizer folds the directories bottom-up while their files are still
   being extracted and embedded, and stages each summary into the same
   pipeline as a document ``dir:<job id>:/<path>`` of one chunk of kind
   ``directory_summary``; the suite's embedder worker embeds it into the same
   index, so ``hevlayer search --kind directory_summary`` finds it;
3. with ``--wait`` the CLI follows the job (``WatchJob`` with
   ``until_indexed``) until every summary is indexed: the summarizer's success
   hook advances ``indexed_directories`` as their documents become indexed;
4. summaries of directories gone from the tree are deleted.

The job id is stable per pipeline and directory (:func:`job_id_for`), so a
second ``add`` of the same directory replaces the job: unchanged directories
are Transformation Cache hits and keep their indexed documents.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.client import Client, ClientOptions
from hevlayer.client.errors import NotFound, ServiceError
from hevlayer.ingest.artifacts import (
    ArtifactCache,
    LocalArtifactCache,
    chunks_token,
    derived_text,
    encode_chunks,
    text_token,
    version_token,
)
from hevlayer.ingest.files import FileEntry, Root, Skipped, examine, walk
from hevlayer.ingest.producers import DEFAULT_BUDGET, Budget, Producer, ProducerError, Source, select_producer
from hevlayer.ingest.producers.base import looks_binary

CHUNK_KIND = "directory_summary"
BATCH_OBJECTS = 256
EXCERPT_BYTES = 4096
"""Leading bytes of a text file sent as its excerpt (the summarizer uses about 1200 characters)."""
PLAIN_KINDS = frozenset({"text", "markdown", "code"})
"""Kinds whose leading bytes are their text; every other kind's text comes from its converter."""
_SPACE = re.compile(r"\s+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DELETE_BATCH = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class SummaryOptions:
    """How ``add --summaries`` runs its jobs."""

    summarizer: str
    """host:port of the summarizer."""
    client_options: ClientOptions | None = None
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()
    wait: bool = True
    """Follow each job until its summaries are indexed."""
    artifact_dir: str | None = None
    """The Artifact Cache directory the Object Lane uses (None: convert without a cache)."""
    artifact_bytes: int = 1 << 30
    budget: Budget = DEFAULT_BUDGET
    """The Object Lane's chunk budget (a conversion done here stores chunks it can reuse)."""


@dataclass
class JobOutcome:
    """One directory's summary job as it ended (or stood when ``add`` stopped waiting)."""

    root: str
    job_id: str
    objects: int = 0
    directories: int = 0
    summarized: int = 0
    failed: int = 0
    cache_hits: int = 0
    indexed: int = 0
    index_failed: int = 0
    state: str = ""
    deleted: int = 0
    artifact_hits: int = 0
    """Files whose derived text came from the Artifact Cache."""
    conversions: int = 0
    """Files converted here (not in the Artifact Cache yet)."""
    seconds: float = 0.0
    """From the first SubmitJob message until the job's summaries were indexed."""


@dataclass
class SummariesReport:
    """What ``add --summaries`` prints."""

    jobs: list[JobOutcome] = field(default_factory=list)
    added_seconds: float = 0.0
    """Wall time the summaries added after the Object Lane was done (0 when they finished first)."""


def job_id_for(pipeline_id: str, root: Path) -> str:
    """A stable job id for a directory of a pipeline: its name and a hash of pipeline and path."""
    name = _UNSAFE.sub("-", root.name).strip("-")[:40] or "root"
    digest = hashlib.sha256(f"{pipeline_id}\0{root.as_posix()}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def excerpt(path: Path, kind: str) -> str | None:
    """The leading text of a plain text, Markdown or code file, whitespace folded; None for any
    other kind (or a binary file), whose text needs its converter."""
    if kind not in PLAIN_KINDS:
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(EXCERPT_BYTES)
    except OSError:
        return ""
    if looks_binary(head):
        return None
    return fold(head.decode("utf-8", errors="replace"))


def fold(text: str) -> str:
    """Whitespace folded, cut to about :data:`EXCERPT_BYTES` characters."""
    return _SPACE.sub(" ", text[: EXCERPT_BYTES * 2]).strip()[:EXCERPT_BYTES]


def directories_of(paths: Sequence[str]) -> set[str]:
    """Every directory (relative, "" the root) holding one of ``paths``."""
    out = {""}
    for path in paths:
        parts = path.split("/")[:-1]
        for end in range(1, len(parts) + 1):
            out.add("/".join(parts[:end]))
    return out


def _job_object(entry: FileEntry, root: Root, text: str) -> summary_pb2.JobObject:
    return summary_pb2.JobObject(
        path=entry.path.relative_to(root.path).as_posix(),
        document_id=entry.document_id,
        content_hash=entry.content_hash,
        kind=entry.kind,
        text=text,
    )


async def ensure_pipeline(
    gateway: Client, pipeline_id: str, queue_backend: pipeline_pb2.QueueBackend.ValueType
) -> None:
    """Create the pipeline the summaries are staged into, if it does not exist yet."""
    try:
        await gateway.pipelines.get(pipeline_id)
        return
    except NotFound:
        pass
    try:
        await gateway.pipelines.create(pipeline_pb2.Pipeline(id=pipeline_id, queue_backend=queue_backend))
    except ServiceError as error:
        if error.reason != "ALREADY_EXISTS":
            raise


class SummaryJobs:
    """The summary jobs of one ``add``: one per directory among ``paths``."""

    def __init__(
        self,
        gateway: Client,
        pipeline_id: str,
        paths: Sequence[str | Path],
        options: SummaryOptions,
        note: Callable[[str], None],
    ) -> None:
        self.gateway = gateway
        self.pipeline_id = pipeline_id
        self.roots = [r for r in (Root.of(p) for p in paths) if r.is_dir]
        self.options = options
        self.note = note
        self.artifacts: ArtifactCache | None = (
            LocalArtifactCache(options.artifact_dir, options.artifact_bytes) if options.artifact_dir else None
        )

    async def run(self) -> list[JobOutcome]:
        """Submit every job, then (with ``wait``) follow each until its summaries are indexed."""
        if not self.roots:
            self.note("summaries: no directory among the paths; nothing to summarize")
            return []
        async with Client.connect(self.options.summarizer, self.options.client_options) as summarizer:
            return list(await asyncio.gather(*(self._job(summarizer, root) for root in self.roots)))

    async def _job(self, summarizer: Client, root: Root) -> JobOutcome:
        started = time.monotonic()
        outcome = JobOutcome(root.path.as_posix(), job_id_for(self.pipeline_id, root.path))
        paths: list[str] = []
        job = await summarizer.summaries.submit_job(
            self.pipeline_id, outcome.job_id, self._batches(root, paths, outcome)
        )
        self.note(
            f"summaries: job {outcome.job_id} submitted ({job.objects} files, {job.directories} directories)"
        )
        outcome.deleted = await self._delete_gone(outcome.job_id, directories_of(paths))
        if self.options.wait:
            async for update in summarizer.summaries.watch_job(outcome.job_id, until_indexed=True):
                job = update.job
        self._fill(outcome, job)
        outcome.seconds = time.monotonic() - started
        return outcome

    async def _batches(
        self, root: Root, paths: list[str], outcome: JobOutcome
    ) -> AsyncIterator[list[summary_pb2.JobObject]]:
        found: list[Path | Skipped] = await asyncio.to_thread(
            lambda: list(
                walk([root], include_hidden=self.options.include_hidden, exclude=self.options.exclude)
            )
        )
        files = [p for p in found if isinstance(p, Path)]
        for offset in range(0, len(files), BATCH_OBJECTS):
            chunk = files[offset : offset + BATCH_OBJECTS]
            examined = await asyncio.to_thread(self._examine, chunk, root)
            batch = []
            for entry, text in examined:
                if text is None:
                    text = await self._derived_text(entry, outcome)
                batch.append(_job_object(entry, root, text))
            paths.extend(o.path for o in batch)
            yield batch

    @staticmethod
    def _examine(files: Sequence[Path], root: Root) -> list[tuple[FileEntry, str | None]]:
        out = []
        for path in files:
            entry = examine(path, [root])
            if isinstance(entry, FileEntry):
                out.append((entry, excerpt(entry.path, entry.kind)))
        return out

    async def _derived_text(self, entry: FileEntry, outcome: JobOutcome) -> str:
        """A file's converted text: from the Artifact Cache, else converted once and stored
        there (text and chunks) for both lanes, under the cache's single flight (when the
        Object Lane is converting the same file at this moment, its text is read once it is
        done); "" when the conversion fails (the Object Lane reports it)."""
        producer = select_producer(entry.kind)
        if self.artifacts is None:
            text = await self._convert(entry, producer, outcome)
            return "" if text is None else fold(text)
        token = text_token(producer)
        blob = await self.artifacts.get(entry.content_hash, token)
        if blob is None:
            async with self.artifacts.flight(entry.content_hash, version_token(producer)):
                blob = await self.artifacts.get(entry.content_hash, token)
                if blob is None:
                    text = await self._convert(entry, producer, outcome)
                    return "" if text is None else fold(text)
        outcome.artifact_hits += 1
        return fold(blob.decode("utf-8", errors="replace"))

    async def _convert(self, entry: FileEntry, producer: Producer, outcome: JobOutcome) -> str | None:
        """Convert ``entry`` here and store its text and chunks; None when it cannot be."""
        budget = self.options.budget
        try:
            data = await asyncio.to_thread(entry.path.read_bytes)
            chunks = await asyncio.to_thread(
                producer.produce, Source(entry.document_id, entry.name, data), budget
            )
        except (OSError, ProducerError):
            return None
        outcome.conversions += 1
        text = derived_text(chunks)
        if self.artifacts is not None:
            await self.artifacts.put(
                entry.content_hash, chunks_token(producer, budget, entry.name), encode_chunks(chunks)
            )
            await self.artifacts.put(
                entry.content_hash, text_token(producer), text.encode("utf-8", "surrogatepass")
            )
        return text

    async def _delete_gone(self, job_id: str, directories: set[str]) -> int:
        """Delete the summaries of directories no longer in the job's tree."""
        prefix = f"dir:{job_id}:/"
        gone = [
            d.document_id
            async for d in self.gateway.staging.list_documents(self.pipeline_id, id_prefix=prefix)
            if d.document_id[len(prefix) :] not in directories
        ]
        deleted = 0
        for offset in range(0, len(gone), _DELETE_BATCH):
            deleted += await self.gateway.staging.delete_documents(
                self.pipeline_id, gone[offset : offset + _DELETE_BATCH]
            )
        return deleted

    @staticmethod
    def _fill(outcome: JobOutcome, job: summary_pb2.Job) -> None:
        outcome.objects = job.objects
        outcome.directories = job.directories
        outcome.summarized = job.summarized_directories
        outcome.failed = job.failed_directories
        outcome.cache_hits = job.cache_hits
        outcome.indexed = job.indexed_directories
        outcome.index_failed = job.index_failed_directories
        outcome.state = summary_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


async def run_with_summaries(
    ingest: Awaitable[T], jobs: SummaryJobs, queue_backend: pipeline_pb2.QueueBackend.ValueType
) -> tuple[T, SummariesReport]:
    """Run the Object Lane (``ingest``) and the summary jobs side by side; both results, and
    how much longer than the Object Lane the summaries took."""
    await ensure_pipeline(jobs.gateway, jobs.pipeline_id, queue_backend)
    started = time.monotonic()
    summaries = asyncio.ensure_future(jobs.run())
    try:
        result = await ingest
    except BaseException:
        summaries.cancel()
        raise
    ingest_done = time.monotonic()
    outcomes = await summaries
    report = SummariesReport(outcomes, added_seconds=max(0.0, time.monotonic() - max(ingest_done, started)))
    return result, report


def summary_lines(report: SummariesReport) -> list[str]:
    """The lines ``add`` prints about its summaries."""
    lines = []
    for job in report.jobs:
        failed = f", {job.failed} failed" if job.failed else ""
        index_failed = f", {job.index_failed} failed to index" if job.index_failed else ""
        deleted = f"; {job.deleted} summaries of removed directories deleted" if job.deleted else ""
        lines.append(
            f"summaries of {job.root} (job {job.job_id}, {job.state}): {job.summarized}/{job.directories} "
            f"directories summarized ({job.cache_hits} from cache){failed}, {job.indexed} indexed"
            f"{index_failed}{deleted}; converted files: {job.artifact_hits} from the artifact cache, "
            f"{job.conversions} converted; {job.seconds:.1f} s"
        )
    if report.jobs:
        lines.append(f"summaries added {report.added_seconds:.1f} s after the files were indexed")
    return lines
