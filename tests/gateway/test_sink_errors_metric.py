"""``hevlayer_gateway_sink_errors_total{sink,operation}``: failed sink calls are counted where they
happen, refusals of invalid input are not, and the default sink's series exist at 0 from the start.

The stack's Turbopuffer sink points at a port nobody listens on; its default sink is Milvus Lite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from support.leases import claim, write_vectors
from support.pipelines import create_pipeline
from support.service_http import metric_samples
from support.stacks import GatewayStack, unreachable_turbopuffer
from support.staging import document, stage

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2

METRIC = "hevlayer_gateway_sink_errors_total"
OPERATIONS = ("open", "describe", "write", "delete", "query")
DIM = 4


@pytest.fixture(scope="module")
def gateway_env() -> dict[str, str]:
    return unreachable_turbopuffer()


@pytest.fixture
async def channel(gateway_stack: GatewayStack) -> AsyncIterator[aio.Channel]:
    chan = aio.insecure_channel(gateway_stack.gateway_address)
    try:
        yield chan
    finally:
        await chan.close()


def sink_errors(stack: GatewayStack) -> dict[tuple[str, str], float]:
    """(sink, operation) -> count, from the gateway's /metrics."""
    return {
        (labels["sink"], labels["operation"]): value
        for labels, value in metric_samples(stack.gateway_http, METRIC)
    }


async def write_one(channel: aio.Channel, pipeline_id: str, doc: document_pb2.Document, token: int) -> None:
    """WriteVectors of one document (one vector per chunk)."""
    vectors = [document_pb2.Vector(id=chunk.id, values=[1.0] * DIM) for chunk in doc.chunks]
    await write_vectors(channel, pipeline_id, doc.id, token, vectors)


async def test_the_default_sinks_series_exist_at_zero(gateway_stack: GatewayStack) -> None:
    errors = sink_errors(gateway_stack)
    assert {op: errors.get(("milvus_lite", op)) for op in OPERATIONS} == dict.fromkeys(OPERATIONS, 0.0)


async def test_failed_sink_calls_are_counted_by_sink_and_operation(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel, sink=pipeline_pb2.SINK_TURBOPUFFER)
    doc = document("unreachable")
    await stage(channel, pid, [doc])
    leases = await claim(channel, pid)
    before = sink_errors(gateway_stack)

    with pytest.raises(aio.AioRpcError) as write_error:
        await write_one(channel, pid, doc, leases[doc.id])
    assert write_error.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(aio.AioRpcError) as query_error:
        await index_pb2_grpc.IndexServiceStub(channel).Query(
            ix.QueryRequest(pipeline_id=pid, vector=ix.QueryVector(values=[1.0] * DIM), top_k=3)
        )
    assert query_error.value.code() is grpc.StatusCode.UNAVAILABLE

    after = sink_errors(gateway_stack)
    increased = {
        key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)
    }
    # the write fails at its first sink call (the namespace's description), the query at the query
    assert increased == {("turbopuffer", "describe"): 1.0, ("turbopuffer", "query"): 1.0}


async def test_a_refused_query_is_not_a_sink_error(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    doc = document("fine", chunks=1)
    await stage(channel, pid, [doc])
    leases = await claim(channel, pid)
    await write_one(channel, pid, doc, leases[doc.id])
    before = sink_errors(gateway_stack)
    with pytest.raises(aio.AioRpcError) as refused:
        # a vector of the wrong dimension: the sink refuses it as invalid input
        await index_pb2_grpc.IndexServiceStub(channel).Query(
            ix.QueryRequest(pipeline_id=pid, vector=ix.QueryVector(values=[1.0] * (DIM + 1)), top_k=3)
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert sink_errors(gateway_stack) == before
