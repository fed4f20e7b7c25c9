"""The seed's REST routes against the live gateway (real claimer, PostgreSQL,
SeaweedFS, Milvus Lite): every ``curl`` of the seed document runs verbatim
(only ``http://gateway:8080`` is replaced by the gateway's address), every
request the seed shows as ``METHOD path + JSON`` runs as the same curl, and
every answer is checked against the seed's shape and docs/openapi.yaml."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway.openapi_check import check
from prometheus_client.parser import text_string_to_metric_families
from support.s3 import pack_keys
from support.service_http import http_json
from support.stacks import GatewayStack, unreachable_turbopuffer

from hevlayer.gateway.openapi import openapi_document, openapi_yaml

ROOT = Path(__file__).resolve().parents[2]
SEED_HOST = "http://gateway:8080"
P = "/v2/pipelines/{pipeline_id}"

# The seed's curl commands, verbatim.
CURL_CREATE = """curl -X POST http://gateway:8080/v2/pipelines \\
  -H 'content-type: application/json' \\
  -d '{
    "id": "product-images",
    "target_namespace": "products",
    "distance_metric": "cosine_distance"
  }'"""
CURL_STAGE = """curl -X PUT http://gateway:8080/v2/pipelines/product-images/documents/asin-B08N5WRWNW \\
  -H 'content-type: application/json' \\
  -d '{
    "chunks": [
      {"id": "asin-B08N5WRWNW-0", "text": "Wireless noise-cancelling headphones"},
      {"id": "asin-B08N5WRWNW-1", "text": "40-hour battery life", "metadata": {"page": 2}}
    ]
  }'"""
CURL_STATUS = "curl http://gateway:8080/v2/pipelines/product-images/status"
CURL_CHUNKS = "curl http://gateway:8080/v2/pipelines/product-images/documents/asin-B08N5WRWNW/chunks"
CURL_VECTORS = """curl -X PUT http://gateway:8080/v2/pipelines/product-images/documents/asin-B08N5WRWNW/vectors \\
  -H 'content-type: application/json' \\
  -d '{
    "vectors": [
      {"id": "asin-B08N5WRWNW-0", "vector": [0.0012, -0.043], "attributes": {"text": "..."}}
    ]
  }'"""  # noqa: E501

# The seed's requests shown as "POST path" + JSON body, verbatim.
SEED_CLAIM = (
    "/v2/pipelines/product-images/claim",
    """{
  "stage": "pending",
  "claim_stage": "embedding",
  "limit": 2000,
  "worker_id": "gpu-worker-0",
  "lease_seconds": 900
}""",
)
SEED_HEARTBEAT = (
    "/v2/pipelines/product-images/documents/heartbeat",
    """{
  "document_ids": ["B07XYZ123"],
  "stage": "embedding",
  "worker_id": "gpu-worker-0"
}""",
)
SEED_STAGE = (
    "/v2/pipelines/product-images/documents/stage",
    """{
  "document_ids": ["B07XYZ123"],
  "stage": "indexed",
  "from_stage": "embedding",
  "worker_id": "gpu-worker-0"
}""",
)
KEDA_QUERY = 'sum(layer_pipeline_stage_count{pipeline_id="product-images",stage="pending"}) or vector(0)'


@pytest.fixture(scope="module")
def gateway_env() -> dict[str, str]:
    """A Turbopuffer sink that cannot be reached (for 502)."""
    return unreachable_turbopuffer()


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return openapi_document()


def curl(stack: GatewayStack, command: str) -> tuple[int, Any]:
    """Run a seed curl command verbatim against the stack; (status, JSON or text)."""
    assert SEED_HOST in command
    live = command.replace(SEED_HOST, stack.base_url) + " -s -w '\\n%{http_code}'"
    done = subprocess.run(["bash", "-c", live], capture_output=True, text=True, timeout=60, check=True)
    body, _, status = done.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except json.JSONDecodeError:
        return int(status), body


def seed_post(stack: GatewayStack, request: tuple[str, str], **changes: Any) -> tuple[int, Any]:
    """A seed ``POST path`` + JSON request, as curl; ``changes`` edit the body."""
    path, body = request
    if changes:
        body = json.dumps({**json.loads(body), **changes})
    quoted = body.replace("'", "'\\''")
    return curl(stack, f"curl -X POST {SEED_HOST}{path} -H 'content-type: application/json' -d '{quoted}'")


def keda(stack: GatewayStack, query: str = KEDA_QUERY) -> float:
    """Evaluate the seed's KEDA query (``sum(metric{labels}) or vector(0)``) on /v2/metrics."""
    match = re.fullmatch(r"sum\((\w+)\{(.*)\}\) or vector\(0\)", query)
    assert match, query
    name, selector = match.groups()
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', selector))
    status, text = curl(stack, f"curl {SEED_HOST}/v2/metrics")
    assert status == 200
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
    ]
    return sum(values) if values else 0.0


