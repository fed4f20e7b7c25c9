"""The summarizer staging into the real gateway: PostgreSQL, S3, claimer,
gateway and summarizer processes, all on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.api.summary.v1 import summary_pb2 as pb
from hevlayer.api.summary.v1 import summary_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory

GUARD = 60.0


PATHS = ["README.md", "src/a.py", "src/pkg/b.py", "docs/guide.md"]


def _objects(paths: Sequence[str]) -> list[pb.JobObject]:
    return [
        pb.JobObject(path=p, content_hash=f"h:{p}", kind="code", text=f"Module {p}. Details.") for p in paths
    ]


async def _requests(request: pb.SubmitJobRequest) -> AsyncIterator[pb.SubmitJobRequest]:
    yield request


def _summarizer(factory: ServiceFactory, gateway: ServiceProcess, cache_dir: Path) -> ServiceProcess:
    assert gateway.grpc_address is not None
    return factory(
        "hevlayer-summarizer",
        name="summarizer",
        env={
            "SUMMARIZER_GATEWAY_ADDRESS": gateway.grpc_address,
            "SUMMARIZER_CACHE_DIR": str(cache_dir),
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
        },
    )


async def _run_job(summarizer: ServiceProcess, pipeline_id: str, job_id: str) -> pb.Job:
    assert summarizer.grpc_address is not None
    async with open_channel(summarizer.grpc_address) as channel:
        stub = summary_pb2_grpc.SummaryServiceStub(channel)
        request = pb.SubmitJobRequest(
            pipeline_id=pipeline_id, job_id=job_id, objects=_objects(PATHS), enumeration_complete=True
        )
        await stub.SubmitJob(_requests(request), timeout=GUARD)
        updates = [u async for u in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=GUARD)]
        root = (await stub.GetSummary(pb.GetSummaryRequest(job_id=job_id, path=""))).summary
    assert root.document_id == f"dir:{job_id}:/"
    job: pb.Job = updates[-1].job
    return job


async def test_summaries_land_in_the_gateway_and_survive_a_restart(
    database_url: str,
    s3: SeaweedS3,
    s3_bucket: str,
    service_factory: ServiceFactory,
    tmp_path: Path,
) -> None:
    s3_env = s3.client_env(s3_bucket)
    claimer = service_factory(
        "hevlayer-claimer", name="claimer", env={"DATABASE_URL": database_url, **s3_env}, ready_timeout=60
    )
    assert claimer.grpc_address is not None
    gateway = service_factory(
        "hevlayer-gateway",
        name="gateway",
        env={
            "CLAIMER_ADDRESS": claimer.grpc_address,
            "GATEWAY_CACHE_DIR": str(tmp_path / "gw"),
            "GATEWAY_MILVUS_LITE_PATH": str(tmp_path / "vectors.db"),
            # The Job Lane is under test; authentication is in tests/gateway/test_auth.py.
            "GATEWAY_AUTH": "off",
            **s3_env,
        },
        ready_timeout=60,
    )
    assert gateway.grpc_address is not None
    pipeline_id = f"sum-{uuid.uuid4().hex[:8]}"
    async with open_channel(gateway.grpc_address) as channel:
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
        await pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id)), timeout=GUARD
        )

    summarizer = _summarizer(service_factory, gateway, tmp_path / "cache")
    job = await _run_job(summarizer, pipeline_id, "gw")
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert job.summarized_directories == 4

    async with open_channel(gateway.grpc_address) as channel:
        staging = staging_pb2_grpc.StagingServiceStub(channel)
        listed = [
            d
            async for batch in staging.ListDocuments(
                staging_pb2.ListDocumentsRequest(pipeline_id=pipeline_id, id_prefix="dir:gw:"), timeout=GUARD
            )
            for d in batch.documents
        ]
        assert sorted(d.document_id for d in listed) == [
            "dir:gw:/",
            "dir:gw:/docs",
            "dir:gw:/src",
            "dir:gw:/src/pkg",
        ]
        assert all(d.chunk_count == 1 for d in listed)
        before = {d.document_id: (d.fencing_token, d.content_hash) for d in listed}

        # A restart loses the in-memory job; resubmitting the tree rebuilds it from the
        # on-disk cache (no provider call) and the gateway keeps the unchanged documents.
        summarizer.kill()
        summarizer = _summarizer(service_factory, gateway, tmp_path / "cache")
        again = await _run_job(summarizer, pipeline_id, "gw")
        assert again.state == pb.JOB_STATE_SUCCEEDED
        assert again.cache_hits == again.directories
        after = {}
        for document_id in before:
            state = (
                await staging.GetDocument(
                    staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id),
                    timeout=GUARD,
                )
            ).document
            after[document_id] = (state.fencing_token, state.content_hash)
        assert after == before
