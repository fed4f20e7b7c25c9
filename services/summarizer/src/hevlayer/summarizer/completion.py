"""The completion tracker: the Job Lane's success hook, pushed by the claimer.

A staged summary is embedded and written by the embedding tail (an embedder worker and
the gateway's WriteVectors), which moves its document to stage ``indexed`` (or
``failed``) in the pipeline's durable state. The claimer logs every such change as it
commits and streams it (``StagingService.WatchDocuments``). The tracker keeps one watch
per pipeline that has jobs not yet settled, under the summaries' id prefix ``dir:``, and
hands each summary of a job that reaches ``indexed``, ``failed`` or is deleted to the
hook (:meth:`hevlayer.summarizer.jobs.JobRunner._indexed`), which advances the job's
``indexed_directories`` / ``index_failed_directories``.

- **Start and resync.** A watch without a cursor (the first, or after a restart of the
  summarizer) starts with a snapshot of the summaries' current states; a summary staged
  before the watch was opened and absent from the snapshot was deleted (it settles as
  failed). The claimer may send a snapshot again later (a resync); it is read the same way.
- **Reconnects.** When the stream fails (a gateway or claimer restart) the tracker
  watches again with the cursor of the last message it applied, after
  ``retry_seconds`` (doubling up to 30 s while it keeps failing): nothing committed in
  between is missed.
- **Stale changes.** A summary staged again has a larger fencing token than every
  earlier change of its document; a change with a smaller token than the staging this
  process made is an earlier staging's and is ignored. A change that arrives before the
  runner has recorded the staging (the embedder can be that fast) is remembered and
  applied by :meth:`CompletionTracker.check` once it has.
- **A deleted pipeline** (NOT_FOUND) settles every summary of its jobs as failed.

Memory: the last state of each summary document of the watched pipelines, plus one
token per summary staged by this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from hevlayer.common.errors import NotFound
from hevlayer.summarizer.staging import DocumentUpdate, TrackingStager, summary_document_id

log = logging.getLogger("hevlayer.summarizer.completion")

INDEXED = "indexed"
FAILED = "failed"
SUMMARY_PREFIX = "dir:"
"""Every summary document's id starts with it (:func:`summary_document_id`)."""
MAX_RETRY_SECONDS = 30.0


class TrackedJob(Protocol):
    """What the tracker reads of a job (:class:`hevlayer.summarizer.jobs.Job`)."""

    @property
    def id(self) -> str: ...

    @property
    def pipeline_id(self) -> str: ...

    @property
    def ended(self) -> bool: ...

    def unsettled(self) -> set[str]: ...


J = TypeVar("J", bound=TrackedJob)


