"""Role x RPC x pipeline: every token against every public method and REST route.

Two real pipelines, A and B, hold indexed vectors (Milvus Lite, the gateway's sink in
``auth_stack``), leased documents and pending ones. For each role there are three tokens:
scoped to A, to A and B, and to every pipeline; besides them, no token and a revoked token.
Each token makes a well-formed request, one that would change state if admitted (stage, claim,
write vectors, delete documents, delete the pipeline...), against B:

- on every method of every service the gateway serves, read from the proto descriptors (a new
  RPC has no request below and fails the test until it gets one);
- on every REST route of :meth:`hevlayer.gateway.rest.RestApi.access_routes`.

The outcome expected comes from :data:`hevlayer.client.methods.ACCESS`: an admitted call is
answered anything but UNAUTHENTICATED / PERMISSION_DENIED (401 / 403); a refused one exactly
UNAUTHENTICATED (no token, a revoked one) or PERMISSION_DENIED (role or pipeline), its message
never naming the secret. Every token's refusals run first, between two snapshots of the state
that must be equal: PostgreSQL rows (pipelines, documents with their leases, segments, backing
objects, tokens), every object key in the bucket, and the vectors the sink holds for A and B.
The admitted calls run afterwards, the destructive ones last.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from gateway.auth_stack import GATEWAY_SERVICES, ROLE_OF, AuthStack, call_method, make_token
from google.protobuf import descriptor_pool, field_mask_pb2
from google.protobuf.message import Message
from grpc import aio
from support.leases import WORKER, claim
from support.pipelines import create_pipeline
from support.s3 import bucket_keys
from support.service_http import http_json
from support.staging import document, stage
from support.vectors import DIM, embed

from hevlayer.api.auth.v1 import auth_pb2, auth_pb2_grpc
from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client.methods import ACCESS, TOKEN_SERVICE, Access
from hevlayer.common.auth import ADMIN
from hevlayer.gateway.rest import RestApi

CLAIM_STAGE = "embedding"
DESTRUCTIVE = ("WriteVectors", "TransitionDocuments", "DeleteDocuments", "RevokeToken", "DeletePipeline")
"""Admitted calls of these methods run after every other admitted call, in this order."""


@dataclass
class World:
    """Pipelines A and B with indexed, leased and pending documents."""

    a: str
    b: str
    leases: dict[str, int]
    """B's leased documents (in ``embedding``, held by WORKER) → fencing token."""
    documents: list[str]
    """Every document of B."""
    throwaway_token_id: str
    """A token RevokeToken may revoke."""


@dataclass(frozen=True)
class Token:
    label: str
    secret: str | None
    role: str | None
    """None: no token or a revoked one (UNAUTHENTICATED whatever the call)."""
    scope: frozenset[str] | None
    """The pipelines of the token; None: every pipeline."""


def chunk_vectors(doc_id: str, chunks: int = 3) -> list[document_pb2.Vector]:
    return [document_pb2.Vector(id=f"{doc_id}-{j}", values=embed(f"{doc_id} {j}")) for j in range(chunks)]


async def write_vectors(channel: aio.Channel, pipeline_id: str, leases: dict[str, int]) -> None:
    async def requests() -> AsyncIterator[index_pb2.WriteVectorsRequest]:
        for doc_id, token in leases.items():
            yield index_pb2.WriteVectorsRequest(
                pipeline_id=pipeline_id,
                worker_id=WORKER,
                from_stage=CLAIM_STAGE,
                lease=document_pb2.LeaseRef(document_id=doc_id, fencing_token=token),
                vectors=chunk_vectors(doc_id),
                end_of_document=True,
            )

    response = await index_pb2_grpc.IndexServiceStub(channel).WriteVectors(requests())
    assert [r.outcome for r in response.results] == [index_pb2.WRITE_OUTCOME_INDEXED] * len(leases)


