"""SummaryService through a real ``hevlayer-summarizer`` process over real channels.

The summarizer stages into the live suite's real gateway (whose embedder worker
indexes the summaries), except in the staging-outage test, whose gateway is
a fake that refuses the first streams (the real one cannot be made to); the
LLM test calls the fake chat-completions server (no LLM runs here).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc import aio
from support.fakes.llm import FakeLLM
from support.fakes.staging import StagingOutage
from support.pipelines import create_pipeline
from support.polling import eventually

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.api.summary.v1 import summary_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import LiveSuite, ServiceFactory

GUARD = 30.0
PIPELINE = f"summaries-{uuid.uuid4().hex[:8]}"
"""The live gateway's pipeline the summaries are staged into (its embedder worker indexes them)."""


@pytest.fixture(scope="module")
async def gateway(live_suite: LiveSuite) -> AsyncIterator[aio.Channel]:
    """A channel to the live suite's gateway, where ``PIPELINE`` exists."""
    async with open_channel(live_suite.gateway) as channel:
        await create_pipeline(channel, PIPELINE)
        yield channel


def start_summarizer(tmp: Path, gateway_address: str) -> tuple[ServiceFactory, ServiceProcess]:
    factory = ServiceFactory(tmp)
    try:
        return factory, factory(
            "hevlayer-summarizer",
            name="summarizer",
            env={
                "SUMMARIZER_GATEWAY_ADDRESS": gateway_address,
                "SUMMARIZER_CACHE_DIR": str(tmp / "cache"),
                "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
            },
        )
    except BaseException:
        print(factory.report())
        factory.stop_all()
        raise


@pytest.fixture(scope="module")
def summarizer(
    live_suite: LiveSuite, gateway: aio.Channel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A summarizer staging into the live suite's gateway."""
    factory, process = start_summarizer(tmp_path_factory.mktemp("summarizer"), live_suite.gateway)
    try:
        yield process
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


async def test_submit_watch_get(stub: summary_pb2_grpc.SummaryServiceStub, gateway: aio.Channel) -> None:
    paths = ["README.md", "src/a.py", "src/pkg/b.py", "src/pkg/c.py", "docs/guide.md"]
    submitted = await _submit(
        stub,
        [
            pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="e2e", objects=_objects(paths[:2])),
            pb.SubmitJobRequest(
                pipeline_id=PIPELINE, job_id="e2e", objects=_objects(paths[2:]), enumeration_complete=True
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

    # Staged through the gateway: one document per directory, bottom-up, each one chunk
    # "summary" holding the summary's text and metadata; the embedder worker indexes them.
    listing = staging_pb2_grpc.StagingServiceStub(gateway).ListDocuments(
        staging_pb2.ListDocumentsRequest(pipeline_id=PIPELINE, id_prefix="dir:e2e:"), timeout=GUARD
    )
    staged = {d.document_id: d async for batch in listing for d in batch.documents}
    assert sorted(staged) == ["dir:e2e:/", "dir:e2e:/docs", "dir:e2e:/src", "dir:e2e:/src/pkg"]
    assert all(d.chunk_count == 1 for d in staged.values())
    assert staged["dir:e2e:/src/pkg"].content_hash == pkg.cache_key
    times = [staged[i].update_time.ToNanoseconds() for i in ("dir:e2e:/src/pkg", "dir:e2e:/src", "dir:e2e:/")]
    assert times == sorted(times)

    index = index_pb2_grpc.IndexServiceStub(gateway)

    async def indexed() -> bool:
        response = await staging_pb2_grpc.StagingServiceStub(gateway).GetDocument(
            staging_pb2.GetDocumentRequest(pipeline_id=PIPELINE, document_id="dir:e2e:/src/pkg"),
            timeout=GUARD,
        )
        return bool(response.document.stage == "indexed")

    await eventually(indexed, timeout=120, what="the summary of src/pkg indexed")
    only_pkg = struct_pb2.Struct()
    only_pkg.update({"document_id": "dir:e2e:/src/pkg"})
    [hit] = (
        await index.Query(
            index_pb2.QueryRequest(pipeline_id=PIPELINE, text=pkg.text, top_k=5, filter=only_pkg),
            timeout=GUARD,
        )
    ).hits
    assert hit.chunk_id == "summary"
    attributes = dict(hit.attributes)
    assert attributes["text"] == pkg.text
    assert {k: attributes[k] for k in ("kind", "path", "job_id")} == {
        "kind": "directory_summary",
        "path": "src/pkg",
        "job_id": "e2e",
    }


async def test_staging_outage_is_retried(tmp_path: Path) -> None:
    staging = await StagingOutage(unavailable=2).start()
    factory, process = start_summarizer(tmp_path, staging.address)
    try:
        assert process.grpc_address is not None
        async with open_channel(process.grpc_address) as channel:
            stub = summary_pb2_grpc.SummaryServiceStub(channel)
            await _submit(
                stub,
                [
                    pb.SubmitJobRequest(
                        pipeline_id=PIPELINE,
                        job_id="outage",
                        objects=_objects(["x.py"]),
                        enumeration_complete=True,
                    )
                ],
            )
            final = (await _watch(stub, "outage"))[-1].job
    finally:
        factory.stop_all()
        await staging.stop()
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert "dir:outage:/" in staging.documents
    assert staging.unavailable == 0


async def test_errors(stub: summary_pb2_grpc.SummaryServiceStub) -> None:
    bad_cases = [
        ([pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="", objects=_objects(["a.py"]))], "job_id"),
        (
            [pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="bad", objects=_objects(["ok.py", "../x.py"]))],
            "objects[1].path",
        ),
        (
            [
                pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="mixed", objects=_objects(["a.py"])),
                pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="other", objects=_objects(["b.py"])),
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
        stub, [pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="open", objects=_objects(["a/b.py"]))]
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
        stub, [pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="open", objects=_objects(["c.py"]))]
    )
    assert (anew.job.state, anew.job.objects) == (pb.JOB_STATE_ENUMERATING, 1)

    await _submit(
        stub,
        [
            pb.SubmitJobRequest(
                pipeline_id=PIPELINE, job_id="done", objects=_objects(["a.py"]), enumeration_complete=True
            )
        ],
    )
    assert (await _watch(stub, "done"))[-1].job.state == pb.JOB_STATE_SUCCEEDED
    anew = await _submit(
        stub, [pb.SubmitJobRequest(pipeline_id=PIPELINE, job_id="done", objects=_objects(["b.py"]))]
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
            pipeline_id=PIPELINE,
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
