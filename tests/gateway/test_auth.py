"""Authentication and authorization on a live claimer + gateway (GATEWAY_AUTH=on).

Tokens are made through TokenService with the admin token the claimer seeds at startup
(CLAIMER_BOOTSTRAP_TOKENS_FILE). Every refusal is checked on both transports where the
route exists: its code, that its message never contains the token, and that it changed
nothing (documents counted in PostgreSQL through GetPipelineStatus, pack objects in S3).
The gateway remembers no token (GATEWAY_AUTH_CACHE_SECONDS=0), so a revocation is
visible to the next call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway.auth_stack import GATEWAY_SERVICES, ROLE_OF, AuthStack, call_method, make_token
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc import aio
from support.pipelines import create_pipeline, unique
from support.s3 import pack_keys
from support.service_http import http_json
from support.staging import document, stage

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.api.claimer.v1 import document_state_pb2, document_state_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.client.methods import ACCESS, Access
from hevlayer.common.auth import bearer_metadata, generate_token
from hevlayer.devstack.testing import claimer_metadata


async def document_counts(admin: aio.Channel, pipeline_id: str) -> dict[str, int]:
    """Documents per stage, as PostgreSQL counts them."""
    response = await pipeline_pb2_grpc.PipelineServiceStub(admin).GetPipelineStatus(
        pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)
    )
    return {stage: count for stage, count in response.status.counts.items() if count}


async def refused(call: object, code: grpc.StatusCode, secret: str | None) -> str:
    """Await ``call``; assert it fails with ``code`` and that the message names no secret."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value
    details = caught.value.details() or ""
    if secret:
        assert secret not in details
        assert secret.split("_", 2)[-1] not in details  # the secret part (it may hold "_")
    return details


def status_request(pipeline_id: str) -> pipeline_pb2.GetPipelineStatusRequest:
    return pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pipeline_id)


