"""Per-token rate limits and the seed's REST worker flow on a live claimer + gateway with
GATEWAY_AUTH=on and low limits for two roles (GATEWAY_RATE_LIMITS: stager and reader may make
2 calls, then one every 1000 s; admin and worker keep the generous default).

Every refusal is checked for what the caller is told (gRPC RESOURCE_EXHAUSTED with ErrorInfo
RATE_LIMITED and RetryInfo; REST 429 with Retry-After; the client library's ``retry_after``),
that the token's secret is not in it, and that it changed nothing (documents counted in
PostgreSQL through GetPipelineStatus, pack objects in S3, vectors in the sink through Query).
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from gateway.auth_stack import AuthStack, running_auth_stack
from google.rpc import error_details_pb2
from grpc import aio
from support.pipelines import create_pipeline
from support.s3 import pack_keys
from support.service_http import metric_samples
from support.staging import document, stage

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client import Client
from hevlayer.client.options import ClientOptions
from hevlayer.common.auth import bearer_metadata
from hevlayer.common.errors import ResourceExhausted, status_from_rpc_error
from hevlayer.devstack import SeaweedS3

RATE, BURST = 0.001, 2
LIMITS = f"stager={RATE}:{BURST},reader={RATE}:{BURST}"


@pytest.fixture(scope="module")
def auth_stack(
    database_url: str, s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthStack]:
    """The conftest's ``auth_stack`` (and so ``admin``), with GATEWAY_RATE_LIMITS set."""
    with running_auth_stack(
        database_url, s3, tmp_path_factory.mktemp("ratelimit"), "rate", GATEWAY_RATE_LIMITS=LIMITS
    ) as stack:
        yield stack


async def make_token(admin: aio.Channel, role: auth_pb2.Role.ValueType, pipeline_id: str) -> str:
    response = await auth_pb2_grpc.TokenServiceStub(admin).CreateToken(
        auth_pb2.CreateTokenRequest(
            name=f"test {uuid.uuid4().hex[:6]}", role=role, pipeline_ids=[pipeline_id]
        )
    )
    secret: str = response.secret
    return secret


async def document_counts(admin: aio.Channel, pipeline_id: str) -> dict[str, int]:
    response = await pipeline_pb2_grpc.PipelineServiceStub(admin).GetPipelineStatus(
        pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
    )
    return {stage: count for stage, count in response.status.counts.items() if count}


def retry_info_and_reason(error: aio.AioRpcError) -> tuple[float, str]:
    """RetryInfo's delay (seconds) and ErrorInfo's reason of a failed call's google.rpc.Status."""
    delay, reason = -1.0, ""
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            reason = error_info.reason
    return delay, reason