class CompletionTracker(Generic[J]):
    """One ``WatchDocuments`` stream per pipeline with jobs to settle, feeding the hook
    (a job and, per summary document of it that settled, ``indexed`` or ``failed``)."""

    def __init__(
        self,
        stager: TrackingStager,
        jobs: Callable[[], Iterable[J]],
        hook: Callable[[J, dict[str, str]], None],
        *,
        retry_seconds: float = 1.0,
    ) -> None:
        self._stager = stager
        self._jobs = jobs
        self._hook = hook
        self.retry_seconds = retry_seconds
        self._tokens: dict[str, int] = {}
        """Summary document -> fencing token of this process's staging of it."""
        self._staged_at: dict[str, int] = {}
        """Summary document -> number of the staging (:attr:`_stagings` after it)."""
        self._stagings = 0
        self._states: dict[str, dict[str, tuple[str, int]]] = {}
        """Pipeline -> summary document -> (stage, fencing token) of its last change seen."""
        self._wake = asyncio.Event()
        self._watches: dict[str, asyncio.Task[None]] = {}

    # -- what the runner tells it ------------------------------------------------------

    def staged(self, document_id: str, fencing_token: int) -> None:
        """A summary was staged (its document has ``fencing_token`` from now on)."""
        self._stagings += 1
        self._tokens[document_id] = fencing_token
        self._staged_at[document_id] = self._stagings
        self._wake.set()

    def check(self, job: J, document_id: str) -> None:
        """Run the hook for one summary the runner has just recorded, if its document's
        change has already arrived."""
        outcome = self._outcome(job.pipeline_id, document_id, None)
        if outcome is not None and document_id in job.unsettled():
            self._hook(job, {document_id: outcome})

    def wake(self) -> None:
        """Look for pipelines to watch now."""
        self._wake.set()

    def forget(self, job: J) -> None:
        """Drop the staging tokens of a forgotten job's summaries. Their documents' last
        changes stay while the pipeline is watched: a job run again under the same id stages
        its unchanged summaries without a change (skip_unchanged), and settles them from there."""
        prefix = summary_document_id(job.id, "")
        for table in (self._tokens, self._staged_at):
            for document_id in [d for d in table if d.startswith(prefix)]:
                del table[document_id]

    # -- watching ------------------------------------------------------------------------

    def _wanted(self, pipeline_id: str) -> bool:
        """Some job of the pipeline may still stage summaries, or has some not settled."""
        return any(
            job.pipeline_id == pipeline_id and (not job.ended or job.unsettled()) for job in self._jobs()
        )

    async def run(self) -> None:
        """Keep a watch open for every pipeline that needs one, until cancelled."""
        try:
            while True:
                self._wake.clear()
                for pipeline_id, task in list(self._watches.items()):
                    if not task.done() and not self._wanted(pipeline_id):
                        task.cancel()  # every job of it settled (or was forgotten) meanwhile
                    if task.done():
                        del self._watches[pipeline_id]
                wanted = {job.pipeline_id for job in self._jobs() if job.unsettled()}
                for pipeline_id in wanted - self._watches.keys():
                    self._watches[pipeline_id] = asyncio.create_task(
                        self._watch(pipeline_id), name=f"summary-watch-{pipeline_id}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.retry_seconds)
        finally:
            tasks = list(self._watches.values())
            self._watches.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, pipeline_id: str) -> None:
        try:
            cursor = ""
            delay = self.retry_seconds
            while self._wanted(pipeline_id):
                opened = self._stagings
                snapshot: dict[str, tuple[str, int]] | None = None
                try:
                    async for update in self._stager.watch_documents(pipeline_id, SUMMARY_PREFIX, cursor):
                        if update.snapshot:
                            snapshot = {} if snapshot is None else snapshot
                            _apply(snapshot, update)
                            if not update.snapshot_complete:
                                continue
                            self._states[pipeline_id] = snapshot
                            snapshot = None
                            # Staged before the watch was opened, so in the snapshot unless deleted.
                            self._settle(pipeline_id, absent_before=opened)
                        else:
                            _apply(self._states.setdefault(pipeline_id, {}), update)
                            self._settle(pipeline_id, absent_before=None)
                        cursor = update.cursor or cursor
                        delay = self.retry_seconds
                        if not self._wanted(pipeline_id):
                            return
                except NotFound:
                    log.info("completion tracker: pipeline %s is gone; its summaries failed", pipeline_id)
                    self._states[pipeline_id] = {}
                    self._settle(pipeline_id, absent_before=self._stagings)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # ServiceError or a channel failure: watch again from the cursor
                    log.warning(
                        "completion tracker: watch of %s lost; resuming",
                        pipeline_id,
                        extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay},
                    )
                else:
                    log.info("completion tracker: watch of %s ended; resuming", pipeline_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
        finally:
            self._states.pop(pipeline_id, None)

    def _outcome(self, pipeline_id: str, document_id: str, absent_before: int | None) -> str | None:
        state = self._states.get(pipeline_id, {}).get(document_id)
        if state is None:
            if absent_before is not None and self._staged_at.get(document_id, 0) <= absent_before:
                return FAILED  # deleted (or its pipeline is gone)
            return None
        stage, token = state
        if token < self._tokens.get(document_id, 0):
            return None  # a change of an earlier staging
        if stage == INDEXED:
            return INDEXED
        if stage in (FAILED, ""):
            return FAILED
        return None

    def _settle(self, pipeline_id: str, absent_before: int | None) -> None:
        for job in list(self._jobs()):
            if job.pipeline_id != pipeline_id:
                continue
            settled = {}
            for document_id in job.unsettled():
                outcome = self._outcome(pipeline_id, document_id, absent_before)
                if outcome is not None:
                    settled[document_id] = outcome
            if settled:
                self._hook(job, settled)


def _apply(states: dict[str, tuple[str, int]], update: DocumentUpdate) -> None:
    for document_id, stage, token in update.states:
        states[document_id] = (stage, token)
