"""The job journal (a restarted runner resumes its jobs without refolding finished
directories) and the success hook (the completion tracker advances indexed_directories from
the summaries' document changes, as the claimer's WatchDocuments pushes them: a snapshot
first, resumed from the cursor after a lost stream, a snapshot again after a resync, changes
of an earlier staging ignored)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

from hevlayer.ingest.transform import TransformationCache
from hevlayer.summarizer.gates import Gate
from hevlayer.summarizer.jobs import JobEvent, JobRunner, JobState, SubmitBatch
from hevlayer.summarizer.journal import EVENTS_FILE, JobJournal
from hevlayer.summarizer.providers import ChildInput, ExtractiveProvider, SummaryProvider
from hevlayer.summarizer.staging import DocumentUpdate, MemoryStager, StagedSummary, TrackingStager
from hevlayer.summarizer.tree import ObjectSpec

GUARD = 30.0  # hang guard for awaits, not a timing assertion

PATHS = ["a/x/1.py", "a/y/2.py", "a/3.py", "b/4.md", "top.txt"]


def _objects(paths: Sequence[str] = PATHS) -> list[ObjectSpec]:
    return [ObjectSpec(path=p, content_hash=f"h:{p}", kind="code", text=f"About {p}.") for p in paths]


class CountingProvider(SummaryProvider):
    """The extractive provider, recording the directories it was asked about (by their
    children's names); ``hold_after`` calls answer, later ones wait for ``release``."""

    def __init__(self, hold_after: int | None = None) -> None:
        self.inner = ExtractiveProvider()
        self.model = self.inner.model
        self.asked: list[tuple[str, ...]] = []
        self.hold_after = hold_after
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    @property
    def prompt_version(self) -> str:
        return self.inner.prompt_version

    async def summarize(self, children: Sequence[ChildInput]) -> str:
        self.asked.append(tuple(c.name for c in children))
        if self.hold_after is not None and len(self.asked) > self.hold_after:
            self.holding.set()
            await self.release.wait()
        return await self.inner.summarize(children)


class StagesStager(MemoryStager, TrackingStager):
    """An in-memory stager with the claimer's change stream: staging and the test's
    :meth:`move` append changes (a new fencing token each, like the claimer) to a log that
    :meth:`watch_documents` serves like ``WatchDocuments`` (a snapshot without a cursor, else the
    changes after it, or a snapshot again when the log was dropped). ``fail_after`` ends the
    next stream with an error after that many messages (a lost gateway)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: dict[str, tuple[str, int, str]] = {}
        """Document -> (stage, fencing token, content hash); deleted documents are absent."""
        self.log: list[tuple[str, str, int]] = []
        self.first = 1
        """Number of log[0] (the log may have been dropped up to it)."""
        self.token = 0
        self.changed = asyncio.Condition()
        self.streams = 0
        self.snapshots = 0
        self.fail_after: int | None = None
        self.flowing = asyncio.Event()
        """Cleared: streams hold their next message back (a slow network)."""
        self.flowing.set()

    async def _change(self, document_id: str, stage: str, token: int) -> None:
        async with self.changed:
            self.log.append((document_id, stage, token))
            self.changed.notify_all()

    async def stage(self, summary: StagedSummary) -> int:
        await super().stage(summary)
        current = self.stages.get(summary.document_id)
        if current is not None and current[2] == summary.cache_key and current[0] != "failed":
            return current[1]  # skip_unchanged: the document keeps its stage and token
        self.token += 1
        self.stages[summary.document_id] = ("pending", self.token, summary.cache_key)
        await self._change(summary.document_id, "pending", self.token)
        return self.token

    async def move(self, document_id: str, stage: str) -> None:
        """The embedding tail moves a document (stage "" deletes it)."""
        self.token += 1
        if stage:
            self.stages[document_id] = (stage, self.token, self.stages[document_id][2])
        else:
            del self.stages[document_id]
        await self._change(document_id, stage, self.token)

    def _beyond(self, position: int) -> bool:
        return self.first - 1 + len(self.log) > position

    def drop_log(self) -> None:
        """The retention sweep: every change so far is gone."""
        self.first += len(self.log)
        self.log.clear()

    async def watch_documents(
        self, pipeline_id: str, id_prefix: str, cursor: str
    ) -> AsyncIterator[DocumentUpdate]:
        self.streams += 1
        sent = 0
        position = int(cursor) if cursor else -1
        while True:
            if self.fail_after is not None and sent >= self.fail_after:
                self.fail_after = None
                raise ConnectionError("the gateway went away")
            async with self.changed:
                if position >= self.first - 1:
                    await self.changed.wait_for(partial(self._beyond, position))
                head = self.first - 1 + len(self.log)
                if position < self.first - 1:  # no cursor, or its changes were dropped: a snapshot
                    self.snapshots += 1
                    states = [
                        (d, stage, token)
                        for d, (stage, token, _) in sorted(self.stages.items())
                        if d.startswith(id_prefix)
                    ]
                    update = DocumentUpdate(states, snapshot=True, snapshot_complete=True, cursor=str(head))
                else:
                    changes = [
                        c for c in self.log[position - (self.first - 1) :] if c[0].startswith(id_prefix)
                    ]
                    update = DocumentUpdate(changes, cursor=str(head))
                position = head
            await self.flowing.wait()
            yield update
            sent += 1


@contextlib.asynccontextmanager
async def _runner(
    tmp_path: Path, provider: SummaryProvider, stager: MemoryStager, journal: bool = True
) -> AsyncIterator[JobRunner]:
    cache = TransformationCache(location=tmp_path / "transformations", max_bytes=1 << 24)
    runner = JobRunner(
        provider,
        cache,
        stager,
        gate=Gate("summary", 4),
        workers=1,
        journal=JobJournal(tmp_path / "cache" / "jobs") if journal else None,
        index_poll_seconds=0.05,
    )
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        cache.close()


async def _events(runner: JobRunner, job_id: str, until_indexed: bool = False) -> list[JobEvent]:
    async def collect() -> list[JobEvent]:
        return [e async for e in runner.watch(job_id, until_indexed=until_indexed)]

    return await asyncio.wait_for(collect(), GUARD)


async def test_a_restarted_runner_resumes_without_refolding_finished_directories(tmp_path: Path) -> None:
    # Directories: a/x, a/y, a, b, "" (5). Two fold, the third is held when the runner stops.
    first = CountingProvider(hold_after=2)
    stager = MemoryStager()
    async with _runner(tmp_path, first, stager) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        await asyncio.wait_for(first.holding.wait(), GUARD)
        before = runner.get("j")
        assert before.state is JobState.RUNNING
        assert before.summarized_directories == 2
    finished = set(first.asked[:2])
    staged_before = list(stager.order)

    second = CountingProvider()
    async with _runner(tmp_path, second, stager) as runner:
        final = (await _events(runner, "j"))[-1].job  # no resubmission: the journal has the job
        assert final.state is JobState.SUCCEEDED
        assert final.summarized_directories == 5
        assert final.objects == len(PATHS)
        root = runner.summary("j", "")
        assert root.document_id == "dir:j:/"
    # The directories finished before the stop were neither folded nor staged again.
    assert not finished & set(second.asked)
    assert len(second.asked) == 3
    assert stager.order[: len(staged_before)] == staged_before
    assert len(stager.order) == 5
    assert sorted(stager.order) == sorted(set(stager.order))


async def test_a_journal_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    provider = CountingProvider()
    async with _runner(tmp_path, provider, MemoryStager()) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        assert (await _events(runner, "j"))[-1].job.state is JobState.SUCCEEDED
    (events_file,) = (tmp_path / "cache" / "jobs").glob(f"*/{EVENTS_FILE}")
    lines = events_file.read_bytes().splitlines(keepends=True)
    events_file.write_bytes(b"".join(lines[:-1]) + lines[-1][:10])  # the root's line, cut short

    again = CountingProvider()
    async with _runner(tmp_path, again, MemoryStager()) as runner:
        final = (await _events(runner, "j"))[-1].job
        assert final.state is JobState.SUCCEEDED
        assert final.summarized_directories == 5
    assert len(again.asked) == 0  # the root folded again from the transformation cache
    assert final.cache_hits >= 1


async def test_forgotten_and_resubmitted_jobs_leave_one_journal(tmp_path: Path) -> None:
    async with _runner(tmp_path, CountingProvider(), MemoryStager()) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        await _events(runner, "j")
        runner.submit(SubmitBatch("j", "p", _objects(["only.txt"]), enumeration_complete=True))
        final = (await _events(runner, "j"))[-1].job
        assert (final.objects, final.directories) == (1, 1)
    assert len(list((tmp_path / "cache" / "jobs").iterdir())) == 1
    async with _runner(tmp_path, CountingProvider(), MemoryStager()) as runner:
        assert runner.get("j").objects == 1


async def _settled(runner: JobRunner, job_id: str, indexed: int, failed: int) -> None:
    """Wait for the job's counts (the hang guard fails the test if they never come)."""

    async def counts() -> None:
        while True:
            job = runner.get(job_id)
            if (job.indexed_directories, job.index_failed_directories) == (indexed, failed):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(counts(), GUARD)


async def test_success_hooks_advance_the_indexed_count(tmp_path: Path) -> None:
    stager = StagesStager()
    async with _runner(tmp_path, CountingProvider(), stager, journal=False) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        ended = (await _events(runner, "j"))[-1].job
        assert ended.state is JobState.SUCCEEDED
        assert ended.summarized_directories == 5

        watch = asyncio.create_task(_events(runner, "j", until_indexed=True))
        for document_id in sorted(stager.stages)[:3]:
            await stager.move(document_id, "indexed")
        await stager.move("dir:j:/b", "failed")
        remaining = [d for d, (s, _, _) in stager.stages.items() if s == "pending"]
        assert len(remaining) == 1
        await stager.move(remaining[0], "indexed")
        events = await watch
        last = events[-1].job
        assert (last.indexed_directories, last.index_failed_directories) == (4, 1)
        counts = [e.job.indexed_directories for e in events]
        assert counts == sorted(counts)
        assert runner.settled(last)


async def test_a_lost_stream_resumes_from_its_cursor_and_a_dropped_log_resyncs(tmp_path: Path) -> None:
    stager = StagesStager()
    async with _runner(tmp_path, CountingProvider(), stager, journal=False) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        assert (await _events(runner, "j"))[-1].job.state is JobState.SUCCEEDED
        ids = sorted(stager.stages)
        await stager.move(ids[0], "indexed")
        await _settled(runner, "j", 1, 0)

        stager.fail_after = 0  # the stream in use fails at its next message
        await stager.move(ids[1], "indexed")
        await stager.move(ids[2], "indexed")
        await _settled(runner, "j", 3, 0)
        assert stager.snapshots == 1  # resumed from the cursor: no snapshot again

        stager.fail_after = 0
        await stager.move(ids[3], "failed")
        stager.drop_log()  # the changes after the cursor are gone: the next stream resyncs
        await stager.move(ids[4], "indexed")
        await _settled(runner, "j", 4, 1)
        assert stager.snapshots == 2


async def test_changes_of_an_earlier_staging_do_not_count(tmp_path: Path) -> None:
    stager = StagesStager()
    async with _runner(tmp_path, CountingProvider(), stager, journal=False) as runner:
        # A job of the same pipeline still enumerating keeps the pipeline's watch open, so the
        # tracker still holds each document's last change when the job runs again.
        runner.submit(SubmitBatch("k", "p", _objects(["k.txt"])))
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        await _events(runner, "j")
        for document_id in sorted(stager.stages):
            await stager.move(document_id, "indexed")
        await _settled(runner, "j", 5, 0)

        # The job again, a/x/1.py changed: a/x, a and the root are staged anew (new tokens) while
        # the stream holds their changes back, so the last change the tracker has of each is the
        # earlier staging's indexed; a/y and b are unchanged and stay indexed.
        stager.flowing.clear()
        changed = [ObjectSpec(path=p, content_hash=f"h2:{p}", kind="code", text=f"Now {p}.") for p in PATHS]
        objects = [changed[0], *_objects(PATHS[1:])]
        runner.submit(SubmitBatch("j", "p", objects, enumeration_complete=True))
        ended = (await _events(runner, "j"))[-1].job
        assert ended.state is JobState.SUCCEEDED
        await _settled(runner, "j", 2, 0)
        restaged = sorted(d for d, (s, _, _) in stager.stages.items() if s == "pending")
        assert restaged == ["dir:j:/", "dir:j:/a", "dir:j:/a/x"]
        assert runner.get("j").indexed_directories == 2
        stager.flowing.set()
        for document_id in restaged:
            await stager.move(document_id, "indexed")
        await _settled(runner, "j", 5, 0)


async def test_a_restarted_runner_settles_from_a_snapshot(tmp_path: Path) -> None:
    stager = StagesStager()
    async with _runner(tmp_path, CountingProvider(), stager) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        await _events(runner, "j")
    # While the summarizer is down: two summaries are indexed, one is deleted.
    ids = sorted(stager.stages)
    await stager.move(ids[0], "indexed")
    await stager.move(ids[1], "indexed")
    await stager.move(ids[2], "")
    async with _runner(tmp_path, CountingProvider(), stager) as runner:
        await _settled(runner, "j", 2, 1)
        await stager.move(ids[3], "indexed")
        await stager.move(ids[4], "failed")
        last = (await _events(runner, "j", until_indexed=True))[-1].job
        assert (last.indexed_directories, last.index_failed_directories) == (3, 2)


async def test_without_tracking_until_indexed_ends_with_the_job(tmp_path: Path) -> None:
    async with _runner(tmp_path, CountingProvider(), MemoryStager(), journal=False) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        events = await _events(runner, "j", until_indexed=True)
        assert events[-1].job.state is JobState.SUCCEEDED
        assert events[-1].job.indexed_directories == 0
