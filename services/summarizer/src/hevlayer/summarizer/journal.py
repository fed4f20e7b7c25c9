"""The job journal: what a summarizer needs to resume its jobs after a crash.

Every job has a directory ``<SUMMARIZER_CACHE_DIR>/jobs/<sha256(job_id)[:32]>/``
with three append-only files:

- ``job.json``: the job id, its pipeline and when it was created (written once);
- ``objects.jsonl``: one line per SubmitJob batch (its objects, and whether it
  completed the enumeration), appended and fsynced before SubmitJob answers;
- ``events.jsonl``: one line per finished directory (its summary record, or the
  error it failed with) and one when the job is cancelled, appended and fsynced
  when it happens.

On start the runner replays each journal (:meth:`JobJournal.load`): the tree
is rebuilt from the batches, the finished directories are marked finished in
the order they finished (so every parent is released exactly as it was), and
only the directories not yet finished are queued again. A directory in flight
when the process died is folded again (a Transformation Cache hit when its
provider call had answered). A line cut short by the crash (the last one) is
ignored. When an ended job is forgotten (SUMMARIZER_JOB_RETENTION_SECONDS) its
journal is deleted.

Writes are group commits off the event loop: the runner's calls only queue
an operation (so folding never waits for the disk), and one writer task
performs the queued operations in order in a thread, with one fsync per
file touched per round. Order is kept, so a crash loses at most a suffix of
a journal, never a line in the middle: the lost directories are folded again
on restart (Transformation Cache hits). SubmitJob answers only after
:meth:`JobJournal.flush`, so an accepted batch is on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from hevlayer.summarizer.tree import ObjectSpec, SummaryRecord

log = logging.getLogger("hevlayer.summarizer.journal")

JOB_FILE = "job.json"
OBJECTS_FILE = "objects.jsonl"
EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True)
class DirectoryEvent:
    """A directory that finished: summarized (``record``) or failed (``error``)."""

    path: str
    record: SummaryRecord | None = None
    error: str = ""
    reused: bool = False


@dataclass
class JournaledJob:
    """One job as its journal holds it."""

    job_id: str
    pipeline_id: str
    create_time: datetime
    batches: list[list[ObjectSpec]] = field(default_factory=list)
    complete: bool = False
    events: list[DirectoryEvent] = field(default_factory=list)
    cancelled: bool = False


def _object_to_json(obj: ObjectSpec) -> dict[str, str]:
    return {
        "path": obj.path,
        "document_id": obj.document_id,
        "content_hash": obj.content_hash,
        "kind": obj.kind,
        "text": obj.text,
    }


def _close_under(handles: dict[Path, IO[bytes]], directory: Path) -> None:
    """Close (after flushing) the open handles of files in ``directory``."""
    for path in [p for p in handles if p.parent == directory]:
        handle = handles.pop(path)
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a last line cut short by a crash is dropped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                log.warning("dropping a journal line cut short by a crash", extra={"file": str(path)})
                continue
            raise
        out.append(value)
    return out


class JobJournal:
    """The journals of every job, under ``directory`` (``<SUMMARIZER_CACHE_DIR>/jobs``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: list[Callable[[dict[Path, IO[bytes]]], None]] = []
        self._queued = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._error: BaseException | None = None

    def _job_dir(self, job_id: str) -> Path:
        return self.directory / hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    # -- the writer ------------------------------------------------------------------

    def _enqueue(self, operation: Callable[[dict[Path, IO[bytes]]], None]) -> None:
        self._queue.append(operation)
        self._queued += 1
        self._wake.set()

    async def run(self) -> None:
        """The writer task: perform queued operations in order, a round at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._perform, batch)
            except OSError as exc:  # logged and surfaced to the next flush
                log.error("job journal write failed", extra={"error": str(exc)})
                self._error = exc
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()

    @staticmethod
    def _perform(batch: list[Callable[[dict[Path, IO[bytes]]], None]]) -> None:
        handles: dict[Path, IO[bytes]] = {}
        try:
            for operation in batch:
                operation(handles)
            for handle in handles.values():
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            for handle in handles.values():
                handle.close()

    async def flush(self) -> None:
        """Wait until every operation queued so far is on disk; OSError if one failed."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _append(self, path: Path, value: dict[str, Any]) -> None:
        line = (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "surrogatepass"
        )

        def append(handles: dict[Path, IO[bytes]]) -> None:
            handle = handles.get(path)
            if handle is None:
                handle = handles[path] = path.open("ab")
            handle.write(line)

        self._enqueue(append)

    # -- operations ------------------------------------------------------------------

    def create(self, job_id: str, pipeline_id: str, create_time: datetime) -> None:
        """Start the journal of a new job (an old journal of the same id is replaced)."""
        job_dir = self._job_dir(job_id)
        header = {"job_id": job_id, "pipeline_id": pipeline_id, "create_time": create_time.isoformat()}

        def create(handles: dict[Path, IO[bytes]]) -> None:
            _close_under(handles, job_dir)
            if job_dir.exists():
                shutil.rmtree(job_dir)
            job_dir.mkdir(parents=True)
            temporary = job_dir / (JOB_FILE + ".tmp")
            temporary.write_text(json.dumps(header))
            temporary.replace(job_dir / JOB_FILE)

        self._enqueue(create)

    def append_objects(self, job_id: str, objects: list[ObjectSpec], complete: bool) -> None:
        """Record one accepted SubmitJob batch."""
        self._append(
            self._job_dir(job_id) / OBJECTS_FILE,
            {"objects": [_object_to_json(o) for o in objects], "complete": complete},
        )

    def record_summarized(self, job_id: str, path: str, record: SummaryRecord, reused: bool) -> None:
        """Record a directory's summary."""
        self._append(
            self._job_dir(job_id) / EVENTS_FILE,
            {
                "path": path,
                "summary": {
                    "text": record.text,
                    "cache_key": record.cache_key,
                    "model": record.model,
                    "child_count": record.child_count,
                    "document_id": record.document_id,
                },
                "reused": reused,
            },
        )

    def record_failed(self, job_id: str, path: str, error: str) -> None:
        """Record that a directory failed."""
        self._append(self._job_dir(job_id) / EVENTS_FILE, {"path": path, "error": error})

    def record_cancelled(self, job_id: str) -> None:
        """Record that the job was cancelled."""
        self._append(self._job_dir(job_id) / EVENTS_FILE, {"cancelled": True})

    def remove(self, job_id: str) -> None:
        """Forget a job's journal."""
        job_dir = self._job_dir(job_id)

        def remove(handles: dict[Path, IO[bytes]]) -> None:
            _close_under(handles, job_dir)
            shutil.rmtree(job_dir, ignore_errors=True)

        self._enqueue(remove)

    def load(self) -> list[JournaledJob]:
        """Every journaled job, oldest first; unreadable journals are logged and skipped."""
        if not self.directory.is_dir():
            return []
        jobs: list[JournaledJob] = []
        for job_dir in sorted(self.directory.iterdir()):
            if not (job_dir / JOB_FILE).is_file():
                continue
            try:
                jobs.append(self._load_one(job_dir))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error(
                    "unreadable job journal skipped", extra={"journal": str(job_dir), "error": str(exc)}
                )
        jobs.sort(key=lambda j: j.create_time)
        return jobs

    def _load_one(self, job_dir: Path) -> JournaledJob:
        header = json.loads((job_dir / JOB_FILE).read_text())
        job = JournaledJob(
            job_id=str(header["job_id"]),
            pipeline_id=str(header["pipeline_id"]),
            create_time=datetime.fromisoformat(header["create_time"]),
        )
        for line in _read_lines(job_dir / OBJECTS_FILE):
            job.batches.append([ObjectSpec(**{k: str(v) for k, v in o.items()}) for o in line["objects"]])
            job.complete = job.complete or bool(line["complete"])
        for line in _read_lines(job_dir / EVENTS_FILE):
            if line.get("cancelled"):
                job.cancelled = True
            elif "summary" in line:
                s = line["summary"]
                record = SummaryRecord(
                    text=str(s["text"]),
                    cache_key=str(s["cache_key"]),
                    model=str(s["model"]),
                    child_count=int(s["child_count"]),
                    document_id=str(s["document_id"]),
                )
                job.events.append(DirectoryEvent(str(line["path"]), record, reused=bool(line.get("reused"))))
            else:
                job.events.append(DirectoryEvent(str(line["path"]), error=str(line["error"])))
        return job
