"""``POST /v2/pipelines/{id}/query`` against a live gateway (real claimer, PostgreSQL,
SeaweedFS, Milvus Lite, and the live suite's real embedder for text and for the
vectors written): text and vector queries, filters, top_k, errors naming the field, the same hits as
IndexService.Query, and every answer checked against docs/openapi.yaml."""

from __future__ import annotations

from typing import Any

import pytest
from gateway.openapi_check import check, errors, request_schema
from google.protobuf import struct_pb2
from grpc import aio
from support.pipelines import unique
from support.service_http import http_json
from support.stacks import GatewayStack, unreachable_turbopuffer
from support.vectors import model_vectors

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.devstack.testing import LiveSuite
from hevlayer.gateway.openapi import openapi_document

P = "/v2/pipelines/{pipeline_id}"
QUERY = P + "/query"
DOCUMENTS = 3
CHUNKS = 3


@pytest.fixture(scope="module")
def gateway_env(live_suite: LiveSuite) -> dict[str, str]:
    """The gateway embeds with the live suite's embedder; its Turbopuffer sink cannot be reached."""
    return {
        "EMBEDDER_ADDRESS": live_suite.services["embedder"],
        **unreachable_turbopuffer(),
    }


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return openapi_document()


def chunk_text(document: int, chunk: int) -> str:
    return f"chunk {chunk} of document {document}"


@pytest.fixture(scope="module")
async def vectors(live_suite: LiveSuite) -> dict[str, list[float]]:
    """Each chunk text's vector from the live suite's model."""
    texts = [chunk_text(d, c) for d in range(DOCUMENTS) for c in range(CHUNKS)]
    return dict(zip(texts, await model_vectors(live_suite.services["embedder"], texts), strict=True))


@pytest.fixture(scope="module")
def indexed(gateway_stack: GatewayStack, vectors: dict[str, list[float]]) -> str:
    """A pipeline of 3 documents x 3 chunks, indexed through the REST routes: each
    chunk's vector is the model's vector of its text, with attributes text, page and lang."""
    base = gateway_stack.base_url
    pid = unique("query")
    status, body = http_json("POST", f"{base}/v2/pipelines", {"id": pid})
    assert status == 201, body
    for d in range(DOCUMENTS):
        chunks = [
            {"id": f"doc-{d}-{c}", "text": chunk_text(d, c), "metadata": {"page": c}} for c in range(CHUNKS)
        ]
        status, body = http_json("PUT", f"{base}/v2/pipelines/{pid}/documents/doc-{d}", {"chunks": chunks})
        assert status == 200, body
    status, body = http_json(
        "POST",
        f"{base}/v2/pipelines/{pid}/claim",
        {"claim_stage": "embedding", "worker_id": "w", "limit": 10},
    )
    assert status == 200, body
    assert len(body["documents"]) == DOCUMENTS, body
    for d in range(DOCUMENTS):
        rows = [
            {
                "id": f"doc-{d}-{c}",
                "vector": vectors[chunk_text(d, c)],
                "attributes": {"text": chunk_text(d, c), "page": c, "lang": "en" if d < 2 else "de"},
            }
            for c in range(CHUNKS)
        ]
        status, body = http_json(
            "PUT", f"{base}/v2/pipelines/{pid}/documents/doc-{d}/vectors", {"vectors": rows}
        )
        assert status == 200, body
        assert body["outcome"] == "indexed", body
    return pid


def query(stack: GatewayStack, pipeline_id: str, body: Any) -> tuple[int, Any]:
    return http_json("POST", f"{stack.base_url}/v2/pipelines/{pipeline_id}/query", body)


def hits_of(spec: dict[str, Any], status: int, body: Any) -> list[dict[str, Any]]:
    """The hits of a 200 answer, checked against the OpenAPI document."""
    assert status == 200, body
    check(spec, QUERY, "post", 200, body)
    hits: list[dict[str, Any]] = body["hits"]
    return hits