async def populate(admin: aio.Channel, pipeline_id: str) -> tuple[dict[str, int], list[str]]:
    """Two indexed documents (vectors in the sink), two leased ones, eight pending ones (every
    admitted claim takes one)."""
    indexed = [document(f"idx-{i}") for i in range(2)]
    await stage(admin, pipeline_id, indexed)
    await write_vectors(admin, pipeline_id, await claim(admin, pipeline_id))
    leased = [document(f"lease-{i}") for i in range(2)]
    await stage(admin, pipeline_id, leased)
    leases = await claim(admin, pipeline_id, lease_seconds=3600)
    assert sorted(leases) == [d.id for d in leased]
    pending = [document(f"pend-{i}") for i in range(8)]
    await stage(admin, pipeline_id, pending)
    return leases, [d.id for d in indexed + leased + pending]


# -- the state a refused call must leave as it was -----------------------------------------------

TABLES = {
    "pipelines": "SELECT * FROM pipelines ORDER BY id",
    "pipeline_stage_counts": "SELECT * FROM pipeline_stage_counts",
    "documents": "SELECT * FROM documents ORDER BY pipeline_id, document_id",
    "queue_segments": "SELECT * FROM queue_segments ORDER BY segment_id",
    "backing_objects": "SELECT * FROM backing_objects",
    "segment_garbage": "SELECT * FROM segment_garbage",
    "api_tokens": "SELECT * FROM api_tokens ORDER BY id",
}


async def snapshot(
    database: asyncpg.Connection, auth_stack: AuthStack, admin: aio.Channel, world: World
) -> dict[str, object]:
    """PostgreSQL's rows, S3's keys and the sink's vectors of A and B."""
    state: dict[str, object] = {}
    for table, sql in TABLES.items():
        state[table] = sorted(repr(tuple(row.values())) for row in await database.fetch(sql))
    state["s3"] = bucket_keys(auth_stack.s3, auth_stack.bucket)
    index = index_pb2_grpc.IndexServiceStub(admin)
    for pipeline_id in (world.a, world.b):
        response = await index.Query(
            index_pb2.QueryRequest(
                pipeline_id=pipeline_id, vector=index_pb2.QueryVector(values=[1.0] * DIM), top_k=1000
            )
        )
        state[f"sink {pipeline_id}"] = sorted((h.document_id, h.chunk_id) for h in response.hits)
    return state


# -- a meaningful request of every method, against B ---------------------------------------------


def lease_refs(world: World) -> list[document_pb2.LeaseRef]:
    return [document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in sorted(world.leases.items())]