def test_the_seed_walkthrough(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    stack = gateway_stack
    assert keda(stack) == 0.0  # before the pipeline exists: `or vector(0)`

    # Create a pipeline; 409 if it exists.
    status, body = curl(stack, CURL_CREATE)
    assert status == 201, body
    check(spec, "/v2/pipelines", "post", 201, body)
    assert (body["id"], body["target_namespace"], body["distance_metric"]) == (
        "product-images",
        "products",
        "cosine_distance",
    )
    status, body = curl(stack, CURL_CREATE)
    assert status == 409, body
    check(spec, "/v2/pipelines", "post", 409, body)
    assert body["error"]["status"] == "ALREADY_EXISTS"

    # Stage a document (CPU worker), and a second one for the lease examples.
    status, body = curl(stack, CURL_STAGE)
    assert status == 200, body
    check(spec, P + "/documents/{document_id}", "put", 200, body)
    assert body["outcome"] == "staged"
    assert body["stage"] == "pending"
    assert body["chunk_count"] == 2
    status, body = http_json(
        "PUT",
        f"{stack.base_url}/v2/pipelines/product-images/documents/B07XYZ123",
        {"chunks": [{"id": "B07XYZ123-0", "text": "A second product"}]},
    )
    assert status == 200, body

    # Pipeline status (KEDA polling): the seed's answer shape.
    status, body = curl(stack, CURL_STATUS)
    assert status == 200, body
    check(spec, P + "/status", "get", 200, body)
    assert body == {"pipeline_id": "product-images", "counts": {"pending": 2}, "pending_count": 2}
    assert keda(stack) == 2.0

    # Read chunks (GPU worker).
    status, body = curl(stack, CURL_CHUNKS)
    assert status == 200, body
    check(spec, P + "/documents/{document_id}/chunks", "get", 200, body)
    assert body["chunks"] == [
        {"id": "asin-B08N5WRWNW-0", "text": "Wireless noise-cancelling headphones"},
        {"id": "asin-B08N5WRWNW-1", "text": "40-hour battery life", "metadata": {"page": 2}},
    ]

    # Claim.
    status, body = seed_post(stack, SEED_CLAIM)
    assert status == 200, body
    check(spec, P + "/claim", "post", 200, body)
    claimed = {d["document_id"]: d for d in body["documents"]}
    assert set(claimed) == {"asin-B08N5WRWNW", "B07XYZ123"}
    assert all(d["worker_id"] == "gpu-worker-0" and d["stage"] == "embedding" for d in claimed.values())
    assert keda(stack) == 0.0
    status, body = curl(stack, CURL_STATUS)
    assert body["counts"] == {"embedding": 2}
    assert body["pending_count"] == 0

    # Heartbeat.
    status, body = seed_post(stack, SEED_HEARTBEAT)
    assert status == 200, body
    check(spec, P + "/documents/heartbeat", "post", 200, body)
    assert [r["extended"] for r in body["results"]] == [True]
    assert body["lost"] == []

    # Write vectors. The seed's example sends one vector, for the first of the document's two
    # chunks: a document's vectors must be exactly its staged chunks (docs/reliability.md), so
    # it is refused naming the missing chunk, and nothing is written.
    status, body = curl(stack, CURL_VECTORS)
    assert status == 400, body
    check(spec, P + "/documents/{document_id}/vectors", "put", 400, body)
    assert [v["field"] for v in body["error"]["field_violations"]] == ["vectors"]
    assert body["error"]["message"].startswith("vectors: missing chunk asin-B08N5WRWNW-1")
    # With a vector for each chunk it upserts into the sink and marks the document indexed.
    complete = CURL_VECTORS.replace(
        '"attributes": {"text": "..."}}',
        '"attributes": {"text": "..."}},\n      {"id": "asin-B08N5WRWNW-1", "vector": [0.5, 0.25]}',
    )
    status, body = curl(stack, complete)
    assert status == 200, body
    check(spec, P + "/documents/{document_id}/vectors", "put", 200, body)
    assert body["outcome"] == "indexed"
    assert body["vectors_written"] == 2

    # Move a claimed document to a final stage.
    status, body = seed_post(stack, SEED_STAGE)
    assert status == 200, body
    check(spec, P + "/documents/stage", "post", 200, body)
    assert [r["outcome"] for r in body["results"]] == ["moved"]
    assert body["moved"] == 1
    status, body = curl(stack, CURL_STATUS)
    assert body == {"pipeline_id": "product-images", "counts": {"indexed": 2}, "pending_count": 0}

    # Re-staging resets a document to pending with new chunks; its old pack goes.
    packs_before = pack_keys(stack.s3, stack.bucket, "product-images")
    status, body = curl(stack, CURL_STAGE.replace("40-hour battery life", "50-hour battery life"))
    assert status == 200, body
    assert body["outcome"] == "staged"
    packs_after = pack_keys(stack.s3, stack.bucket, "product-images")
    assert len(packs_after) == len(packs_before)
    assert set(packs_after) - set(packs_before)
    status, body = curl(stack, CURL_STATUS)
    assert body["counts"] == {"indexed": 1, "pending": 1}
    status, body = curl(stack, CURL_CHUNKS)
    assert body["chunks"][1]["text"] == "50-hour battery life"

    # Release (stage: pending) and permanent failure (stage: failed).
    status, body = seed_post(stack, SEED_CLAIM)
    assert [d["document_id"] for d in body["documents"]] == ["asin-B08N5WRWNW"]
    status, body = seed_post(stack, SEED_STAGE, document_ids=["asin-B08N5WRWNW"], stage="pending")
    assert body["moved"] == 1
    assert keda(stack) == 1.0
    seed_post(stack, SEED_CLAIM)
    status, body = seed_post(
        stack, SEED_STAGE, document_ids=["asin-B08N5WRWNW"], stage="failed", reason="unparseable"
    )
    assert body["moved"] == 1
    status, body = curl(stack, CURL_STATUS)
    assert body["counts"] == {"indexed": 1, "failed": 1}

    # create_missing without from_stage/worker_id enqueues lightweight ids.
    status, body = seed_post(
        stack,
        SEED_STAGE,
        document_ids=["agg-1", "agg-2", "agg-3"],
        stage="pending",
        create_missing=True,
        from_stage=None,
        worker_id=None,
    )
    assert status == 200, body
    check(spec, P + "/documents/stage", "post", 200, body)
    assert body["enqueued"] == 3
    status, body = curl(stack, CURL_STATUS)
    assert body["pending_count"] == 3
    assert keda(stack) == 3.0


def test_errors_have_the_seed_status_codes(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    stack = gateway_stack
    base = stack.base_url
    status, body = http_json("POST", f"{base}/v2/pipelines", {"id": "errors", "sink": "turbopuffer"})
    assert status == 201, body

    status, body = http_json("GET", f"{base}/v2/pipelines/unknown-pipeline/status")
    assert status == 404, body
    check(spec, P + "/status", "get", 404, body)
    assert body["error"]["status"] == "NOT_FOUND"

    status, body = http_json("GET", f"{base}/v2/pipelines/errors/documents/nothing/chunks")
    assert status == 404, body
    check(spec, P + "/documents/{document_id}/chunks", "get", 404, body)

    status, body = http_json(
        "PUT",
        f"{base}/v2/pipelines/errors/documents/bad",
        {"chunks": [{"id": "same", "text": "a"}, {"id": "same", "text": "b"}]},
    )
    assert status == 400, body
    check(spec, P + "/documents/{document_id}", "put", 400, body)
    assert [v["field"] for v in body["error"]["field_violations"]] == ["chunks[1].id"]
    status, body = http_json("PUT", f"{base}/v2/pipelines/errors/documents/bad", {"chunks": [{"text": 3}]})
    assert status == 400
    assert body["error"]["field_violations"][0]["field"] == "chunks[0].text"
    status, body = http_json("POST", f"{base}/v2/pipelines", {"id": "Not A Valid Id"})
    assert status == 400
    assert body["error"]["field_violations"][0]["field"] == "pipeline.id"
    status, body = http_json("POST", f"{base}/v2/pipelines/errors/claim", {"claim_stage": "embedding"})
    assert status == 400
    assert body["error"]["field_violations"][0]["field"] == "worker_id"

    import urllib.request

    request = urllib.request.Request(
        f"{base}/v2/pipelines", data=b"{not json", method="POST", headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["field_violations"][0]["field"] == "body"

    # 409: vectors for a document nobody holds; chunks read under a lease not held.
    status, body = http_json(
        "PUT", f"{base}/v2/pipelines/errors/documents/doc", {"chunks": [{"id": "c", "text": "t"}]}
    )
    assert status == 200, body
    status, body = http_json(
        "PUT",
        f"{base}/v2/pipelines/errors/documents/doc/vectors",
        {"vectors": [{"id": "c", "vector": [1.0, 2.0]}]},
    )
    assert status == 409, body
    check(spec, P + "/documents/{document_id}/vectors", "put", 409, body)
    status, body = http_json(
        "GET", f"{base}/v2/pipelines/errors/documents/doc/chunks?worker_id=w&stage=embedding"
    )
    assert status == 409, body
    assert body["error"]["reason"] == "LEASE_NOT_HELD"

    # 502: the sink fails; the document stays in its claim stage.
    status, body = http_json(
        "POST",
        f"{base}/v2/pipelines/errors/claim",
        {"claim_stage": "embedding", "worker_id": "w", "limit": 10},
    )
    assert [d["document_id"] for d in body["documents"]] == ["doc"]
    status, body = http_json(
        "PUT",
        f"{base}/v2/pipelines/errors/documents/doc/vectors",
        {"vectors": [{"id": "c", "vector": [1.0, 2.0]}]},
    )
    assert status == 502, body
    check(spec, P + "/documents/{document_id}/vectors", "put", 502, body)
    assert body["error"]["reason"] == "SINK_UNAVAILABLE"
    status, body = http_json("GET", f"{base}/v2/pipelines/errors/status")
    assert body["counts"] == {"embedding": 1}


def test_openapi_document(gateway_stack: GatewayStack, spec: dict[str, Any]) -> None:
    """docs/openapi.yaml is the generated document; the gateway serves the same;
    every REST route is documented and every documented route exists."""
    published = (ROOT / "docs" / "openapi.yaml").read_text()
    assert published == openapi_yaml(), "regenerate: python -m hevlayer.gateway.openapi > docs/openapi.yaml"
    assert yaml.safe_load(published) == spec
    status, served = http_json("GET", f"{gateway_stack.base_url}/v2/openapi.json")
    assert status == 200
    assert served == spec

    from hevlayer.gateway.rest import RestApi

    routes = {
        (route.method.lower(), route.path)
        for route in RestApi(None, None, None, None, None).routes()  # type: ignore[arg-type]
    }
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert routes == documented
    assert spec["openapi"].startswith("3.1")
    for path, item in spec["paths"].items():
        parameters = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == parameters, (method, path)
            for response in operation["responses"].values():
                for content in response.get("content", {}).values():
                    _resolve(spec, content["schema"])


def _resolve(spec: dict[str, Any], schema: Any) -> None:
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            assert name in spec["components"]["schemas"], name
        for value in schema.values():
            _resolve(spec, value)
    elif isinstance(schema, list):
        for value in schema:
            _resolve(spec, value)


@pytest.mark.parametrize("queue_backend", ["row", "segment"])
def test_enqueued_ids_carry_a_priority(
    gateway_stack: GatewayStack, spec: dict[str, Any], queue_backend: str
) -> None:
    """``POST .../documents/stage`` with ``create_missing`` takes a ``priorities`` list
    parallel to ``document_ids``; claims take the lowest priority first, on both backends.
    A bad priority is 400 INVALID_ARGUMENT naming the field."""
    import jsonschema  # type: ignore[import-untyped]

    base = gateway_stack.base_url
    pipeline_id = f"prio-{queue_backend}"
    status, body = http_json(
        "POST", f"{base}/v2/pipelines", {"id": pipeline_id, "queue_backend": queue_backend}
    )
    assert status == 201, body
    stage_url = f"{base}/v2/pipelines/{pipeline_id}/documents/stage"
    request = {
        "document_ids": ["later", "plain", "urgent"],
        "stage": "extract",
        "create_missing": True,
        "priorities": [7, 0, -2],
    }
    jsonschema.validate(request, spec["components"]["schemas"]["StageRequest"])
    status, body = http_json("POST", stage_url, request)
    assert status == 200, body
    check(spec, P + "/documents/stage", "post", 200, body)
    assert body["enqueued"] == 3

    claim = {"stage": "extract", "claim_stage": "extracting", "limit": 1, "worker_id": "cpu-0"}
    order: list[str] = []
    for _ in range(3):
        status, body = http_json("POST", f"{base}/v2/pipelines/{pipeline_id}/claim", claim)
        assert status == 200, body
        order.extend(d["document_id"] for d in body["documents"])
    assert order == ["urgent", "plain", "later"]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"priorities": [1]}, "priorities"),
        ({"priorities": [0, 2**31]}, "priorities[1]"),
        ({"priorities": ["high", 0]}, "priorities[0]"),
        ({"priorities": [0, True]}, "priorities[1]"),
        ({"create_missing": False, "from_stage": "extracting", "worker_id": "w"}, "priorities"),
    ]
    for change, field in bad:
        request = {
            "document_ids": ["a", "b"],
            "stage": "extract",
            "create_missing": True,
            "priorities": [0, 0],
        }
        request.update(change)
        status, body = http_json("POST", stage_url, request)
        assert status == 400, (change, body)
        check(spec, P + "/documents/stage", "post", 400, body)
        assert body["error"]["status"] == "INVALID_ARGUMENT"
        assert [v["field"] for v in body["error"]["field_violations"]] == [field], change
