"""SummaryService through a real ``hevlayer-summarizer`` process over real channels.

The summarizer stages into a fake gateway StagingService (a real gRPC server
in the test process) or, for the LLM test, calls the fake chat-completions
server. The real gateway's StagingService is exercised separately once the
gateway serves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from summarizer.fakes import FakeLLM, FakeStaging

from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.api.summary.v1 import summary_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory

GUARD = 30.0


@pytest.fixture(scope="module")
async def staging() -> AsyncIterator[FakeStaging]:
    fake = await FakeStaging().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
def summarizer(staging: FakeStaging, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("summarizer")
    factory = ServiceFactory(tmp)
    try:
        yield factory(
            "hevlayer-summarizer",
            name="summarizer",
            env={
                "SUMMARIZER_GATEWAY_ADDRESS": staging.address,
                "SUMMARIZER_CACHE_DIR": str(tmp / "cache"),
                "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
            },
        )
    except BaseException:
        print(factory.report())
        raise
    finally:
        factory.stop_all()


@pytest.fixture
async def stub(summarizer: ServiceProcess) -> AsyncIterator[summary_pb2_grpc.SummaryServiceStub]:
    assert summarizer.grpc_address is not None
    async with open_channel(summarizer.grpc_address) as channel:
        yield summary_pb2_grpc.SummaryServiceStub(channel)


def _objects(paths: Sequence[str]) -> list[pb.JobObject]:
    return [
        pb.JobObject(
            path=p, document_id=f"doc:{p}", content_hash=f"h:{p}", kind="code", text=f"Module {p}. Details."
        )
        for p in paths
    ]


async def _submit(
    stub: summary_pb2_grpc.SummaryServiceStub, batches: Sequence[pb.SubmitJobRequest]
) -> pb.SubmitJobResponse:
    async def requests() -> AsyncIterator[pb.SubmitJobRequest]:
        for batch in batches:
            yield batch

    response: pb.SubmitJobResponse = await stub.SubmitJob(requests(), timeout=GUARD)
    return response


async def _watch(stub: summary_pb2_grpc.SummaryServiceStub, job_id: str) -> list[pb.WatchJobResponse]:
    return [r async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=GUARD)]


def _violations(error: aio.AioRpcError) -> list[str]:
    fields: list[str] = []
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


async def test_submit_watch_get(stub: summary_pb2_grpc.SummaryServiceStub, staging: FakeStaging) -> None:
    paths = ["README.md", "src/a.py", "src/pkg/b.py", "src/pkg/c.py", "docs/guide.md"]
    submitted = await _submit(
        stub,
        [
            pb.SubmitJobRequest(pipeline_id="code", job_id="e2e", objects=_objects(paths[:2])),
            pb.SubmitJobRequest(
                pipeline_id="code", job_id="e2e", objects=_objects(paths[2:]), enumeration_complete=True
            ),
        ],
    )
    assert submitted.job.job_id == "e2e"
    assert submitted.job.objects == 5
    assert submitted.job.directories == 4
    assert submitted.job.create_time.seconds > 0

    updates = await _watch(stub, "e2e")
    final = updates[-1].job
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.summarized_directories == 4
    assert final.HasField("end_time")
    completed = [u.completed_path for u in updates if u.directory_completed]
    # A watch starts from the job as it is now: directories finished before it
    # opened are in that first snapshot's counts, not in updates of their own.
    assert set(completed) <= {"", "docs", "src", "src/pkg"}
    if completed:
        assert completed[-1] == ""  # the root last, in the update that carries SUCCEEDED
    for i, path in enumerate(completed):  # bottom-up: no directory before one of its own
        assert not any(later.startswith(f"{path}/") or path == "" for later in completed[i + 1 :])
    assert not updates[0].directory_completed

    pkg = (await stub.GetSummary(pb.GetSummaryRequest(job_id="e2e", path="src/pkg"))).summary
    assert (pkg.path, pkg.depth, pkg.child_count, pkg.model) == ("src/pkg", 2, 2, "extractive-v1")
    assert "- b.py: Module src/pkg/b.py." in pkg.text
    assert pkg.document_id == "dir:e2e:/src/pkg"
    root = (await stub.GetSummary(pb.GetSummaryRequest(job_id="e2e", path=""))).summary
    assert root.child_count == 3

    # Staged through the (fake) gateway: one document per directory, bottom-up.
    ids = [i for i in staging.order if i.startswith("dir:e2e:")]
    assert sorted(ids) == ["dir:e2e:/", "dir:e2e:/docs", "dir:e2e:/src", "dir:e2e:/src/pkg"]
    assert ids.index("dir:e2e:/src/pkg") < ids.index("dir:e2e:/src") < ids.index("dir:e2e:/")
    document = staging.documents["dir:e2e:/src/pkg"]
    assert document.content_hash == pkg.cache_key
    assert [c.id for c in document.chunks] == ["summary"]
    assert document.chunks[0].text == pkg.text
    assert staging.metadata("dir:e2e:/src/pkg") == {
        "kind": "directory_summary",
        "path": "src/pkg",
        "job_id": "e2e",
    }
    request = next(r for r in staging.requests if r.documents[0].id == "dir:e2e:/src/pkg")
    assert request.pipeline_id == "code"
    assert request.skip_unchanged


async def test_staging_outage_is_retried(
    stub: summary_pb2_grpc.SummaryServiceStub, staging: FakeStaging
) -> None:
    staging.unavailable = 2
    await _submit(
        stub,
        [
            pb.SubmitJobRequest(
                pipeline_id="code", job_id="outage", objects=_objects(["x.py"]), enumeration_complete=True
            )
        ],
    )
    final = (await _watch(stub, "outage"))[-1].job
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert "dir:outage:/" in staging.documents
    assert staging.unavailable == 0


async def test_errors(stub: summary_pb2_grpc.SummaryServiceStub) -> None:
    bad_cases = [
        ([pb.SubmitJobRequest(pipeline_id="code", job_id="", objects=_objects(["a.py"]))], "job_id"),
        (
            [pb.SubmitJobRequest(pipeline_id="code", job_id="bad", objects=_objects(["ok.py", "../x.py"]))],
            "objects[1].path",
        ),
        (
            [
                pb.SubmitJobRequest(pipeline_id="code", job_id="mixed", objects=_objects(["a.py"])),
                pb.SubmitJobRequest(pipeline_id="code", job_id="other", objects=_objects(["b.py"])),
            ],
            "job_id",
        ),
        ([], "job_id"),
    ]
    for batches, field in bad_cases:
        with pytest.raises(aio.AioRpcError) as caught:
            await _submit(stub, batches)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(caught.value) == [field]
        assert (caught.value.details() or "").startswith(field)

    await _submit(
        stub, [pb.SubmitJobRequest(pipeline_id="code", job_id="open", objects=_objects(["a/b.py"]))]
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSummary(pb.GetSummaryRequest(job_id="open", path="a"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "still enumerating" in (caught.value.details() or "")
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSummary(pb.GetSummaryRequest(job_id="open", path="zzz"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSummary(pb.GetSummaryRequest(job_id="nope", path=""))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as caught:
        await _watch(stub, "nope")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    cancelled = (await stub.CancelJob(pb.CancelJobRequest(job_id="open"))).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    # The id of an ended job starts the job anew.
    anew = await _submit(
        stub, [pb.SubmitJobRequest(pipeline_id="code", job_id="open", objects=_objects(["c.py"]))]
    )
    assert (anew.job.state, anew.job.objects) == (pb.JOB_STATE_ENUMERATING, 1)

    await _submit(
        stub,
        [
            pb.SubmitJobRequest(
                pipeline_id="code", job_id="done", objects=_objects(["a.py"]), enumeration_complete=True
            )
        ],
    )
    assert (await _watch(stub, "done"))[-1].job.state == pb.JOB_STATE_SUCCEEDED
    anew = await _submit(
        stub, [pb.SubmitJobRequest(pipeline_id="code", job_id="done", objects=_objects(["b.py"]))]
    )
    assert (anew.job.state, anew.job.objects) == (pb.JOB_STATE_ENUMERATING, 1)


async def test_llm_provider_through_the_process(
    fake_llm: FakeLLM, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    process = service_factory(
        "hevlayer-summarizer",
        name="summarizer-llm",
        env={
            "SUMMARIZER_PROVIDER": "openai",
            "SUMMARIZER_LLM_URL": fake_llm.base_url,
            "SUMMARIZER_LLM_MODEL": "fake-model",
            "SUMMARIZER_LLM_API_KEY": "sk-e2e",
            "SUMMARIZER_GATEWAY_ADDRESS": "",
            "SUMMARIZER_CACHE_DIR": str(tmp_path / "cache"),
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
        },
    )
    fake_llm.api_key = "sk-e2e"
    assert process.grpc_address is not None
    async with open_channel(process.grpc_address) as channel:
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        batch = pb.SubmitJobRequest(
            pipeline_id="code",
            job_id="llm",
            objects=_objects(["a.py", "lib/b.py"]),
            enumeration_complete=True,
        )
        await _submit(stub, [batch])
        assert (await _watch(stub, "llm"))[-1].job.state == pb.JOB_STATE_SUCCEEDED
        root = (await stub.GetSummary(pb.GetSummaryRequest(job_id="llm", path=""))).summary
    assert root.model == "fake-model"
    assert root.text == "LLM summary of 2 children: lib/, a.py."
    assert len(fake_llm.requests) == 2  # lib/ then the root