def grpc_requests(world: World) -> dict[str, Callable[[], Message]]:
    """Method name → a request against B (CreatePipeline: a new pipeline, outside every scope
    but ``all``)."""
    b = world.b
    first_lease = sorted(world.leases.items())[0]
    return {
        "CreatePipeline": lambda: pipeline_pb2.CreatePipelineRequest(
            pipeline=pipeline_pb2.Pipeline(id=f"{b}-new-{uuid.uuid4().hex[:6]}")
        ),
        "GetPipeline": lambda: pipeline_pb2.GetPipelineRequest(pipeline_id=b),
        "ListPipelines": lambda: pipeline_pb2.ListPipelinesRequest(page_size=1000),
        "UpdatePipeline": lambda: pipeline_pb2.UpdatePipelineRequest(
            pipeline=pipeline_pb2.Pipeline(id=b, paused=True),
            update_mask=field_mask_pb2.FieldMask(paths=["paused"]),
        ),
        "DeletePipeline": lambda: pipeline_pb2.DeletePipelineRequest(pipeline_id=b),
        "GetPipelineStatus": lambda: pipeline_pb2.GetPipelineStatusRequest(pipeline_id=b),
        "WatchPipelineStatus": lambda: pipeline_pb2.WatchPipelineStatusRequest(pipeline_id=b),
        "StageDocuments": lambda: staging_pb2.StageDocumentsRequest(
            pipeline_id=b, documents=[document(f"new-{uuid.uuid4().hex[:6]}")]
        ),
        "EnqueueDocuments": lambda: staging_pb2.EnqueueDocumentsRequest(
            pipeline_id=b, documents=[staging_pb2.EnqueuedDocument(document_id=f"enq-{uuid.uuid4().hex[:6]}")]
        ),
        "ReadChunks": lambda: staging_pb2.ReadChunksRequest(
            pipeline_id=b, worker_id=WORKER, stage=CLAIM_STAGE, leases=lease_refs(world)
        ),
        "GetDocument": lambda: staging_pb2.GetDocumentRequest(pipeline_id=b, document_id=world.documents[0]),
        "ListDocuments": lambda: staging_pb2.ListDocumentsRequest(pipeline_id=b),
        "WatchDocuments": lambda: staging_pb2.WatchDocumentsRequest(pipeline_id=b),
        "DeleteDocuments": lambda: staging_pb2.DeleteDocumentsRequest(
            pipeline_id=b, document_ids=world.documents
        ),
        "ClaimDocuments": lambda: lease_pb2.ClaimDocumentsRequest(
            pipeline_id=b, stage="pending", claim_stage=CLAIM_STAGE, limit=1, worker_id=WORKER
        ),
        "HeartbeatLeases": lambda: lease_pb2.HeartbeatLeasesRequest(
            pipeline_id=b, stage=CLAIM_STAGE, worker_id=WORKER, leases=lease_refs(world), lease_seconds=60
        ),
        "TransitionDocuments": lambda: lease_pb2.TransitionDocumentsRequest(
            pipeline_id=b,
            documents=lease_refs(world),
            from_stage=CLAIM_STAGE,
            worker_id=WORKER,
            to_stage="failed",
            reason="matrix",
        ),
        "StreamLeases": lambda: lease_pb2.StreamLeasesRequest(
            open=lease_pb2.StreamLeasesOpen(
                pipeline_id=b, stage="pending", claim_stage=CLAIM_STAGE, worker_id=WORKER, initial_credits=1
            )
        ),
        "WriteVectors": lambda: index_pb2.WriteVectorsRequest(
            pipeline_id=b,
            worker_id=WORKER,
            from_stage=CLAIM_STAGE,
            lease=document_pb2.LeaseRef(document_id=first_lease[0], fencing_token=first_lease[1]),
            vectors=chunk_vectors(first_lease[0]),
            end_of_document=True,
        ),
        "Query": lambda: index_pb2.QueryRequest(
            pipeline_id=b, vector=index_pb2.QueryVector(values=embed("query")), top_k=10
        ),
        "CreateToken": lambda: auth_pb2.CreateTokenRequest(
            name="matrix escalation", role=auth_pb2.ROLE_ADMIN, all_pipelines=True
        ),
        "ListTokens": lambda: auth_pb2.ListTokensRequest(include_revoked=True),
        "RevokeToken": lambda: auth_pb2.RevokeTokenRequest(token_id=world.throwaway_token_id),
    }


def rest_requests(world: World) -> dict[tuple[str, str], Callable[[], tuple[str, object]]]:
    """(HTTP method, route) → (path, JSON body) against B."""
    b = world.b
    p = f"/v2/pipelines/{b}"
    first, token = sorted(world.leases.items())[0]
    ids = sorted(world.leases)
    tokens = [world.leases[d] for d in ids]
    t = "/v2/pipelines/{pipeline_id}"
    return {
        ("POST", "/v2/pipelines"): lambda: ("/v2/pipelines", {"id": f"{b}-new-{uuid.uuid4().hex[:6]}"}),
        ("GET", t + "/status"): lambda: (p + "/status", None),
        ("POST", t + "/claim"): lambda: (
            p + "/claim",
            {"stage": "pending", "claim_stage": CLAIM_STAGE, "limit": 1, "worker_id": WORKER},
        ),
        ("POST", t + "/documents/heartbeat"): lambda: (
            p + "/documents/heartbeat",
            {"document_ids": ids, "stage": CLAIM_STAGE, "worker_id": WORKER, "fencing_tokens": tokens},
        ),
        ("POST", t + "/documents/stage"): lambda: (
            p + "/documents/stage",
            {
                "document_ids": ids,
                "stage": "failed",
                "from_stage": CLAIM_STAGE,
                "worker_id": WORKER,
                "fencing_tokens": tokens,
            },
        ),
        ("PUT", t + "/documents/{document_id}"): lambda: (
            f"{p}/documents/new-{uuid.uuid4().hex[:6]}",
            {"chunks": [{"id": "c0", "text": "some text"}]},
        ),
        ("GET", t + "/documents/{document_id}/chunks"): lambda: (
            f"{p}/documents/{first}/chunks?worker_id={WORKER}&stage={CLAIM_STAGE}&fencing_token={token}",
            None,
        ),
        ("PUT", t + "/documents/{document_id}/vectors"): lambda: (
            f"{p}/documents/{first}/vectors",
            {
                "vectors": [{"id": v.id, "vector": list(v.values)} for v in chunk_vectors(first)],
                "worker_id": WORKER,
                "from_stage": CLAIM_STAGE,
                "fencing_token": token,
            },
        ),
        ("POST", t + "/query"): lambda: (p + "/query", {"vector": embed("query"), "top_k": 10}),
    }


