"""The contract every gateway sink keeps, run against each sink.

* ``milvus_lite``: the real Milvus Lite on a temporary ``.db``.
* ``milvus``: pymilvus ``MilvusClient(uri=...)`` over gRPC to Milvus Lite's
  server mode in a child process (standing in for Milvus / Zilliz).
* ``turbopuffer``: the real ``turbopuffer`` client against the local fake
  server (``tests/support/fakes/turbopuffer.py``); no Turbopuffer server can
  run here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.milvus_lite import MilvusLiteServer

from hevlayer.common.errors import FailedPrecondition, InvalidArgument
from hevlayer.gateway.sinks import DistanceMetric, Hit, JSONValue, NamespaceSpec, Row, Sink
from hevlayer.gateway.sinks.milvus import MilvusSink
from hevlayer.gateway.sinks.turbopuffer import TurbopufferSink

SINKS = ["milvus_lite", "milvus", "turbopuffer"]
COSINE = DistanceMetric.COSINE_DISTANCE
L2 = DistanceMetric.EUCLIDEAN_SQUARED

# Four known vectors: cosine similarity to E1 is 1, 0.8, 0, -1;
# squared distance to E1 is 0, 0.4, 2, 4.
E1 = [1.0, 0.0, 0.0, 0.0]
E2 = [0.8, 0.6, 0.0, 0.0]
E3 = [0.0, 1.0, 0.0, 0.0]
E4 = [-1.0, 0.0, 0.0, 0.0]


async def open_test_sink(kind: str, request: pytest.FixtureRequest, directory: Path) -> Sink:
    """A sink of ``kind`` on the test backends (servers come from module fixtures)."""
    if kind == "milvus_lite":
        return await MilvusSink.open_lite(str(directory / "vectors.db"), timeout=30)
    if kind == "milvus":
        server: MilvusLiteServer = request.getfixturevalue("milvus_server")
        return await MilvusSink.open(server.uri, timeout=30)
    fake: FakeTurbopufferThread = request.getfixturevalue("turbopuffer_server")
    return TurbopufferSink.create(
        api_key=fake.fake.api_key, base_url=fake.fake.base_url, timeout=30, max_retries=0
    )


@pytest.fixture(scope="module", params=SINKS)
async def sink(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sink]:
    opened = await open_test_sink(request.param, request, tmp_path_factory.mktemp(request.param))
    yield opened
    await opened.close()


@pytest.fixture
async def namespace(sink: Sink) -> AsyncIterator[str]:
    """A fresh namespace name (valid for every backend), dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    await sink.drop_namespace(name)


def rows(document: str, vectors: list[list[float]], **attributes: JSONValue) -> list[Row]:
    return [Row(f"{document}#{i}", vector, dict(attributes)) for i, vector in enumerate(vectors)]


async def chunk_ids(sink: Sink, namespace: str, document_id: str) -> set[str]:
    hits = await sink.query(namespace, E1, top_k=100, filter={"document_id": document_id})
    return {hit.chunk_id for hit in hits}


def ranked(hits: list[Hit]) -> list[tuple[str, float]]:
    return [(hit.chunk_id, round(hit.score, 4)) for hit in hits]


# ---- namespaces ----------------------------------------------------------------


async def test_ensure_namespace_is_idempotent_and_checks_its_shape(sink: Sink, namespace: str) -> None:
    assert await sink.describe_namespace(namespace) is None
    spec = await sink.ensure_namespace(namespace, 4, "cosine_distance")
    assert spec == NamespaceSpec(4, COSINE)
    assert await sink.ensure_namespace(namespace, 4, COSINE) == spec
    assert await sink.describe_namespace(namespace) == spec

    with pytest.raises(FailedPrecondition) as dimension:
        await sink.ensure_namespace(namespace, 8, COSINE)
    assert [v.field for v in dimension.value.violations] == ["dimension"]
    with pytest.raises(FailedPrecondition) as metric:
        await sink.ensure_namespace(namespace, 4, L2)
    assert [v.field for v in metric.value.violations] == ["distance_metric"]


async def test_ensure_namespace_validates_its_arguments(sink: Sink, namespace: str) -> None:
    with pytest.raises(InvalidArgument) as dimension:
        await sink.ensure_namespace(namespace, 0, COSINE)
    assert dimension.value.violations[0].field == "dimension"
    with pytest.raises(InvalidArgument) as metric:
        await sink.ensure_namespace(namespace, 4, "dot_product")
    assert metric.value.violations[0].field == "distance_metric"
    with pytest.raises(InvalidArgument) as name:
        await sink.ensure_namespace("bad name!", 4, COSINE)
    assert name.value.violations[0].field == "namespace"


