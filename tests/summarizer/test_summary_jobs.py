"""The job runner with an in-memory Stager: bottom-up folding, cache reuse
across jobs, failures, cancellation, fairness, gates, errors and retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from hevlayer.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from hevlayer.ingest.transform import TransformationCache
from hevlayer.summarizer.gates import Gate
from hevlayer.summarizer.jobs import JobEvent, JobLimits, JobRunner, JobSnapshot, JobState, SubmitBatch
from hevlayer.summarizer.providers import ChildInput, ExtractiveProvider, ProviderError, SummaryProvider
from hevlayer.summarizer.staging import MemoryStager, StagedSummary, StageError
from hevlayer.summarizer.tree import ObjectSpec, parent_of

GUARD = 30.0  # hang guard for awaits, not a timing assertion

PATHS = [
    "README.md",
    "src/app/main.py",
    "src/app/util.py",
    "src/app/deep/er/x.py",
    "src/lib/store.go",
    "docs/index.md",
    "docs/api/v1.md",
    "tools/build.sh",
]


def _objects(paths: Sequence[str] = PATHS, text: Callable[[str], str] | None = None) -> list[ObjectSpec]:
    return [
        ObjectSpec(
            path=p,
            document_id=f"doc:{p}",
            content_hash=f"hash:{p}",
            kind="code" if p.endswith((".py", ".go", ".sh")) else "text",
            text=text(p) if text else f"About {p}. More detail.",
        )
        for p in paths
    ]


def _directories(paths: Sequence[str]) -> set[str]:
    dirs = {""}
    for p in paths:
        parent = parent_of(p)
        while parent is not None:
            dirs.add(parent)
            parent = parent_of(parent)
    return dirs


class ScriptedProvider(SummaryProvider):
    """The extractive provider, counting calls, optionally failing or holding."""

    def __init__(
        self, fail_if: Callable[[Sequence[ChildInput]], bool] | None = None, hold: asyncio.Event | None = None
    ) -> None:
        self.inner = ExtractiveProvider()
        self.model = self.inner.model
        self.fail_if = fail_if
        self.hold = hold
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.started = asyncio.Event()

    @property
    def prompt_version(self) -> str:
        return self.inner.prompt_version

    async def summarize(self, children: Sequence[ChildInput]) -> str:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.fail_if is not None and self.fail_if(children):
                raise ProviderError("scripted provider failure")
            return await self.inner.summarize(children)
        finally:
            self.in_flight -= 1


class FailingStager(MemoryStager):
    def __init__(self, fail_paths: set[str]) -> None:
        super().__init__()
        self.fail_paths = fail_paths

    async def stage(self, summary: StagedSummary) -> int:
        if summary.path in self.fail_paths:
            raise StageError("scripted staging failure")
        return await super().stage(summary)


@contextlib.asynccontextmanager
async def _runner(
    tmp_path: Path,
    provider: SummaryProvider | None = None,
    stager: MemoryStager | None = None,
    **kwargs: object,
) -> AsyncIterator[JobRunner]:
    cache = TransformationCache(location=tmp_path / "transformations", max_bytes=1 << 24)
    kwargs.setdefault("gate", Gate("summary", 4))
    runner = JobRunner(
        provider or ScriptedProvider(),
        cache,
        stager if stager is not None else MemoryStager(),
        **kwargs,  # type: ignore[arg-type]
    )
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        cache.close()


async def _events(runner: JobRunner, job_id: str) -> list[JobEvent]:
    async def collect() -> list[JobEvent]:
        return [event async for event in runner.watch(job_id)]

    return await asyncio.wait_for(collect(), GUARD)


async def _run(
    runner: JobRunner, job_id: str, objects: Sequence[ObjectSpec], pipeline: str = "p"
) -> JobSnapshot:
    runner.submit(SubmitBatch(job_id, pipeline, objects, enumeration_complete=True))
    events = await _events(runner, job_id)
    return events[-1].job


async def test_folds_bottom_up_and_stages_each_directory_once(tmp_path: Path) -> None:
    stager = MemoryStager()
    async with _runner(tmp_path, stager=stager) as runner:
        first = runner.submit(SubmitBatch("j1", "p", _objects()[:3]))
        assert first.state is JobState.ENUMERATING
        watch = asyncio.create_task(_events(runner, "j1"))
        await asyncio.sleep(0)
        runner.submit(SubmitBatch("j1", "p", _objects()[3:], enumeration_complete=True))
        events = await watch
        final = events[-1].job
        dirs = _directories(PATHS)
        assert final.state is JobState.SUCCEEDED
        assert (final.objects, final.directories, final.summarized_directories) == (
            len(PATHS),
            len(dirs),
            len(dirs),
        )
        assert final.failed_directories == 0
        assert final.end_time is not None
        assert {e.completed_path for e in events if e.completed_path is not None} == dirs
        assert events[-1].completed_path == ""  # the root is last, and its event carries SUCCEEDED
        # Staged exactly once each, every parent after all of its sub-directories.
        staged_paths = [stager.documents[doc_id].path for doc_id in stager.order]
        assert sorted(staged_paths) == sorted(dirs)
        position = {p: i for i, p in enumerate(staged_paths)}
        for path in dirs - {""}:
            parent = parent_of(path)
            assert parent is not None
            assert position[path] < position[parent]
        root = stager.documents["dir:j1:/"]
        assert root.metadata == {"kind": "directory_summary", "path": "", "job_id": "j1"}
        assert stager.documents["dir:j1:/src/app"].metadata["path"] == "src/app"
        summary = runner.summary("j1", "src/app")
        assert summary.depth == 2
        assert summary.child_count == 3
        assert summary.document_id == "dir:j1:/src/app"
        assert summary.cache_key == stager.documents["dir:j1:/src/app"].cache_key
        assert "- main.py: About src/app/main.py." in summary.text
        assert "- deep/:" in summary.text
        assert runner.summary("j1", "").text.startswith("Directory of 1 file (text 1) and 3 sub-directories.")


async def test_identical_trees_reuse_the_cache_and_changes_recompute_only_ancestors(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    async with _runner(tmp_path, provider=provider) as runner:
        first = await _run(runner, "a", _objects())
        calls = provider.calls
        assert calls == first.directories
        second = await _run(runner, "b", _objects())
        assert second.state is JobState.SUCCEEDED
        assert provider.calls == calls  # nothing recomputed
        assert second.cache_hits == second.directories
        assert runner.summary("b", "").text == runner.summary("a", "").text
        assert runner.summary("b", "src").cache_key == runner.summary("a", "src").cache_key

        def changed(path: str) -> str:
            return "Rewritten entirely." if path == "src/app/deep/er/x.py" else f"About {path}. More detail."

        third = await _run(runner, "c", _objects(text=changed))
        # src/app/deep/er, src/app/deep, src/app, src and the root: 5 directories.
        assert provider.calls == calls + 5
        assert third.cache_hits == third.directories - 5
        assert runner.summary("c", "docs").cache_key == runner.summary("a", "docs").cache_key
        assert runner.summary("c", "src").cache_key != runner.summary("a", "src").cache_key


async def test_a_failed_directory_does_not_block_its_parent(tmp_path: Path) -> None:
    provider = ScriptedProvider(fail_if=lambda children: any(c.name == "store.go" for c in children))
    async with _runner(tmp_path, provider=provider) as runner:
        final = await _run(runner, "j", _objects())
        assert final.state is JobState.FAILED
        assert final.failed_directories == 1
        assert final.summarized_directories == final.directories - 1
        with pytest.raises(FailedPrecondition, match="scripted provider failure"):
            runner.summary("j", "src/lib")
        assert "- lib/: (summary unavailable)" in runner.summary("j", "src").text


async def test_a_staging_failure_fails_the_directory(tmp_path: Path) -> None:
    stager = FailingStager({"docs/api"})
    async with _runner(tmp_path, stager=stager) as runner:
        final = await _run(runner, "j", _objects())
        assert final.state is JobState.FAILED
        assert final.failed_directories == 1
        with pytest.raises(FailedPrecondition, match="scripted staging failure"):
            runner.summary("j", "docs/api")
        assert "dir:j:/docs" in stager.documents


async def test_cancel_stops_the_job(tmp_path: Path) -> None:
    hold = asyncio.Event()
    provider = ScriptedProvider(hold=hold)
    stager = MemoryStager()
    async with _runner(tmp_path, provider=provider, stager=stager) as runner:
        runner.submit(SubmitBatch("slow", "p", _objects(), enumeration_complete=True))
        watch = asyncio.create_task(_events(runner, "slow"))

        await asyncio.wait_for(provider.started.wait(), GUARD)
        with pytest.raises(AlreadyExists, match="'slow' already exists and is running"):
            runner.submit(SubmitBatch("slow", "p", _objects()))
        cancelled = runner.cancel("slow")
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.end_time is not None
        events = await watch
        assert events[-1].job.state is JobState.CANCELLED
        assert runner.cancel("slow") == runner.get("slow")  # idempotent
        hold.set()
        # Another job through the same runner is a barrier: once it is done, any
        # leftover work of the cancelled job would have run.
        assert (await _run(runner, "after", _objects(["x.txt"]))).state is JobState.SUCCEEDED
        assert runner.get("slow").summarized_directories == 0
        assert not [d for d in stager.order if d.startswith("dir:slow:")]
        with pytest.raises(FailedPrecondition, match="cancelled"):
            runner.summary("slow", "")
        # The id of an ended job starts the job anew.
        anew = runner.submit(SubmitBatch("slow", "p", _objects(["one.txt"])))
        assert (anew.state, anew.objects, anew.summarized_directories) == (JobState.ENUMERATING, 1, 0)


async def test_a_small_job_is_not_starved_by_a_large_deep_one(tmp_path: Path) -> None:
    big = [f"{'/'.join(['d'] * depth)}/leaf{i}/f.py" for depth in range(1, 6) for i in range(12)]
    async with _runner(tmp_path, workers=1) as runner:
        runner.submit(SubmitBatch("big", "p", _objects(big), enumeration_complete=True))
        runner.submit(SubmitBatch("small", "p", _objects(["README.md"]), enumeration_complete=True))
        small = await _events(runner, "small")
        assert small[-1].job.state is JobState.SUCCEEDED
        big_now = runner.get("big")
        assert big_now.state is JobState.RUNNING
        assert big_now.summarized_directories < big_now.directories
        assert (await _events(runner, "big"))[-1].job.state is JobState.SUCCEEDED


async def test_the_summary_gate_bounds_provider_calls_across_jobs(tmp_path: Path) -> None:
    gate = Gate("summary", 2)
    full = asyncio.Event()

    class GatedProbe(ScriptedProvider):
        async def summarize(self, children: Sequence[ChildInput]) -> str:
            if self.in_flight + 1 >= gate.limit:
                full.set()
            self.in_flight += 1
            try:
                await full.wait()  # hold until the gate is full once
            finally:
                self.in_flight -= 1
            self.calls += 1
            self.peak = max(self.peak, gate.peak)
            return await self.inner.summarize(children)

    provider = GatedProbe()
    async with _runner(tmp_path, provider=provider, gate=gate, workers=8) as runner:
        for n in range(3):

            def text(path: str, n: int = n) -> str:
                return f"Job {n} file {path}."

            objects = _objects(text=text)
            runner.submit(SubmitBatch(f"j{n}", "p", objects, enumeration_complete=True))
        for n in range(3):
            assert (await _events(runner, f"j{n}"))[-1].job.state is JobState.SUCCEEDED
    assert gate.peak == 2
    assert gate.in_flight == 0


async def test_errors_name_the_field(tmp_path: Path) -> None:
    limits = JobLimits(max_objects=5, max_text_bytes=100)
    async with _runner(tmp_path, limits=limits) as runner:
        cases: list[tuple[SubmitBatch, str]] = [
            (SubmitBatch("", "p"), "job_id"),
            (SubmitBatch("x" * 129, "p"), "job_id"),
            (SubmitBatch("j\n", "p"), "job_id"),
            (SubmitBatch("j", ""), "pipeline_id"),
            (SubmitBatch("j", "p", [ObjectSpec("ok.txt"), ObjectSpec("../etc/passwd")]), "objects[1].path"),
            (SubmitBatch("j", "p", [ObjectSpec("a/./b")]), "objects[0].path"),
            (SubmitBatch("j", "p", [ObjectSpec("a.txt", text="x" * 101)]), "objects[0].text"),
            (SubmitBatch("j", "p", [ObjectSpec(f"f{i}") for i in range(6)]), "objects"),
            (SubmitBatch("j", "p", [ObjectSpec("/".join(["d" * 100] * 6) + "/f")]), "objects[0].path"),
        ]
        for batch, field in cases:
            with pytest.raises(InvalidArgument) as caught:
                runner.submit(batch)
            assert [v.field for v in caught.value.violations] == [field], batch
            assert caught.value.message.startswith(field)
        with pytest.raises(NotFound):
            runner.get("j")  # no rejected batch created the job

        runner.submit(SubmitBatch("j", "p", [ObjectSpec("a/b.txt")]))
        with pytest.raises(InvalidArgument) as caught:
            runner.submit(SubmitBatch("j", "other", [ObjectSpec("c.txt")]))
        assert caught.value.violations[0].field == "pipeline_id"
        with pytest.raises(InvalidArgument) as caught:
            runner.submit(SubmitBatch("j", "p", [ObjectSpec("a/b.txt/c")]))
        assert caught.value.violations[0].field == "objects[0].path"
        with pytest.raises(FailedPrecondition, match="still enumerating"):
            runner.summary("j", "a")
        with pytest.raises(NotFound, match="no directory"):
            runner.summary("j", "nope")
        with pytest.raises(InvalidArgument) as caught:
            runner.summary("j", "a/../b")
        assert caught.value.violations[0].field == "path"
        with pytest.raises(NotFound, match="'missing' not found"):
            runner.summary("missing", "")
        with pytest.raises(NotFound):
            runner.cancel("missing")
        with pytest.raises(NotFound):
            await anext(aiter(runner.watch("missing")))

        final = await _run(runner, "j", [ObjectSpec("c.txt")])
        assert final.objects == 2
        assert final.state is JobState.SUCCEEDED
        anew = runner.submit(SubmitBatch("j", "p", [ObjectSpec("d.txt")]))
        assert (anew.state, anew.objects) == (JobState.ENUMERATING, 1)


async def test_retention_forgets_ended_jobs_and_cancels_idle_ones(tmp_path: Path) -> None:
    now = [1000.0]
    async with _runner(tmp_path, retention_seconds=60.0, clock=lambda: now[0]) as runner:
        await _run(runner, "done", _objects(["a.txt"]))
        runner.submit(SubmitBatch("idle", "p", _objects(["b.txt"])))
        now[0] += 30
        runner.sweep()
        assert runner.get("done").state is JobState.SUCCEEDED
        now[0] += 31
        runner.sweep()
        with pytest.raises(NotFound):
            runner.get("done")
        assert runner.get("idle").state is JobState.CANCELLED
        now[0] += 61
        runner.sweep()
        with pytest.raises(NotFound):
            runner.get("idle")


async def test_watch_of_an_ended_job_and_shutdown(tmp_path: Path) -> None:
    async with _runner(tmp_path) as runner:
        await _run(runner, "ended", _objects(["a.txt"]))
        events = await _events(runner, "ended")
        assert len(events) == 1
        assert events[0].job.state is JobState.SUCCEEDED
        runner.submit(SubmitBatch("open", "p", _objects(["a.txt"])))
        watch = asyncio.create_task(_events(runner, "open"))
        await asyncio.sleep(0)
        runner.close_watchers()
        events = await watch
        assert [e.job.state for e in events] == [JobState.ENUMERATING]
