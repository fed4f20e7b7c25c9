"""The job journal (a restarted runner resumes its jobs without refolding finished
directories) and the success hook (the completion tracker advances
indexed_directories from the summaries' document stages)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from hevlayer.ingest.transform import TransformationCache
from hevlayer.summarizer.gates import Gate
from hevlayer.summarizer.jobs import JobEvent, JobRunner, JobState, SubmitBatch
from hevlayer.summarizer.journal import EVENTS_FILE, JobJournal
from hevlayer.summarizer.providers import ChildInput, ExtractiveProvider, SummaryProvider
from hevlayer.summarizer.staging import MemoryStager, StagedSummary
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


class StagesStager(MemoryStager):
    """An in-memory stager that reports the document stages a test sets."""

    tracks_indexing = True

    def __init__(self) -> None:
        super().__init__()
        self.stages: dict[str, str] = {}
        self.asked = 0

    async def stage(self, summary: StagedSummary) -> None:
        await super().stage(summary)
        self.stages[summary.document_id] = "pending"

    async def document_stages(self, pipeline_id: str, id_prefix: str) -> dict[str, str] | None:
        self.asked += 1
        return {d: s for d, s in self.stages.items() if d.startswith(id_prefix)}


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


async def test_success_hooks_advance_the_indexed_count(tmp_path: Path) -> None:
    stager = StagesStager()
    async with _runner(tmp_path, CountingProvider(), stager, journal=False) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        ended = (await _events(runner, "j"))[-1].job
        assert ended.state is JobState.SUCCEEDED
        assert ended.summarized_directories == 5

        watch = asyncio.create_task(_events(runner, "j", until_indexed=True))
        for document_id in sorted(stager.stages)[:3]:
            stager.stages[document_id] = "indexed"
        stager.stages["dir:j:/b"] = "failed"
        remaining = [d for d, s in stager.stages.items() if s == "pending"]
        assert len(remaining) == 1
        stager.stages[remaining[0]] = "indexed"
        events = await watch
        last = events[-1].job
        assert (last.indexed_directories, last.index_failed_directories) == (4, 1)
        counts = [e.job.indexed_directories for e in events]
        assert counts == sorted(counts)
        assert runner.settled(last)


async def test_without_tracking_until_indexed_ends_with_the_job(tmp_path: Path) -> None:
    async with _runner(tmp_path, CountingProvider(), MemoryStager(), journal=False) as runner:
        runner.submit(SubmitBatch("j", "p", _objects(), enumeration_complete=True))
        events = await _events(runner, "j", until_indexed=True)
        assert events[-1].job.state is JobState.SUCCEEDED
        assert events[-1].job.indexed_directories == 0