async def test_a_call_without_a_token_or_with_an_unknown_one_is_unauthenticated(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    pid = await create_pipeline(admin)
    forged = generate_token().secret
    for token in (None, forged, "not-a-token"):
        async with auth_stack.channel(token) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            await refused(stub.GetPipelineStatus(status_request(pid)), grpc.StatusCode.UNAUTHENTICATED, token)
            await refused(stage(channel, pid, [document("doc-1")]), grpc.StatusCode.UNAUTHENTICATED, token)
    assert await document_counts(admin, pid) == {}
    assert pack_keys(auth_stack.s3, auth_stack.bucket, pid) == []


async def test_a_role_without_the_method_is_denied_and_changes_nothing(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    pid = await create_pipeline(admin)
    reader = await make_token(admin, auth_pb2.ROLE_READER)
    async with auth_stack.channel(reader) as channel:
        details = await refused(
            stage(channel, pid, [document("doc-1")]), grpc.StatusCode.PERMISSION_DENIED, reader
        )
        assert "StageDocuments" in details
        assert "reader" in details
        await refused(
            pipeline_pb2_grpc.PipelineServiceStub(channel).DeletePipeline(
                pipeline_pb2.DeletePipelineRequest(pipeline_id=pid)
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            reader,
        )
        # What the role allows still works.
        await pipeline_pb2_grpc.PipelineServiceStub(channel).GetPipelineStatus(status_request(pid))
    assert await document_counts(admin, pid) == {}
    assert pack_keys(auth_stack.s3, auth_stack.bucket, pid) == []
    got = await pipeline_pb2_grpc.PipelineServiceStub(admin).GetPipeline(
        pipeline_pb2.GetPipelineRequest(pipeline_id=pid)
    )
    assert got.pipeline.id == pid


async def test_a_token_of_other_pipelines_is_denied_and_changes_nothing(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    mine, other = await create_pipeline(admin), await create_pipeline(admin)
    stager = await make_token(admin, auth_pb2.ROLE_STAGER, [mine])
    async with auth_stack.channel(stager) as channel:
        details = await refused(
            stage(channel, other, [document("doc-1")]), grpc.StatusCode.PERMISSION_DENIED, stager
        )
        assert other in details
        await refused(
            pipeline_pb2_grpc.PipelineServiceStub(channel).GetPipelineStatus(status_request(other)),
            grpc.StatusCode.PERMISSION_DENIED,
            stager,
        )
        results = await stage(channel, mine, [document("doc-1")])
        assert [r.outcome for r in results] == [staging_pb2.STAGE_OUTCOME_STAGED]
    assert await document_counts(admin, other) == {}
    assert pack_keys(auth_stack.s3, auth_stack.bucket, other) == []
    assert await document_counts(admin, mine) == {"pending": 1}


async def test_a_stream_is_refused_at_its_first_message_for_another_pipeline(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    mine, other = await create_pipeline(admin), await create_pipeline(admin)
    stager = await make_token(admin, auth_pb2.ROLE_STAGER, [mine])
    async with auth_stack.channel(stager) as channel:
        stub = staging_pb2_grpc.StagingServiceStub(channel)

        async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
            yield staging_pb2.StageDocumentsRequest(pipeline_id=mine, documents=[document("a")])
            yield staging_pb2.StageDocumentsRequest(pipeline_id=other, documents=[document("b")])

        async def run() -> None:
            async for _ in stub.StageDocuments(requests()):
                pass

        await refused(run(), grpc.StatusCode.PERMISSION_DENIED, stager)
    assert await document_counts(admin, other) == {}
    assert pack_keys(auth_stack.s3, auth_stack.bucket, other) == []


async def test_a_revoked_token_is_unauthenticated(auth_stack: AuthStack, admin: aio.Channel) -> None:
    pid = await create_pipeline(admin)
    worker = await make_token(admin, auth_pb2.ROLE_WORKER, [pid])
    tokens = auth_pb2_grpc.TokenServiceStub(admin)
    listed = await tokens.ListTokens(auth_pb2.ListTokensRequest())
    [entry] = [t for t in listed.tokens if worker.startswith(f"hvl_{t.id}_")]
    async with auth_stack.channel(worker) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        await stub.GetPipelineStatus(status_request(pid))
        revoked = await tokens.RevokeToken(auth_pb2.RevokeTokenRequest(token_id=entry.id))
        assert revoked.token.HasField("revoke_time")
        await refused(stub.GetPipelineStatus(status_request(pid)), grpc.StatusCode.UNAUTHENTICATED, worker)
    active = await tokens.ListTokens(auth_pb2.ListTokensRequest())
    assert entry.id not in {t.id for t in active.tokens}
    every = await tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=True))
    assert entry.id in {t.id for t in every.tokens}


async def test_list_pipelines_answers_only_the_tokens_pipelines(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    mine, other = await create_pipeline(admin), await create_pipeline(admin)
    reader = await make_token(admin, auth_pb2.ROLE_READER, [mine])
    async with auth_stack.channel(reader) as channel:
        listed = await pipeline_pb2_grpc.PipelineServiceStub(channel).ListPipelines(
            pipeline_pb2.ListPipelinesRequest(page_size=1000)
        )
    assert [p.id for p in listed.pipelines] == [mine]
    every = await pipeline_pb2_grpc.PipelineServiceStub(admin).ListPipelines(
        pipeline_pb2.ListPipelinesRequest(page_size=1000)
    )
    assert {mine, other} <= {p.id for p in every.pipelines}


async def test_only_admin_manages_tokens_and_no_listing_holds_a_secret(
    auth_stack: AuthStack, admin: aio.Channel
) -> None:
    stager = await make_token(admin, auth_pb2.ROLE_STAGER)
    async with auth_stack.channel(stager) as channel:
        stub = auth_pb2_grpc.TokenServiceStub(channel)
        await refused(
            stub.CreateToken(
                auth_pb2.CreateTokenRequest(name="x", role=auth_pb2.ROLE_ADMIN, all_pipelines=True)
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            stager,
        )
        await refused(
            stub.ListTokens(auth_pb2.ListTokensRequest()), grpc.StatusCode.PERMISSION_DENIED, stager
        )
    listed = await auth_pb2_grpc.TokenServiceStub(admin).ListTokens(
        auth_pb2.ListTokensRequest(include_revoked=True)
    )
    wire = listed.SerializeToString()
    for secret in (stager, auth_stack.admin):
        assert secret.encode() not in wire
        assert secret.split("_", 2)[-1].encode() not in wire


async def test_create_token_names_the_invalid_field(admin: aio.Channel) -> None:
    stub = auth_pb2_grpc.TokenServiceStub(admin)
    for request, field in (
        (auth_pb2.CreateTokenRequest(name="x", all_pipelines=True), "role"),
        (auth_pb2.CreateTokenRequest(name="x", role=auth_pb2.ROLE_READER), "pipeline_ids"),
        (auth_pb2.CreateTokenRequest(name="", role=auth_pb2.ROLE_READER, all_pipelines=True), "name"),
        (
            auth_pb2.CreateTokenRequest(name="x", role=auth_pb2.ROLE_READER, pipeline_ids=["Bad!"]),
            "pipeline_ids[0]",
        ),
    ):
        details = await refused(stub.CreateToken(request), grpc.StatusCode.INVALID_ARGUMENT, None)
        assert details.startswith(f"{field}:"), details


def rest(
    auth_stack: AuthStack, method: str, path: str, token: str | None, body: object = None
) -> tuple[int, object]:
    return http_json(
        method,
        f"http://{auth_stack.gateway_http}{path}",
        body,
        headers={"authorization": f"Bearer {token}"} if token else {},
    )


async def test_rest_checks_the_same_roles_and_pipelines(auth_stack: AuthStack, admin: aio.Channel) -> None:
    mine, other = await create_pipeline(admin), await create_pipeline(admin)
    reader = await make_token(admin, auth_pb2.ROLE_READER, [mine])
    forged = generate_token().secret
    status, body = rest(auth_stack, "GET", f"/v2/pipelines/{mine}/status", reader)
    assert status == 200, body
    for token, code, error in ((None, 401, "UNAUTHENTICATED"), (forged, 401, "UNAUTHENTICATED")):
        status, body = rest(auth_stack, "GET", f"/v2/pipelines/{mine}/status", token)
        assert (status, body["error"]["status"]) == (code, error), body  # type: ignore[index]
        assert forged not in str(body)
    status, body = rest(auth_stack, "GET", f"/v2/pipelines/{other}/status", reader)
    assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED"), body  # type: ignore[index]
    assert reader not in str(body)
    chunks = {"chunks": [{"id": "c0", "text": "some text"}]}
    status, body = rest(auth_stack, "PUT", f"/v2/pipelines/{mine}/documents/doc-1", reader, chunks)
    assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED"), body  # type: ignore[index]
    status, body = rest(auth_stack, "POST", "/v2/pipelines", reader, {"id": unique()})
    assert status == 403, body
    assert await document_counts(admin, mine) == {}
    assert pack_keys(auth_stack.s3, auth_stack.bucket, mine) == []
    # Health, readiness and metrics stay open.
    for path in ("/healthz", "/readyz", "/metrics", "/v2/metrics"):
        status, _ = rest(auth_stack, "GET", path, None)
        assert status == 200, path


def test_rest_answers_401_with_a_bearer_challenge(auth_stack: AuthStack) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{auth_stack.gateway_http}/v2/pipelines/x/status")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    # HEAD runs the GET handler: it is checked as GET.
    head = urllib.request.Request(f"http://{auth_stack.gateway_http}/v2/pipelines/x/status", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(head, timeout=10)
    assert caught.value.code == 401


async def test_the_claimer_answers_only_the_gateway(auth_stack: AuthStack) -> None:
    request = document_state_pb2.GetLiveObjectsRequest(pipeline_id="any", object_keys=["k"])
    for metadata in ([], [("x-hevlayer-internal-token", "wrong-secret-of-some-length")]):
        async with open_channel(auth_stack.claimer_address, metadata=metadata) as channel:
            stub = document_state_pb2_grpc.DocumentStateServiceStub(channel)
            await refused(stub.GetLiveObjects(request), grpc.StatusCode.UNAUTHENTICATED, None)
            # An API token is no way in either.
            tokens = auth_pb2_grpc.TokenServiceStub(channel)
            await refused(
                tokens.ListTokens(auth_pb2.ListTokensRequest(), metadata=[bearer_metadata(auth_stack.admin)]),
                grpc.StatusCode.UNAUTHENTICATED,
                auth_stack.admin,
            )
    async with open_channel(auth_stack.claimer_address, metadata=claimer_metadata()) as channel:
        # With the secret the call reaches the service, which answers for the unknown pipeline.
        stub = document_state_pb2_grpc.DocumentStateServiceStub(channel)
        await refused(stub.GetLiveObjects(request), grpc.StatusCode.NOT_FOUND, None)


def test_the_internal_secret_is_required_to_start_a_claimer(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CLAIMER_INTERNAL_TOKEN"}
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "hevlayer.claimer.main"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert "CLAIMER_INTERNAL_TOKEN" in done.stderr


# -- every public method, every role --------------------------------------------------------------

NOWHERE = "matrix-nowhere"
"""A pipeline that never exists: an admitted call fails in the service and changes nothing."""


def _request(method: Any, access: Access) -> Message:
    request = message_factory.GetMessageClass(method.input_type)()
    if access.pipeline_field is not None:
        *parents, leaf = access.pipeline_field.split(".")
        target = request
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, NOWHERE)
    return request


@pytest.mark.parametrize("role", sorted(ROLE_OF))
async def test_every_public_method_admits_exactly_the_roles_of_its_access_entry(
    auth_stack: AuthStack, admin: aio.Channel, role: str
) -> None:
    token = await make_token(admin, ROLE_OF[role])
    pool = descriptor_pool.Default()
    async with auth_stack.channel(token) as channel:
        for service_name in GATEWAY_SERVICES:
            for method in pool.FindServiceByName(service_name).methods:
                access = ACCESS[f"/{service_name}/{method.name}"]
                code = grpc.StatusCode.OK
                try:
                    await call_method(channel, service_name, method, _request(method, access))
                except aio.AioRpcError as error:
                    code = error.code()
                assert code is not grpc.StatusCode.UNAUTHENTICATED, method.full_name
                denied = code is grpc.StatusCode.PERMISSION_DENIED
                assert denied == (role not in access.roles), (role, method.full_name, code)
    listed = await pipeline_pb2_grpc.PipelineServiceStub(admin).ListPipelines(
        pipeline_pb2.ListPipelinesRequest(page_size=1000)
    )
    assert NOWHERE not in {p.id for p in listed.pipelines}