# -- making a call -------------------------------------------------------------------------------


async def call(
    channel: aio.Channel, service: str, method: Any, request: Message
) -> tuple[grpc.StatusCode, str]:
    """Make the call (a stream: until its first answer); its status code and message."""
    try:
        await call_method(channel, service, method, request)
    except aio.AioRpcError as error:
        details = error.details() or ""
        assert_no_secret(details)
        return error.code(), details
    return grpc.StatusCode.OK, ""


SECRETS: set[str] = set()
"""Every secret of the module's tokens: no answer may contain one."""


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret.split("_", 2)[-1] not in text  # hvl_<id>_<secret>: the secret part alone


def expected(token: Token, service: str, access: Access, target: str | None) -> grpc.StatusCode | None:
    """The refusal ``token`` must get (None: admitted)."""
    if token.role is None:
        return grpc.StatusCode.UNAUTHENTICATED
    if token.role != ADMIN and token.role not in access.roles:
        return grpc.StatusCode.PERMISSION_DENIED
    if target is not None and token.scope is not None and target not in token.scope:
        return grpc.StatusCode.PERMISSION_DENIED
    if service == TOKEN_SERVICE and token.scope is not None:
        # A token of some pipelines may not mint or revoke tokens (of every pipeline).
        return grpc.StatusCode.PERMISSION_DENIED
    return None


def target_of(request: Message, access: Access) -> str | None:
    if access.pipeline_field is None:
        return None
    value: Any = request
    for name in access.pipeline_field.split("."):
        value = getattr(value, name)
    return str(value)


def order(method_name: str) -> int:
    """When an admitted call of ``method_name`` runs: 0 first, destructive ones later."""
    return DESTRUCTIVE.index(method_name) + 1 if method_name in DESTRUCTIVE else 0


REST_CODE = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}