async def test_a_fresh_sink_describes_an_existing_namespace(
    sink: Sink, namespace: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    await sink.ensure_namespace(namespace, 4, L2)
    await sink.replace_documents(namespace, {"d": rows("d", [E1, E2])})
    if sink.kind.value == "milvus_lite":
        pytest.skip("one process owns a Milvus Lite file: reopening is tested in test_sink_milvus.py")
    other = await open_test_sink(sink.kind.value, request, tmp_path)
    try:
        assert await other.describe_namespace(namespace) == NamespaceSpec(4, L2)
        assert await other.count(namespace, "d") == 2
        await other.replace_documents(namespace, {"d": rows("d", [E3])})
    finally:
        await other.close()
    assert await sink.count(namespace, "d") == 1


async def test_writes_do_not_recreate_a_namespace_dropped_elsewhere(
    sink: Sink, namespace: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if sink.kind.value == "milvus_lite":
        pytest.skip("one process owns a Milvus Lite file: nothing else can drop its namespaces")
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"d": rows("d", [E1])})
    other = await open_test_sink(sink.kind.value, request, tmp_path)
    try:
        await other.drop_namespace(namespace)
    finally:
        await other.close()
    with pytest.raises(FailedPrecondition) as gone:
        await sink.replace_documents(namespace, {"d": rows("d", [E2])})
    assert gone.value.reason == "NAMESPACE_NOT_FOUND"
    assert await sink.count(namespace) == 0
    assert await sink.query(namespace, E1, top_k=1) == []
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"d": rows("d", [E2])})
    assert await sink.count(namespace) == 1


async def test_writes_need_an_existing_namespace(sink: Sink, namespace: str) -> None:
    with pytest.raises(FailedPrecondition) as missing:
        await sink.replace_documents(namespace, {"d": rows("d", [E1])})
    assert missing.value.violations[0].field == "namespace"


async def test_reads_of_a_missing_namespace_are_empty(sink: Sink, namespace: str) -> None:
    assert await sink.query(namespace, E1, top_k=5) == []
    assert await sink.count(namespace) == 0
    assert await sink.count(namespace, "d") == 0
    await sink.delete_documents(namespace, ["d"])
    await sink.drop_namespace(namespace)


async def test_a_dropped_namespace_comes_back_empty_in_any_shape(sink: Sink, namespace: str) -> None:
    """What DeletePipeline relies on: after drop_namespace, a namespace of the same name
    (a pipeline created again) holds none of the old rows and may take another dimension
    and metric."""
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"d": rows("d", [E1, E2])})
    await sink.drop_namespace(namespace)
    assert await sink.describe_namespace(namespace) is None
    await sink.ensure_namespace(namespace, 2, L2)
    assert await sink.count(namespace) == 0
    assert await sink.query(namespace, [1.0, 0.0], top_k=10) == []
    await sink.replace_documents(namespace, {"e": rows("e", [[0.0, 1.0]])})
    assert [hit.document_id for hit in await sink.query(namespace, [1.0, 0.0], top_k=10)] == ["e"]


async def test_namespaces_are_isolated(sink: Sink, namespace: str) -> None:
    other = f"{namespace}_b"
    try:
        await sink.ensure_namespace(namespace, 4, COSINE)
        await sink.ensure_namespace(other, 4, COSINE)
        await sink.replace_documents(namespace, {"d": rows("d", [E1, E2, E3])})
        await sink.replace_documents(other, {"d": rows("d", [E4])})
        assert await sink.count(namespace) == 3
        assert await sink.count(other) == 1
        assert [hit.chunk_id for hit in await sink.query(other, E1, top_k=10)] == ["d#0"]
        assert (await sink.query(other, E1, top_k=10))[0].score == pytest.approx(-1.0, abs=1e-5)

        await sink.delete_documents(other, ["d"])
        assert await sink.count(namespace) == 3
        await sink.replace_documents(other, {"d": rows("d", [E4])})
        await sink.drop_namespace(namespace)
        assert await sink.count(other, "d") == 1
        assert await sink.describe_namespace(namespace) is None
    finally:
        await sink.drop_namespace(other)


# ---- replace / delete ----------------------------------------------------------