def test_vector_query(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any], vectors: dict[str, list[float]]
) -> None:
    status, body = query(gateway_stack, indexed, {"vector": vectors[chunk_text(1, 2)], "top_k": 3})
    hits = hits_of(spec, status, body)
    assert body["pipeline_id"] == indexed
    assert len(hits) == 3
    best = hits[0]
    assert (best["document_id"], best["chunk_id"]) == ("doc-1", "doc-1-2")
    assert best["score"] == pytest.approx(1.0, abs=1e-4)
    assert best["attributes"] == {
        "text": chunk_text(1, 2),
        "page": 2,
        "lang": "en",
        "document_id": "doc-1",
        "chunk_id": "doc-1-2",
    }
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_text_query_is_embedded_by_the_embedding_service(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any]
) -> None:
    status, body = query(gateway_stack, indexed, {"text": chunk_text(2, 0), "top_k": 1})
    hits = hits_of(spec, status, body)
    assert [(hit["chunk_id"], hit["attributes"]["text"]) for hit in hits] == [("doc-2-0", chunk_text(2, 0))]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_top_k(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any], vectors: dict[str, list[float]]
) -> None:
    vector = vectors[chunk_text(0, 0)]
    for top_k, expected in ((1, 1), (4, 4), (None, DOCUMENTS * CHUNKS), (0, DOCUMENTS * CHUNKS)):
        body: dict[str, Any] = {"vector": vector}
        if top_k is not None:
            body["top_k"] = top_k
        status, answer = query(gateway_stack, indexed, body)
        assert len(hits_of(spec, status, answer)) == expected, top_k
    status, answer = query(gateway_stack, indexed, {"vector": vector, "top_k": 1000})
    assert len(hits_of(spec, status, answer)) == DOCUMENTS * CHUNKS


def test_filter(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any], vectors: dict[str, list[float]]
) -> None:
    vector = vectors[chunk_text(0, 0)]
    status, body = query(gateway_stack, indexed, {"vector": vector, "filter": {"page": 0}})
    assert {hit["chunk_id"] for hit in hits_of(spec, status, body)} == {"doc-0-0", "doc-1-0", "doc-2-0"}
    status, body = query(gateway_stack, indexed, {"vector": vector, "filter": {"page": 1, "lang": "de"}})
    assert [hit["chunk_id"] for hit in hits_of(spec, status, body)] == ["doc-2-1"]
    status, body = query(gateway_stack, indexed, {"text": chunk_text(0, 0), "filter": {"lang": "fr"}})
    assert hits_of(spec, status, body) == []


async def test_the_same_hits_as_index_service_query(
    gateway_stack: GatewayStack, indexed: str, vectors: dict[str, list[float]]
) -> None:
    """The route and its gRPC twin answer the same query with the same hits."""
    vector = vectors[chunk_text(2, 1)]
    status, body = query(gateway_stack, indexed, {"vector": vector, "top_k": 5, "filter": {"lang": "en"}})
    assert status == 200, body
    channel: aio.Channel = open_channel(gateway_stack.gateway_address)
    try:
        filter_struct = struct_pb2.Struct()
        filter_struct.update({"lang": "en"})
        response = await index_pb2_grpc.IndexServiceStub(channel).Query(
            index_pb2.QueryRequest(
                pipeline_id=indexed,
                vector=index_pb2.QueryVector(values=vector),
                top_k=5,
                filter=filter_struct,
            )
        )
    finally:
        await channel.close()
    assert [(h["document_id"], h["chunk_id"]) for h in body["hits"]] == [
        (h.document_id, h.chunk_id) for h in response.hits
    ]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in response.hits], abs=1e-5)
    assert [h["attributes"]["page"] for h in body["hits"]] == [h.attributes["page"] for h in response.hits]


