"""PipelineService end to end: client -> gateway -> claimer -> PostgreSQL,
every hop a real process and a real channel."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.rpc_errors import reason
from support.stacks import SliceStack

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.common.errors import InvalidArgument, service_error_from_rpc_error, status_from_rpc_error


def _name(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _violations(error: aio.AioRpcError) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


@pytest.fixture
def stub(gateway_channel: aio.Channel) -> pipeline_pb2_grpc.PipelineServiceStub:
    return pipeline_pb2_grpc.PipelineServiceStub(gateway_channel)


async def test_create_get_defaults(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    pid = _name()
    created = await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    p = created.pipeline
    assert p.id == pid
    assert p.target_namespace == pid.replace("-", "_")
    assert p.distance_metric == pb.DISTANCE_METRIC_COSINE_DISTANCE
    assert p.max_attempts == 5
    assert p.default_lease_seconds == 900
    assert p.queue_backend == pb.QUEUE_BACKEND_SEGMENT
    assert p.sink == pb.SINK_MILVUS_LITE
    assert p.create_time.seconds > 0
    got = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid))
    assert got.pipeline == p


async def test_create_twice_is_already_exists(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    pid = _name()
    request = pb.CreatePipelineRequest(
        pipeline=pb.Pipeline(
            id=pid,
            target_namespace="products",
            distance_metric=pb.DISTANCE_METRIC_EUCLIDEAN_SQUARED,
        )
    )
    first = await stub.CreatePipeline(request)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.CreatePipeline(
            pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid, target_namespace="other"))
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert pid in (caught.value.details() or "")
    assert reason(caught.value) == "ALREADY_EXISTS"
    # Nothing was overwritten by the failed create.
    got = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid))
    assert got.pipeline == first.pipeline
    assert got.pipeline.target_namespace == "products"


@pytest.mark.parametrize(
    ("pipeline", "field"),
    [
        (pb.Pipeline(id=""), "pipeline.id"),
        (pb.Pipeline(id="Upper-Case"), "pipeline.id"),
        (pb.Pipeline(id="ends-with-"), "pipeline.id"),
        (pb.Pipeline(id="x" * 64), "pipeline.id"),
        (pb.Pipeline(id="ok-id", target_namespace="bad namespace"), "pipeline.target_namespace"),
        (pb.Pipeline(id="ok-id", max_attempts=5000), "pipeline.max_attempts"),
        (pb.Pipeline(id="ok-id", default_lease_seconds=100000), "pipeline.default_lease_seconds"),
        (pb.Pipeline(id="ok-id", distance_metric=42), "pipeline.distance_metric"),  # type: ignore[arg-type]
    ],
)
async def test_invalid_create_names_the_field(
    stub: pipeline_pb2_grpc.PipelineServiceStub, pipeline: pb.Pipeline, field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pipeline))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)
    assert [f for f, _ in _violations(caught.value)] == [field]
    rebuilt = service_error_from_rpc_error(caught.value)
    assert isinstance(rebuilt, InvalidArgument)
    assert [v.field for v in rebuilt.violations] == [field]


async def test_missing_pipeline_message(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.CreatePipeline(pb.CreatePipelineRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value)[0][0] == "pipeline"


async def test_not_found(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    pid = _name("missing")
    for call in (
        stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid)),
        stub.DeletePipeline(pb.DeletePipelineRequest(pipeline_id=pid)),
        stub.GetPipelineStatus(pb.GetPipelineStatusRequest(pipeline_id=pid)),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert pid in (caught.value.details() or "")


async def test_list_paginates_in_id_order(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    prefix = f"list-{uuid.uuid4().hex[:6]}"
    ids = sorted(f"{prefix}-{i:02d}" for i in range(7))
    for pid in reversed(ids):
        await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListPipelines(pb.ListPipelinesRequest(page_size=3, page_token=token))
        assert len(page.pipelines) <= 3
        seen.extend(p.id for p in page.pipelines)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen)
    assert [s for s in seen if s.startswith(prefix)] == ids
    assert pages >= 3


async def test_list_rejects_bad_page_arguments(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    for request, field in (
        (pb.ListPipelinesRequest(page_size=-1), "page_size"),
        (pb.ListPipelinesRequest(page_size=5000), "page_size"),
        (pb.ListPipelinesRequest(page_token="not-a-token!"), "page_token"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.ListPipelines(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(caught.value)[0][0] == field


async def test_update_paused_and_reject_immutable(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    pid = _name()
    await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    updated = await stub.UpdatePipeline(
        pb.UpdatePipelineRequest(
            pipeline=pb.Pipeline(id=pid, paused=True, max_attempts=9),
            update_mask=field_mask_pb2.FieldMask(paths=["paused", "max_attempts"]),
        )
    )
    assert updated.pipeline.paused is True
    assert updated.pipeline.max_attempts == 9
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.UpdatePipeline(
            pb.UpdatePipelineRequest(
                pipeline=pb.Pipeline(id=pid, target_namespace="elsewhere"),
                update_mask=field_mask_pb2.FieldMask(paths=["target_namespace"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value)[0][0] == "update_mask"
    got = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid))
    assert got.pipeline.target_namespace == pid.replace("-", "_")


async def test_summaries_enabled_is_stored_and_updatable(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    off = (await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=_name())))).pipeline
    assert off.summaries_enabled is False
    pid = _name()
    created = await stub.CreatePipeline(
        pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid, summaries_enabled=True))
    )
    assert created.pipeline.summaries_enabled is True
    updated = await stub.UpdatePipeline(
        pb.UpdatePipelineRequest(
            pipeline=pb.Pipeline(id=pid, summaries_enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["summaries_enabled"]),
        )
    )
    assert updated.pipeline.summaries_enabled is False
    got = await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid))
    assert got.pipeline.summaries_enabled is False


async def test_delete_removes(stub: pipeline_pb2_grpc.PipelineServiceStub) -> None:
    pid = _name()
    await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    await stub.DeletePipeline(pb.DeletePipelineRequest(pipeline_id=pid))
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=pid))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # The id can be reused once deleted.
    await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))


async def test_status_and_watch_follow_counters(
    stub: pipeline_pb2_grpc.PipelineServiceStub, slice_stack: SliceStack
) -> None:
    pid = _name()
    await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    status = (await stub.GetPipelineStatus(pb.GetPipelineStatusRequest(pipeline_id=pid))).status
    assert status.pipeline_id == pid
    assert dict(status.counts) == {}
    assert status.pending_count == 0

    watch = stub.WatchPipelineStatus(pb.WatchPipelineStatusRequest(pipeline_id=pid, min_interval_ms=50))
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.status.pending_count == 0
    conn = await asyncpg.connect(slice_stack.database_url)
    try:
        await conn.execute(
            "INSERT INTO pipeline_stage_counts (pipeline_id, stage, count) VALUES ($1, 'pending', 142)",
            pid,
        )
        update = await asyncio.wait_for(watch.read(), 10)
        assert update.status.pending_count == 142
        assert update.status.counts["pending"] == 142
        assert update.status.version > first.status.version
    finally:
        watch.cancel()
        await conn.close()
    status = (await stub.GetPipelineStatus(pb.GetPipelineStatusRequest(pipeline_id=pid))).status
    assert status.pending_count == 142


async def test_health_reports_serving(slice_stack: SliceStack) -> None:
    for address, services in (
        (
            slice_stack.gateway_address,
            ["", "hevlayer.api.pipeline.v1.PipelineService", "hevlayer.api.lease.v1.LeaseService"],
        ),
        (slice_stack.claimer_address, ["", "hevlayer.api.pipeline.v1.PipelineService"]),
    ):
        async with aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in services:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (address, service)


async def test_metrics_and_http_health(
    stub: pipeline_pb2_grpc.PipelineServiceStub, slice_stack: SliceStack
) -> None:
    with pytest.raises(aio.AioRpcError):
        await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id=_name("nope")))
    async with aiohttp.ClientSession() as http:
        for base in (slice_stack.gateway_http, slice_stack.claimer_http):
            async with http.get(f"http://{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert 'grpc_code="NOT_FOUND"' in text
            assert 'grpc_method="GetPipeline"' in text
            async with http.get(f"http://{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"http://{base}/readyz") as response:
                assert response.status == 200


async def test_trace_context_crosses_services(
    stub: pipeline_pb2_grpc.PipelineServiceStub, slice_stack: SliceStack
) -> None:
    pid = _name("traced")
    await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
    await asyncio.sleep(0.3)
    spans = [json.loads(line) for line in slice_stack.traces_path.read_text().splitlines() if line]
    create = "hevlayer.api.pipeline.v1.PipelineService/CreatePipeline"
    by_service: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        if span["name"] == create and span["kind"] == "SERVER":
            by_service.setdefault(str(span["service"]), []).append(span)
    gateway_traces = {s["trace_id"] for s in by_service.get("gateway", [])}
    shared = [s for s in by_service.get("claimer", []) if s["trace_id"] in gateway_traces]
    assert shared, "no claimer span shares a trace with a gateway span"
    # The claimer's server span is a child of the gateway's client span for the same call.
    client_ids = {s["span_id"] for s in spans if s["kind"] == "CLIENT" and s["service"] == "gateway"}
    assert any(s["parent_span_id"] in client_ids for s in shared)


def test_logs_are_structured_json(slice_stack: SliceStack) -> None:
    lines = [line for line in slice_stack.gateway.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines
    entries = [json.loads(line) for line in lines]
    rpc_lines = [e for e in entries if e.get("logger") == "hevlayer.rpc"]
    assert rpc_lines
    assert {"time", "level", "service", "message", "grpc_code", "duration_ms", "trace_id"} <= set(
        rpc_lines[-1]
    )
