"""BindSinkInstance over real gRPC: the first binding of a pipeline wins (also under concurrent
binds), later ones get it back, deleting the pipeline deletes it, and bad requests name the field."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc import aio
from support.claimer_grpc import new_pipeline
from support.rpc_errors import violations

from hevlayer.api.claimer.v1 import document_state_pb2 as dpb
from hevlayer.api.claimer.v1 import document_state_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc


async def bind(channel: aio.Channel, pipeline_id: str, instance_id: str, kind: str = "milvus_lite") -> str:
    """Bind ``pipeline_id`` to ``instance_id`` (location ``host:<instance_id>``); the instance id
    of the binding in force, after checking its location matches it."""
    response = await document_state_pb2_grpc.DocumentStateServiceStub(channel).BindSinkInstance(
        dpb.BindSinkInstanceRequest(
            pipeline_id=pipeline_id,
            instance=dpb.SinkInstance(kind=kind, instance_id=instance_id, location=f"host:{instance_id}"),
        )
    )
    assert response.bound.location == f"host:{response.bound.instance_id}", response
    assert response.bound.kind == kind, response
    assert response.HasField("bind_time"), response
    return str(response.bound.instance_id)


async def test_the_first_binding_wins_and_is_returned_to_every_later_bind(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    assert await bind(channel, pid, "instance-a") == "instance-a"
    assert await bind(channel, pid, "instance-b") == "instance-a"
    assert await bind(channel, pid, "instance-a") == "instance-a"
    # Another pipeline is bound on its own.
    other = await new_pipeline(channel)
    assert await bind(channel, other, "instance-b") == "instance-b"


async def test_concurrent_binds_agree_on_one_instance(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    wanted = [f"instance-{i}" for i in range(12)]
    answers = await asyncio.gather(*(bind(channel, pid, instance) for instance in wanted))
    assert len(set(answers)) == 1, answers
    assert answers[0] in wanted


async def test_a_deleted_pipeline_loses_its_binding(channel: aio.Channel) -> None:
    pid = await new_pipeline(channel)
    assert await bind(channel, pid, "instance-a") == "instance-a"
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.DeletePipeline(ppb.DeletePipelineRequest(pipeline_id=pid))
    with pytest.raises(aio.AioRpcError) as gone:
        await bind(channel, pid, "instance-b")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.CreatePipeline(ppb.CreatePipelineRequest(pipeline=ppb.Pipeline(id=pid)))
    assert await bind(channel, pid, "instance-b") == "instance-b"


@pytest.mark.parametrize(
    ("pipeline_id", "kind", "instance_id", "field"),
    [
        ("", "milvus_lite", "i", "pipeline_id"),
        ("bad\x00id", "milvus_lite", "i", "pipeline_id"),
        ("p", "", "i", "instance.kind"),
        ("p", "lancedb", "i", "instance.kind"),
        ("p", "milvus_lite", "", "instance.instance_id"),
        ("p", "milvus_lite", "x" * 5000, "instance.instance_id"),
        ("p", "milvus_lite", "i\x00", "instance.instance_id"),
    ],
)
async def test_a_bad_bind_is_invalid_argument_naming_the_field(
    channel: aio.Channel, pipeline_id: str, kind: str, instance_id: str, field: str
) -> None:
    pid = pipeline_id if pipeline_id != "p" else await new_pipeline(channel)
    with pytest.raises(aio.AioRpcError) as refused:
        await bind(channel, pid, instance_id, kind)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    assert violations(refused.value) == [field], refused.value


async def test_binding_an_unknown_pipeline_is_not_found(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as missing:
        await bind(channel, f"nope-{uuid.uuid4().hex[:8]}", "instance-a")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
