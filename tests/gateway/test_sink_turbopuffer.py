"""The Turbopuffer sink on the wire: what the real client sends, atomic writes, failures.

The server is ``tests/support/fakes/turbopuffer.py`` (no Turbopuffer server
exists here); the client is the real ``turbopuffer`` package.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
import turbopuffer
from support.fakes.turbopuffer import FakeTurbopufferThread
from turbopuffer.types import RowParam

from hevlayer.common.errors import FailedPrecondition, Unavailable
from hevlayer.devstack.ports import free_port
from hevlayer.gateway.sinks import DistanceMetric, Row, filter_tag, vector_id
from hevlayer.gateway.sinks import turbopuffer as tpuf_sink
from hevlayer.gateway.sinks.turbopuffer import TurbopufferSink

SCHEMA_L2_2D = {
    "id": "string",
    "vector": {"type": "[2]f32", "ann": {"distance_metric": "euclidean_squared"}},
    "document_id": {"type": "string", "filterable": True},
    "chunk_id": {"type": "string", "filterable": True},
    "attributes": {"type": "string", "filterable": False},
    "filter_tags": {"type": "[]string", "filterable": True},
    "fencing_token": {"type": "int", "filterable": True},
}
INCLUDED = ["document_id", "chunk_id", "attributes", "fencing_token"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTurbopufferThread]:
    running = FakeTurbopufferThread()
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def sink(server: FakeTurbopufferThread) -> AsyncIterator[TurbopufferSink]:
    server.fake.clear()
    opened = TurbopufferSink.create(api_key=server.fake.api_key, base_url=server.fake.base_url, max_retries=0)
    yield opened
    await opened.close()


def writes(server: FakeTurbopufferThread, namespace: str) -> list[dict[str, Any]]:
    """Bodies of the write requests to ``namespace``, in order."""
    return [
        request.body
        for request in server.fake.requests
        if request.method == "POST" and request.path == f"/v2/namespaces/{namespace}"
    ]


def written_chunks(body: dict[str, Any]) -> list[str]:
    return [row["chunk_id"] for row in body.get("upsert_rows", [])]


def raw_row(**values: object) -> RowParam:
    """A row for the raw client (its TypedDict allows extra attributes; mypy does not see that)."""
    return cast(RowParam, values)


async def test_the_client_sends_these_requests(server: FakeTurbopufferThread, sink: TurbopufferSink) -> None:
    ns = "wire_shapes"
    await sink.ensure_namespace(ns, 2, DistanceMetric.EUCLIDEAN_SQUARED)
    await sink.replace_documents(ns, {"doc": [Row("c0", [0.5, -1.0], {"lang": "en", "n": 2})]})
    hits = await sink.query(ns, [1.0, 0.0], top_k=3, filter={"lang": "en"})
    assert await sink.count(ns, "doc") == 1
    await sink.delete_documents(ns, ["doc"])
    await sink.drop_namespace(ns)

    assert [hit.chunk_id for hit in hits] == ["c0"]
    assert hits[0].score == pytest.approx(-1.25)
    row_id = vector_id("doc", "c0")
    assert [(r.method, r.path, r.body) for r in server.fake.requests] == [
        ("GET", f"/v2/namespaces/{ns}/metadata", None),
        ("POST", f"/v2/namespaces/{ns}", {"create_namespace": True, "schema": SCHEMA_L2_2D}),
        ("GET", f"/v2/namespaces/{ns}/metadata", None),
        (
            "POST",
            f"/v2/namespaces/{ns}",
            {
                "create_namespace": False,
                # The rows of the write's fencing token (0: none) or older ones.
                "delete_by_filter": ["And", [["document_id", "In", ["doc"]], ["fencing_token", "Lte", 0]]],
                "upsert_rows": [
                    {
                        "id": row_id,
                        # The client sends vectors as base64 little-endian float32.
                        "vector": base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode(),
                        "document_id": "doc",
                        "chunk_id": "c0",
                        "attributes": '{"lang":"en","n":2}',
                        "filter_tags": [filter_tag("lang", "en"), filter_tag("n", 2)],
                        "fencing_token": 0,
                    }
                ],
                "distance_metric": "euclidean_squared",
                "schema": SCHEMA_L2_2D,
            },
        ),
        (
            "POST",
            f"/v2/namespaces/{ns}/query",
            {
                "rank_by": ["vector", "ANN", [1.0, 0.0]],
                "top_k": 3,
                "filters": ["filter_tags", "Contains", filter_tag("lang", "en")],
                "include_attributes": INCLUDED,
            },
        ),
        # Are the hits superseded by rows of a newer token? (the newest token wins)
        (
            "POST",
            f"/v2/namespaces/{ns}/query",
            {
                "aggregate_by": {"count": ["Count"]},
                "filters": ["And", [["document_id", "Eq", "doc"], ["fencing_token", "Gt", 0]]],
            },
        ),
        (
            "POST",
            f"/v2/namespaces/{ns}/query",
            {"aggregate_by": {"count": ["Count"]}, "filters": ["document_id", "Eq", "doc"]},
        ),
        ("POST", f"/v2/namespaces/{ns}", {"delete_by_filter": ["document_id", "In", ["doc"]]}),
        ("DELETE", f"/v2/namespaces/{ns}", None),
    ]
    for request in server.fake.requests:
        assert request.headers["authorization"] == f"Bearer {server.fake.api_key}"
        if request.method == "POST":
            assert request.headers["content-type"] == "application/json"


async def test_several_filters_are_anded(server: FakeTurbopufferThread, sink: TurbopufferSink) -> None:
    ns = "wire_and"
    await sink.ensure_namespace(ns, 2, DistanceMetric.COSINE_DISTANCE)
    server.fake.clear()
    await sink.query(ns, [1.0, 0.0], top_k=1, filter={"document_id": "d", "chunk_id": "c", "k": True})
    (request,) = server.fake.requests
    assert request.body["filters"] == [
        "And",
        [
            ["document_id", "Eq", "d"],
            ["chunk_id", "Eq", "c"],
            ["filter_tags", "Contains", filter_tag("k", True)],
        ],
    ]
    await sink.drop_namespace(ns)


async def test_a_replace_is_one_atomic_write_per_group_of_whole_documents(
    server: FakeTurbopufferThread, sink: TurbopufferSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = "wire_groups"
    await sink.ensure_namespace(ns, 2, DistanceMetric.COSINE_DISTANCE)
    server.fake.clear()
    documents = {
        "a": [Row("a0", [1.0, 0.0]), Row("a1", [0.0, 1.0])],
        "b": [Row("b0", [1.0, 1.0])],
        "c": [],
    }
    await sink.replace_documents(ns, documents)
    (write,) = writes(server, ns)
    assert write["delete_by_filter"] == [
        "And",
        [["document_id", "In", ["a", "b", "c"]], ["fencing_token", "Lte", 0]],
    ]
    assert written_chunks(write) == ["a0", "a1", "b0"]

    monkeypatch.setattr(tpuf_sink, "_MAX_ROWS_PER_WRITE", 2)
    server.fake.clear()
    documents["d"] = [Row(f"d{i}", [1.0, float(i)]) for i in range(3)]  # more than a write holds
    await sink.replace_documents(ns, documents)
    groups = [(body["delete_by_filter"][1][0][2], written_chunks(body)) for body in writes(server, ns)]
    assert groups == [(["a"], ["a0", "a1"]), (["b", "c"], ["b0"]), (["d"], ["d0", "d1", "d2"])]
    assert await sink.count(ns) == 6
    await sink.drop_namespace(ns)


async def test_http_failures_are_unavailable(server: FakeTurbopufferThread, sink: TurbopufferSink) -> None:
    ns = "wire_failures"
    await sink.ensure_namespace(ns, 2, DistanceMetric.COSINE_DISTANCE)
    server.fake.fail_next(503)
    with pytest.raises(Unavailable) as down:
        await sink.replace_documents(ns, {"a": [Row("a0", [1.0, 0.0])]})
    assert down.value.reason == "SINK_UNAVAILABLE"
    assert down.value.metadata == {"sink": "turbopuffer", "http_status": "503"}
    server.fake.fail_next(429, retry_after=7)
    with pytest.raises(Unavailable) as throttled:
        await sink.query(ns, [1.0, 0.0], top_k=1)
    assert throttled.value.retry_after == 7.0
    assert await sink.count(ns) == 0  # the failed write wrote nothing
    await sink.drop_namespace(ns)


async def test_the_client_retries_before_giving_up(server: FakeTurbopufferThread) -> None:
    retrying = TurbopufferSink.create(
        api_key=server.fake.api_key, base_url=server.fake.base_url, max_retries=1
    )
    try:
        await retrying.ensure_namespace("wire_retry", 2, DistanceMetric.COSINE_DISTANCE)
        server.fake.clear()
        server.fake.fail_next(500)
        await retrying.replace_documents("wire_retry", {"a": [Row("a0", [1.0, 0.0])]})
        first, second = writes(server, "wire_retry")
        assert first == second  # the same request, replayed
        assert await retrying.count("wire_retry") == 1
    finally:
        await retrying.drop_namespace("wire_retry")
        await retrying.close()


async def test_a_refused_request_is_a_failed_precondition(
    server: FakeTurbopufferThread, sink: TurbopufferSink
) -> None:
    ns = "wire_refused"
    await sink.ensure_namespace(ns, 2, DistanceMetric.COSINE_DISTANCE)
    server.fake.fail_next(400, message="attribute type mismatch")
    with pytest.raises(FailedPrecondition) as refused:
        await sink.replace_documents(ns, {"a": [Row("a0", [1.0, 0.0])]})
    assert refused.value.reason == "SINK_REJECTED"
    assert "attribute type mismatch" in refused.value.message
    await sink.drop_namespace(ns)


async def test_a_wrong_api_key_or_no_server_is_unavailable(server: FakeTurbopufferThread) -> None:
    wrong_key = TurbopufferSink.create(api_key="nope", base_url=server.fake.base_url, max_retries=0)
    no_server = TurbopufferSink.create(api_key="k", base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    try:
        with pytest.raises(Unavailable) as unauthorized:
            await wrong_key.ensure_namespace("wire_key", 2, DistanceMetric.COSINE_DISTANCE)
        assert unauthorized.value.metadata["http_status"] == "401"
        with pytest.raises(Unavailable):
            await no_server.count("wire_nothing")
    finally:
        await wrong_key.close()
        await no_server.close()


async def test_a_namespace_without_vectors_is_refused(
    server: FakeTurbopufferThread, sink: TurbopufferSink
) -> None:
    raw = turbopuffer.AsyncTurbopuffer(
        api_key=server.fake.api_key, base_url=server.fake.base_url, telemetry=False
    )
    try:
        await raw.namespace("wire_foreign").write(upsert_rows=[raw_row(id="x", name="no vector here")])
        with pytest.raises(FailedPrecondition) as foreign:
            await sink.ensure_namespace("wire_foreign", 2, DistanceMetric.COSINE_DISTANCE)
        assert foreign.value.reason == "FOREIGN_NAMESPACE"
    finally:
        await raw.namespace("wire_foreign").delete_all()
        await raw.close()


# ---- fidelity of the fake itself -----------------------------------------------


async def test_the_fake_applies_a_write_atomically_and_in_order(server: FakeTurbopufferThread) -> None:
    raw = turbopuffer.AsyncTurbopuffer(
        api_key=server.fake.api_key, base_url=server.fake.base_url, telemetry=False
    )
    ns = raw.namespace("fake_atomic")
    try:
        await ns.write(
            upsert_rows=[
                raw_row(id="1", vector=[1.0, 0.0], doc="a"),
                raw_row(id="2", vector=[0.0, 1.0], doc="b"),
            ],
            distance_metric="cosine_distance",
        )
        # delete_by_filter runs before the upserts of the same request: "1" is re-created.
        replaced = await ns.write(
            delete_by_filter=["doc", "In", ["a"]],
            upsert_rows=[raw_row(id="1", vector=[0.5, 0.5], doc="a")],
            distance_metric="cosine_distance",
        )
        assert (replaced.rows_deleted, replaced.rows_upserted) == (1, 1)
        # A bad row anywhere rejects the whole request.
        with pytest.raises(turbopuffer.BadRequestError):
            await ns.write(
                delete_by_filter=["doc", "In", ["b"]],
                upsert_rows=[
                    raw_row(id="3", vector=[1.0, 1.0], doc="c"),
                    raw_row(id="4", vector=[1.0], doc=7),
                ],
                distance_metric="cosine_distance",
            )
        result = await ns.query(rank_by=("vector", "ANN", [1.0, 0.0]), top_k=10, include_attributes=True)
        rows = {str(row.id): row.model_extra or {} for row in result.rows or []}
        assert list(rows) == ["1", "2"]
        assert rows["1"] == {"$dist": pytest.approx(1 - 0.5**0.5, abs=1e-6), "doc": "a"}
        assert rows["2"] == {"$dist": pytest.approx(1.0), "doc": "b"}
        # Non-filterable attributes cannot be filtered on, as on Turbopuffer.
        await ns.write(schema={"blob": {"type": "string", "filterable": False}})
        with pytest.raises(turbopuffer.BadRequestError):
            await ns.query(aggregate_by={"n": ("Count",)}, filters=("blob", "Eq", "x"))
    finally:
        await ns.delete_all()
        await raw.close()