def test_an_empty_pipeline_has_no_hits(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    pid = unique("empty")
    status, body = http_json("POST", f"{gateway_stack.base_url}/v2/pipelines", {"id": pid})
    assert status == 201, body
    status, body = query(gateway_stack, pid, {"vector": [1.0, 0.0, 0.0, 0.0]})
    assert hits_of(spec, status, body) == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"top_k": 3}, ["text", "vector"]),
        ({"text": "a", "vector": [1.0, 0.0, 0.0, 0.0]}, ["text", "vector"]),
        ({"text": "a", "top_k": 1001}, ["top_k"]),
        ({"text": "a", "top_k": -1}, ["top_k"]),
        ({"text": "a", "top_k": "3"}, ["top_k"]),
        ({"text": ""}, ["text"]),
        ({"text": 3}, ["text"]),
        ({"vector": "1,0,0,0"}, ["vector"]),
        ({"vector": [1.0, "0", 0.0, 0.0]}, ["vector[1]"]),
        ({"vector": [1.0, True, 0.0, 0.0]}, ["vector[1]"]),
        ({"text": "a", "filter": ["page", 1]}, ["filter"]),
        ({"text": "a", "filter": {"tags": ["x"]}}, ["filter.tags"]),
        ({"text": "a", "filter": {"page": None}}, ["filter.page"]),
        ({"text": "a", "topK": 3}, ["topK"]),
        ([{"text": "a"}], ["body"]),
    ],
)
def test_bad_input_is_400_naming_the_field(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any], body: Any, fields: list[str]
) -> None:
    status, answer = query(gateway_stack, indexed, body)
    assert status == 400, answer
    check(spec, QUERY, "post", 400, answer)
    error = answer["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == fields
    assert error["message"].startswith(", ".join(fields) + ":"), error["message"]


def test_a_vector_of_another_dimension_is_400(
    gateway_stack: GatewayStack, indexed: str, spec: dict[str, Any]
) -> None:
    status, answer = query(gateway_stack, indexed, {"vector": [1.0, 0.0]})
    assert status == 400, answer
    check(spec, QUERY, "post", 400, answer)
    assert "vector" in answer["error"]["message"]


def test_an_unknown_pipeline_is_404(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    for body in ({"text": "anything"}, {"vector": [1.0, 0.0, 0.0, 0.0], "top_k": 3}):
        status, answer = query(gateway_stack, "no-such-pipeline", body)
        assert status == 404, answer
        check(spec, QUERY, "post", 404, answer)
        assert answer["error"]["status"] == "NOT_FOUND"
        assert "no-such-pipeline" in answer["error"]["message"]


def test_a_failing_sink_is_502(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    pid = unique("down")
    status, body = http_json(
        "POST", f"{gateway_stack.base_url}/v2/pipelines", {"id": pid, "sink": "turbopuffer"}
    )
    assert status == 201, body
    status, answer = query(gateway_stack, pid, {"vector": [1.0, 0.0, 0.0, 0.0]})
    assert status == 502, answer
    check(spec, QUERY, "post", 502, answer)
    assert answer["error"]["reason"] == "SINK_UNAVAILABLE"


def test_the_route_is_in_the_openapi_document(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    """Documented (and served at /v2/openapi.json); the request schema accepts the
    bodies the route answers 200 to and refuses those it answers 400 to."""
    status, served = http_json("GET", f"{gateway_stack.base_url}/v2/openapi.json")
    assert status == 200
    operation = served["paths"][QUERY]["post"]
    assert operation["operationId"] == "query"
    assert set(operation["responses"]) == {"200", "400", "404", "409", "500", "502"}
    schema = request_schema(served, QUERY, "post")
    for good in (
        {"text": "a"},
        {"vector": [1.0, 0.5], "top_k": 3, "filter": {"page": 1, "lang": "en", "ok": True}},
    ):
        assert errors(good, schema, served) == [], good
    for bad in (
        {},
        {"text": "a", "vector": [1.0]},
        {"text": "a", "topK": 3},
        {"text": "a", "top_k": 1001},
        {"text": "a", "filter": {"tags": ["x"]}},
    ):
        assert errors(bad, schema, served), bad
