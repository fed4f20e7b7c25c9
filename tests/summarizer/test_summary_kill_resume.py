"""A summarizer SIGKILLed in the middle of a job resumes it from its journal.

The summarizer process (an OpenAI-compatible fake LLM as its provider, one
fold at a time) stages into the live suite's gateway, whose embedder worker
embeds the summaries. Two directories are summarized, the third is held in
the LLM when the process is killed; restarted on the same cache directory, it
carries the job on without a resubmission, folds only the directories not
finished yet, and its success hooks count every summary indexed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from pathlib import Path

from support.fakes.llm import FakeLLM

from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.client import Client, Pipeline
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import LiveSuite, ServiceFactory

GUARD = 180.0  # hang guard, not a timing assertion
PATHS = ["a/x/one.py", "a/y/two.py", "a/three.py", "b/four.md", "top.txt"]
DIRECTORIES = ["", "a", "a/x", "a/y", "b"]
_CHILD = re.compile(r"^### (\S+) \(", re.M)


def _children(request: dict[str, object]) -> tuple[str, ...]:
    messages = request["messages"]
    assert isinstance(messages, list)
    user = next(m["content"] for m in messages if m["role"] == "user")
    return tuple(_CHILD.findall(user))


async def _watch(address: str, job_id: str, until: int) -> pb.Job:
    """Follow the job until ``until`` directories are summarized (or it ends)."""
    async with Client.connect(address) as client:
        job = pb.Job()
        async for update in client.summaries.watch_job(job_id, timeout=GUARD):
            job = update.job
            if job.summarized_directories >= until:
                break
        return job


async def test_a_killed_summarizer_resumes_without_redoing_finished_directories(
    live_suite: LiveSuite, fake_llm: FakeLLM, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    pipeline = f"resume-{uuid.uuid4().hex[:6]}"
    job_id = f"kill-{uuid.uuid4().hex[:6]}"
    async with Client.connect(live_suite.gateway) as gateway:
        await gateway.pipelines.create(Pipeline(id=pipeline))

    fake_llm.hold = asyncio.Event()
    fake_llm.hold_after = 2
    summarizer: ServiceProcess = service_factory(
        "hevlayer-summarizer",
        name="summarizer-resume",
        env={
            "SUMMARIZER_PROVIDER": "openai",
            "SUMMARIZER_LLM_URL": fake_llm.base_url,
            "SUMMARIZER_LLM_MODEL": "fake-model",
            "SUMMARIZER_GATEWAY_ADDRESS": live_suite.gateway,
            "SUMMARIZER_CACHE_DIR": str(tmp_path / "cache"),
            "SUMMARIZER_WORKERS": "1",
            "SUMMARIZER_SUMMARY_CONCURRENCY": "1",
            "SUMMARIZER_INDEX_POLL_SECONDS": "0.2",
        },
    )
    assert summarizer.grpc_address is not None
    objects = [pb.JobObject(path=p, kind="code", content_hash=f"h:{p}", text=f"About {p}.") for p in PATHS]
    async with Client.connect(summarizer.grpc_address) as client:
        submitted = await client.summaries.submit_job(pipeline, job_id, [objects], timeout=GUARD)
    assert submitted.directories == len(DIRECTORIES)

    before = await asyncio.wait_for(_watch(summarizer.grpc_address, job_id, until=2), GUARD)
    assert before.state == pb.JOB_STATE_RUNNING
    await asyncio.wait_for(fake_llm.wait_in_flight(1), GUARD)  # the third directory, held
    assert len(fake_llm.requests) == 3
    finished_before = [_children(r) for r in fake_llm.requests[:2]]

    summarizer.kill()
    fake_llm.hold.set()
    summarizer.restart()
    await asyncio.to_thread(summarizer.wait_ready)
    assert summarizer.grpc_address is not None

    async with Client.connect(summarizer.grpc_address) as client:
        final = pb.Job()
        async for update in client.summaries.watch_job(job_id, until_indexed=True, timeout=GUARD):
            final = update.job
        root = await client.summaries.get_summary(job_id, "", timeout=GUARD)
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.summarized_directories == len(DIRECTORIES)
    # The success hooks: every summary reached "indexed" through the live suite's embedder.
    assert (final.indexed_directories, final.index_failed_directories) == (len(DIRECTORIES), 0)
    assert root.text.startswith("LLM summary of")

    # Each directory was asked of the LLM once, but the one held when the process died, twice.
    asked = Counter(_children(r) for r in fake_llm.requests)
    assert len(fake_llm.requests) == len(DIRECTORIES) + 1
    for children in finished_before:
        assert asked[children] == 1
    assert sorted(asked.values()) == [1] * (len(DIRECTORIES) - 1) + [2]

    async with Client.connect(live_suite.gateway) as gateway:
        states = {
            d.document_id: d.stage
            async for d in gateway.staging.list_documents(pipeline, id_prefix=f"dir:{job_id}:/")
        }
    assert states == {f"dir:{job_id}:/{d}": "indexed" for d in DIRECTORIES}