async def test_rewriting_a_document_with_fewer_chunks_leaves_no_stale_rows(
    sink: Sink, namespace: str
) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    written = await sink.replace_documents(
        namespace, {"a": rows("a", [E1, E2, E3, E4]), "b": rows("b", [E2, E3])}
    )
    assert written == 6
    assert await sink.count(namespace) == 6

    assert await sink.replace_documents(namespace, {"a": [Row("a#new", E3, {"v": 2})]}) == 1
    assert await sink.count(namespace, "a") == 1
    assert await sink.count(namespace, "b") == 2
    assert await chunk_ids(sink, namespace, "a") == {"a#new"}
    (hit,) = await sink.query(namespace, E3, top_k=1, filter={"document_id": "a"})
    assert hit.attributes == {"v": 2, "document_id": "a", "chunk_id": "a#new"}


async def test_rewriting_the_same_chunk_ids_replaces_values_and_attributes(
    sink: Sink, namespace: str
) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"a": [Row("c", E1, {"old": True, "n": 1})]})
    await sink.replace_documents(namespace, {"a": [Row("c", E3, {"n": 2})]})
    (hit,) = await sink.query(namespace, E3, top_k=5)
    assert (hit.chunk_id, round(hit.score, 4)) == ("c", 1.0)
    assert hit.attributes == {"n": 2, "document_id": "a", "chunk_id": "c"}
    assert await sink.query(namespace, E3, top_k=5, filter={"old": True}) == []


async def test_the_same_write_twice_gives_the_same_rows(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    documents = {"a": rows("a", [E1, E2], lang="en"), "b": rows("b", [E3], lang="fr")}
    await sink.replace_documents(namespace, documents)
    first = await sink.query(namespace, E1, top_k=10)
    await sink.replace_documents(namespace, documents)  # a retried request
    assert await sink.count(namespace) == 3
    assert ranked(await sink.query(namespace, E1, top_k=10)) == ranked(first)
    assert [hit.attributes for hit in await sink.query(namespace, E1, top_k=10)] == [
        hit.attributes for hit in first
    ]


async def test_an_empty_row_list_deletes_the_document(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"a": rows("a", [E1, E2]), "b": rows("b", [E3])})
    assert await sink.replace_documents(namespace, {"a": []}) == 0
    assert await sink.count(namespace, "a") == 0
    assert await sink.count(namespace) == 1