@pytest.fixture(scope="module")
async def database(auth_stack: AuthStack, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


ROLES = ("admin", "stager", "worker", "reader")


@pytest.mark.parametrize("who", [*ROLES, "no token", "revoked token"])
async def test_every_token_on_every_method_and_route_is_admitted_or_refused_and_changes_nothing(
    auth_stack: AuthStack, admin: aio.Channel, database: asyncpg.Connection, who: str
) -> None:
    a, b = await create_pipeline(admin), await create_pipeline(admin)
    await populate(admin, a)
    leases, documents = await populate(admin, b)
    throwaway = await auth_pb2_grpc.TokenServiceStub(admin).CreateToken(
        auth_pb2.CreateTokenRequest(name="matrix throwaway", role=auth_pb2.ROLE_READER, pipeline_ids=[a])
    )
    world = World(a, b, leases, documents, throwaway.token.id)
    SECRETS.update({auth_stack.admin, throwaway.secret})

    tokens: list[Token] = []
    if who in ROLES:
        role = auth_pb2.ROLE_ADMIN if who == "admin" else ROLE_OF[who]
        for label, scope in (("A", [a]), ("A+B", [a, b]), ("all", [])):
            secret = await make_token(admin, role, scope)
            tokens.append(Token(f"{who} {label}", secret, who, frozenset(scope) if scope else None))
    elif who == "no token":
        tokens.append(Token(who, None, None, None))
    else:
        secret = await make_token(admin, auth_pb2.ROLE_ADMIN)
        listed = await auth_pb2_grpc.TokenServiceStub(admin).ListTokens(auth_pb2.ListTokensRequest())
        [entry] = [t for t in listed.tokens if secret.startswith(f"hvl_{t.id}_")]
        await auth_pb2_grpc.TokenServiceStub(admin).RevokeToken(
            auth_pb2.RevokeTokenRequest(token_id=entry.id)
        )
        tokens.append(Token(who, secret, None, None))
    SECRETS.update(t.secret for t in tokens if t.secret)

    pool = descriptor_pool.Default()
    requests = grpc_requests(world)
    routes = rest_requests(world)
    assert set(routes) == set(RestApi.access_routes()), "a REST route has no request in this matrix"
    admitted: list[tuple[int, str, Callable[[], Any]]] = []
    refusals = 0
    for token in tokens:
        before = await snapshot(database, auth_stack, admin, world)
        channel = auth_stack.channel(token.secret)
        try:
            for service_name in GATEWAY_SERVICES:
                for method in pool.FindServiceByName(service_name).methods:
                    assert method.name in requests, f"{method.full_name} has no request in this matrix"
                    access = ACCESS[f"/{service_name}/{method.name}"]
                    request = requests[method.name]()
                    want = expected(token, service_name, access, target_of(request, access))
                    what = f"{token.label}: {method.full_name}"
                    if want is None:
                        rank = order(method.name)

                        async def admitted_call(
                            token: Token = token, service: str = service_name, m: Any = method
                        ) -> tuple[grpc.StatusCode, str]:
                            async with auth_stack.channel(token.secret) as ch:
                                return await call(ch, service, m, requests[m.name]())

                        admitted.append((rank, what, admitted_call))
                        continue
                    got, details = await call(channel, service_name, method, request)
                    assert got == want, (what, got, details)
                    refusals += 1
        finally:
            await channel.close()
        for (verb, route), grpc_method in RestApi.access_routes().items():
            access = ACCESS[grpc_method]
            path, body = routes[verb, route]()
            target = body["id"] if isinstance(body, dict) and grpc_method in RestApi.PIPELINE_IN_BODY else b
            want = expected(token, grpc_method.split("/")[1], access, target)
            what = f"{token.label}: {verb} {route}"
            headers = {"authorization": f"Bearer {token.secret}"} if token.secret else {}
            if want is None:

                async def admitted_route(
                    verb: str = verb, path: str = path, body: object = body, headers: dict[str, str] = headers
                ) -> tuple[int, str]:
                    status, answer = http_json(
                        verb, f"http://{auth_stack.gateway_http}{path}", body, headers=headers
                    )
                    return status, str(answer)

                admitted.append((order(grpc_method.rsplit("/", 1)[1]), what, admitted_route))
                continue
            status, answer = http_json(verb, f"http://{auth_stack.gateway_http}{path}", body, headers=headers)
            assert status == REST_CODE[want], (what, status, answer)
            assert answer["error"]["status"] == want.name, (what, answer)
            assert_no_secret(str(answer))
            refusals += 1
        after = await snapshot(database, auth_stack, admin, world)
        for key in before:
            assert after[key] == before[key], f"{token.label}'s refused calls changed {key}"

    # What the role may do, it may do (the destructive calls last: they end the world).
    admitted.sort(key=lambda entry: entry[0])
    for _, what, run in admitted:
        got, details = await run()
        assert got not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, 401, 403), (
            what,
            got,
            details,
        )
    if who in ("no token", "revoked token"):
        assert admitted == []
    assert refusals > 0