def put_raw(url: str, data: bytes, token: str) -> tuple[int, Any, str]:
    """A PUT expected to fail: (HTTP status, headers, body text)."""
    request = urllib.request.Request(
        url,
        data=data,
        method="PUT",
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    return caught.value.code, caught.value.headers, caught.value.read().decode()


async def test_grpc_refuses_a_token_over_its_rate_with_retry_info_and_not_another(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    pipeline_id = await create_pipeline(admin)
    busy = await make_token(admin, auth_pb2.ROLE_READER, pipeline_id)
    calm = await make_token(admin, auth_pb2.ROLE_READER, pipeline_id)
    request = pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
    async with auth_stack.channel(busy) as channel, auth_stack.channel(calm) as other:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        for _ in range(BURST):
            await stub.GetPipelineStatus(request)
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.GetPipelineStatus(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
        delay, reason = retry_info_and_reason(caught.value)
        assert reason == "RATE_LIMITED"
        # The next call is admitted when the bucket holds one call again: at most 1 / rate away.
        assert 0 < delay <= 1 / RATE
        details = caught.value.details() or ""
        assert busy not in details
        assert busy.split("_", 2)[-1] not in details
        assert "GATEWAY_RATE_LIMITS" in details
        # Another token of the same role has its own bucket.
        other_stub = pipeline_pb2_grpc.PipelineServiceStub(other)
        for _ in range(BURST):
            await other_stub.GetPipelineStatus(request)
    refusals = metric_samples(auth_stack.gateway_http, "gateway_rate_limited_total")
    assert any(labels == {"role": "reader", "transport": "grpc"} and value >= 1 for labels, value in refusals)
    # The counter is by role and transport only: no token (id or secret) in any label.
    assert all(set(labels) == {"role", "transport"} for labels, _ in refusals)


async def test_the_client_library_surfaces_retry_after_and_a_refused_stage_changes_nothing(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    pipeline_id = await create_pipeline(admin)
    stager = await make_token(admin, auth_pb2.ROLE_STAGER, pipeline_id)
    options = ClientOptions(metadata=[bearer_metadata(stager)])
    async with Client.connect(auth_stack.gateway_address, options) as client:
        for i in range(BURST):
            [result] = await client.staging.stage(pipeline_id, [document(f"doc-{i}")])
            assert result.outcome == staging_pb2.STAGE_OUTCOME_STAGED, result
        counts = await document_counts(admin, pipeline_id)
        packs = pack_keys(auth_stack.s3, auth_stack.bucket, pipeline_id)
        assert counts == {"pending": BURST}
        with pytest.raises(ResourceExhausted) as caught:
            await client.staging.stage(pipeline_id, [document("doc-refused")])
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 1 / RATE
    assert stager not in error.message
    assert await document_counts(admin, pipeline_id) == counts
    assert pack_keys(auth_stack.s3, auth_stack.bucket, pipeline_id) == packs


async def test_rest_answers_429_with_retry_after_and_a_refused_put_changes_nothing(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    pipeline_id = await create_pipeline(admin)
    stager = await make_token(admin, auth_pb2.ROLE_STAGER, pipeline_id)
    path = f"/v2/pipelines/{pipeline_id}/documents"
    chunks = {"chunks": [{"id": "c0", "text": "some text"}]}
    for i in range(BURST):
        status, body = auth_stack.rest("PUT", f"{path}/doc-{i}", stager, chunks)
        assert status == 200, body
    counts = await document_counts(admin, pipeline_id)
    packs = pack_keys(auth_stack.s3, auth_stack.bucket, pipeline_id)
    status, headers, raw = put_raw(
        f"http://{auth_stack.gateway_http}{path}/doc-refused",
        b'{"chunks": [{"id": "c0", "text": "some text"}]}',
        stager,
    )
    assert status == 429, raw
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 1 / RATE
    assert stager not in raw
    assert '"reason": "RATE_LIMITED"' in raw
    assert await document_counts(admin, pipeline_id) == counts
    assert pack_keys(auth_stack.s3, auth_stack.bucket, pipeline_id) == packs
    # The same token is refused on gRPC too: one bucket per token, whatever the transport.
    async with auth_stack.channel(stager) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await pipeline_pb2_grpc.PipelineServiceStub(channel).GetPipelineStatus(
                pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
            )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refusals = metric_samples(auth_stack.gateway_http, "gateway_rate_limited_total")
    assert any(labels == {"role": "stager", "transport": "rest"} and value >= 1 for labels, value in refusals)


# -- The seed's REST flow without worker_id ------------------------------------------------------


def sink_documents(stack: AuthStack, pipeline_id: str) -> set[str]:
    """Ids of the documents with vectors in the pipeline's namespace (a REST Query as admin)."""
    status, body = stack.rest(
        "POST", f"/v2/pipelines/{pipeline_id}/query", stack.admin, {"vector": [1.0, 0.5], "top_k": 100}
    )
    assert status == 200, body
    return {hit["attributes"]["document_id"] for hit in body["hits"]}


async def test_the_seed_rest_flow_without_worker_id_needs_the_worker_role_on_the_pipeline(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    """GET .../chunks and PUT .../vectors without worker_id act as the document's current holder:
    only a worker token of that pipeline (or admin, which ACCESS lets make every call) may."""
    pipeline_id, other_id = await create_pipeline(admin), await create_pipeline(admin)
    await stage(admin, pipeline_id, [document("doc-w", 2), document("doc-a", 2)])
    worker = await make_token(admin, auth_pb2.ROLE_WORKER, pipeline_id)
    status, body = auth_stack.rest(
        "POST",
        f"/v2/pipelines/{pipeline_id}/claim",
        worker,
        {"stage": "pending", "claim_stage": "embedding", "limit": 10, "worker_id": "gpu-worker-0"},
    )
    assert status == 200, body
    assert await document_counts(admin, pipeline_id) == {"embedding": 2}
    # Created after the claim: these tokens' buckets are full, so each refusal below is the role's.
    outsiders = {
        "stager": await make_token(admin, auth_pb2.ROLE_STAGER, pipeline_id),
        "reader": await make_token(admin, auth_pb2.ROLE_READER, pipeline_id),
        "worker of another pipeline": await make_token(admin, auth_pb2.ROLE_WORKER, other_id),
    }
    base = f"/v2/pipelines/{pipeline_id}/documents"

    def vectors(doc_id: str) -> dict[str, Any]:
        return {"vectors": [{"id": f"{doc_id}-{j}", "vector": [1.0, float(j)]} for j in range(2)]}

    for who, token in outsiders.items():
        status, body = auth_stack.rest("GET", f"{base}/doc-w/chunks", token)
        assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED"), (who, body)
        status, body = auth_stack.rest("PUT", f"{base}/doc-w/vectors", token, vectors("doc-w"))
        assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED"), (who, body)
        assert token not in str(body)
    # Refused: still claimed, nothing in the sink.
    assert await document_counts(admin, pipeline_id) == {"embedding": 2}
    assert sink_documents(auth_stack, pipeline_id) == set()

    # The worker token of the pipeline: the seed's calls as they are, without worker_id.
    status, body = auth_stack.rest("GET", f"{base}/doc-w/chunks", worker)
    assert status == 200, body
    assert [chunk["id"] for chunk in body["chunks"]] == ["doc-w-0", "doc-w-1"]
    status, body = auth_stack.rest("PUT", f"{base}/doc-w/vectors", worker, vectors("doc-w"))
    assert status == 200, body
    assert (body["outcome"], body["stage"], body["vectors_written"]) == ("indexed", "indexed", 2), body
    # Admin may too (ACCESS: admin may make every call).
    status, body = auth_stack.rest("PUT", f"{base}/doc-a/vectors", auth_stack.admin, vectors("doc-a"))
    assert status == 200, body
    assert await document_counts(admin, pipeline_id) == {"indexed": 2}
    assert sink_documents(auth_stack, pipeline_id) == {"doc-w", "doc-a"}