async def test_delete_documents(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(
        namespace, {"a": rows("a", [E1, E2]), "b": rows("b", [E3]), "c": rows("c", [E4])}
    )
    await sink.delete_documents(namespace, ["a", "c", "never-written"])
    assert await sink.count(namespace) == 1
    assert await sink.count(namespace, "a") == 0
    assert [hit.document_id for hit in await sink.query(namespace, E1, top_k=10)] == ["b"]
    await sink.delete_documents(namespace, ["a"])  # idempotent
    await sink.replace_documents(namespace, {"a": rows("a", [E1])})  # and writable again
    assert await sink.count(namespace, "a") == 1


async def test_concurrent_writes_of_different_documents(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await asyncio.gather(
        *(sink.replace_documents(namespace, {f"d{i}": rows(f"d{i}", [E1, E2, E3])}) for i in range(8))
    )
    assert await sink.count(namespace) == 24
    await asyncio.gather(
        *(sink.replace_documents(namespace, {f"d{i}": rows(f"d{i}", [E4])}) for i in range(8))
    )
    assert await sink.count(namespace) == 8


async def test_unusual_ids_round_trip(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    odd = ['quo"te', "back\\slash", "new\nline", "tab\tand 'single'", "üñí©ødé ✓", "x" * 300]
    await sink.replace_documents(namespace, {doc: [Row(doc + '/chunk"\\', E1)] for doc in odd})
    assert await sink.count(namespace) == len(odd)
    for doc in odd:
        assert await sink.count(namespace, doc) == 1
        assert await chunk_ids(sink, namespace, doc) == {doc + '/chunk"\\'}
    await sink.replace_documents(namespace, {odd[0]: []})
    await sink.delete_documents(namespace, odd[1:3])
    assert await sink.count(namespace) == len(odd) - 3
    assert {hit.document_id for hit in await sink.query(namespace, E1, top_k=20)} == set(odd[3:])


# ---- validation ----------------------------------------------------------------


async def test_a_wrong_dimension_is_rejected_and_nothing_is_written(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"a": rows("a", [E1])})
    with pytest.raises(InvalidArgument) as wrong:
        await sink.replace_documents(
            namespace, {"b": rows("b", [E2]), "a": [Row("a#0", E3), Row("a#1", [1.0, 2.0])]}
        )
    assert [v.field for v in wrong.value.violations] == ["documents[a].rows[1].values"]
    assert "expected 4 values, got 2" in wrong.value.message
    assert await sink.count(namespace) == 1
    assert await chunk_ids(sink, namespace, "a") == {"a#0"}
    with pytest.raises(InvalidArgument) as query:
        await sink.query(namespace, [1.0, 0.0, 0.0], top_k=1)
    assert query.value.violations[0].field == "vector"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (Row("c", [1.0, float("nan"), 0.0, 0.0]), "documents[a].rows[0].values"),
        (Row("c", [1.0, float("inf"), 0.0, 0.0]), "documents[a].rows[0].values"),
        (Row("", E1), "documents[a].rows[0].chunk_id"),
        (Row("c", E1, {"document_id": "other"}), "documents[a].rows[0].attributes.document_id"),
        (Row("c", E1, {"bad": {1, 2}}), "documents[a].rows[0].attributes"),  # type: ignore[dict-item]
        (Row("c", E1, {"nan": float("nan")}), "documents[a].rows[0].attributes"),
    ],
)
async def test_invalid_rows_name_the_field(sink: Sink, namespace: str, row: Row, field: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    with pytest.raises(InvalidArgument) as invalid:
        await sink.replace_documents(namespace, {"a": [row]})
    assert invalid.value.violations[0].field == field
    assert await sink.count(namespace) == 0


async def test_duplicate_chunk_ids_are_rejected(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    with pytest.raises(InvalidArgument) as duplicate:
        await sink.replace_documents(namespace, {"a": [Row("c", E1), Row("c", E2)]})
    assert duplicate.value.violations[0].field == "documents[a].rows[1].chunk_id"


async def test_query_arguments_are_validated(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    for top_k in (0, 1001):
        with pytest.raises(InvalidArgument) as bad_top_k:
            await sink.query(namespace, E1, top_k=top_k)
        assert bad_top_k.value.violations[0].field == "top_k"
    with pytest.raises(InvalidArgument) as bad_filter:
        await sink.query(namespace, E1, top_k=1, filter={"tags": ["x"]})  # type: ignore[dict-item]
    assert bad_filter.value.violations[0].field == "filter.tags"
    with pytest.raises(InvalidArgument) as zero:
        await sink.query(namespace, [0.0, 0.0, 0.0, 0.0], top_k=1)
    assert zero.value.violations[0].field == "vector"


# ---- query ---------------------------------------------------------------------


async def test_query_ranks_by_cosine_similarity(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(
        namespace, {"d": [Row("e4", E4), Row("e2", E2), Row("e1", E1), Row("e3", E3)]}
    )
    hits = await sink.query(namespace, [2.0, 0.0, 0.0, 0.0], top_k=10)  # norm does not matter
    assert [hit.chunk_id for hit in hits] == ["e1", "e2", "e3", "e4"]
    assert [hit.score for hit in hits] == pytest.approx([1.0, 0.8, 0.0, -1.0], abs=1e-5)
    assert all(hit.document_id == "d" for hit in hits)
    top = await sink.query(namespace, E3, top_k=2)
    assert [hit.chunk_id for hit in top] == ["e3", "e2"]
    assert [hit.score for hit in top] == pytest.approx([1.0, 0.6], abs=1e-5)


async def test_query_ranks_by_squared_euclidean_distance(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, L2)
    await sink.replace_documents(
        namespace, {"d": [Row("e4", E4), Row("e2", E2), Row("e1", E1), Row("e3", E3)]}
    )
    hits = await sink.query(namespace, E1, top_k=10)
    assert [hit.chunk_id for hit in hits] == ["e1", "e2", "e3", "e4"]
    assert [hit.score for hit in hits] == pytest.approx([0.0, -0.4, -2.0, -4.0], abs=1e-5)
    (far,) = await sink.query(namespace, [2.0, 0.0, 0.0, 0.0], top_k=1)
    assert far.chunk_id == "e1"
    assert far.score == pytest.approx(-1.0, abs=1e-5)


async def test_equality_filters_are_anded(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(
        namespace,
        {
            "a": [
                Row("a1", E1, {"lang": "en", "page": 1, "draft": False}),
                Row("a2", E2, {"lang": "en", "page": 2, "draft": True}),
            ],
            "b": [Row("b1", E3, {"lang": "fr", "page": 1}), Row("b2", E4, {"lang": "en", "page": 2.5})],
        },
    )

    async def matching(filter: dict[str, str | int | float | bool]) -> list[str]:
        return [hit.chunk_id for hit in await sink.query(namespace, E1, top_k=10, filter=filter)]

    assert await matching({"lang": "en"}) == ["a1", "a2", "b2"]
    assert await matching({"lang": "en", "page": 2}) == ["a2"]
    assert await matching({"page": 1}) == ["a1", "b1"]
    assert await matching({"page": 1.0}) == ["a1", "b1"]  # numbers compare by value
    assert await matching({"page": 2.5}) == ["b2"]
    assert await matching({"page": "1"}) == []  # a string is not a number
    assert await matching({"draft": False}) == ["a1"]
    assert await matching({"draft": 0}) == []  # nor is a boolean
    assert await matching({"lang": "de"}) == []
    assert await matching({"missing": "x"}) == []
    assert await matching({"document_id": "b"}) == ["b1", "b2"]
    assert await matching({"document_id": "b", "lang": "en"}) == ["b2"]
    assert await matching({"chunk_id": "a2"}) == ["a2"]
    assert await matching({"document_id": 7}) == []
    assert await matching({}) == ["a1", "a2", "b1", "b2"]


async def test_attributes_round_trip(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    attributes: dict[str, JSONValue] = {
        "text": "Wireless noise-cancelling headphones ✓",
        "page": 2,
        "ratio": 0.25,
        "ok": True,
        "none": None,
        "tags": ["a", "b"],
        "nested": {"x": [1, {"y": "z"}], "empty": {}},
        "id": "user attribute named id",
        "vector": "user attribute named vector",
    }
    await sink.replace_documents(
        namespace, {"a": [Row("c", E1, {**attributes, "document_id": "a", "chunk_id": "c"})]}
    )
    (hit,) = await sink.query(namespace, E1, top_k=1)
    assert hit.attributes == {**attributes, "document_id": "a", "chunk_id": "c"}
    assert [
        h.chunk_id for h in await sink.query(namespace, E1, top_k=1, filter={"id": "user attribute named id"})
    ] == ["c"]


# ---- fencing tokens (docs/reliability.md, "Fenced sink writes") -----------------


async def test_a_write_under_an_older_token_never_shows_next_to_a_newer_one(
    sink: Sink, namespace: str
) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    # The newer holder (token 7) writes first; a writer whose lease expired (token 5)
    # writes afterwards, with the same chunk ids and one more, nearer to every query.
    await sink.replace_documents(namespace, {"d": rows("d", [E3, E4], v="new")}, {"d": 7})
    await sink.replace_documents(namespace, {"d": rows("d", [E1, E1, E2], v="old")}, {"d": 5})
    assert await sink.count(namespace, "d") == 5  # written, not replacing the newer rows
    hits = await sink.query(namespace, E1, top_k=10)
    assert sorted((hit.chunk_id, hit.attributes["v"], hit.fencing_token) for hit in hits) == [
        ("d#0", "new", 7),
        ("d#1", "new", 7),
    ]
    # Even when the hidden rows are the nearest ones, top_k is filled with visible rows.
    (nearest,) = await sink.query(namespace, E1, top_k=1)
    assert (nearest.chunk_id, nearest.attributes["v"]) == ("d#0", "new")
    assert await chunk_ids(sink, namespace, "d") == {"d#0", "d#1"}

    # The stale writer's clean-up removes its own rows and never the newer ones.
    await sink.delete_documents(namespace, ["d"], {"d": 5})
    assert await sink.count(namespace, "d") == 2
    assert await chunk_ids(sink, namespace, "d") == {"d#0", "d#1"}
    await sink.delete_documents(namespace, ["d"], {"d": 6})
    assert await sink.count(namespace, "d") == 2


async def test_a_newer_token_replaces_older_rows_and_a_retry_overwrites(sink: Sink, namespace: str) -> None:
    await sink.ensure_namespace(namespace, 4, COSINE)
    await sink.replace_documents(namespace, {"d": rows("d", [E1, E2, E3]), "e": rows("e", [E4])})
    await sink.replace_documents(namespace, {"d": rows("d", [E2, E3])}, {"d": 3})
    assert await sink.count(namespace, "d") == 2
    await sink.replace_documents(namespace, {"d": rows("d", [E4])}, {"d": 4})
    await sink.replace_documents(namespace, {"d": rows("d", [E4])}, {"d": 4})  # a retry
    assert await sink.count(namespace, "d") == 1
    assert sorted((hit.chunk_id, hit.fencing_token) for hit in await sink.query(namespace, E4, top_k=10)) == [
        ("d#0", 4),
        ("e#0", 0),
    ]
    # A write under an older token leaves the newer rows, and a newer empty write deletes all.
    await sink.replace_documents(namespace, {"d": []}, {"d": 2})
    assert await sink.count(namespace, "d") == 1
    await sink.replace_documents(namespace, {"d": []}, {"d": 9})
    assert await sink.count(namespace, "d") == 0
    assert await sink.count(namespace, "e") == 1
