"""Milvus-specific behaviour of the gateway sinks (the shared contract is in test_sink_contract.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from milvus_lite.search.filter.tokens import TokenKind, tokenize
from pymilvus import DataType, MilvusClient
from support.milvus_lite import MilvusLiteServer

from hevlayer.common.errors import FailedPrecondition, Unavailable
from hevlayer.devstack.ports import free_port
from hevlayer.gateway.sinks import DistanceMetric, NamespaceSpec, Row
from hevlayer.gateway.sinks.base import PreparedFilter, filter_tag
from hevlayer.gateway.sinks.milvus import MilvusSink, collection_schema, filter_expression, milvus_string

E1 = [1.0, 0.0, 0.0, 0.0]
E2 = [0.0, 1.0, 0.0, 0.0]


@given(st.text())
def test_milvus_string_literals_parse_back_to_the_same_text(text: str) -> None:
    tokens = tokenize(milvus_string(text))
    assert [token.kind for token in tokens] == [TokenKind.STRING, TokenKind.EOF]
    assert tokens[0].value == text


def test_filter_expressions() -> None:
    assert filter_expression(PreparedFilter()) == ""
    tag = filter_tag("lang", "en")
    assert (
        filter_expression(PreparedFilter(document_id='a"b', chunk_id="c", tags=(tag,)))
        == f'document_id == "a\\"b" and chunk_id == "c" and array_contains_all(filter_tags, ["{tag}"])'
    )


async def test_milvus_lite_keeps_its_rows_across_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "data" / "vectors.db")
    sink = await MilvusSink.open_lite(path)
    try:
        await sink.ensure_namespace("docs", 4, DistanceMetric.EUCLIDEAN_SQUARED)
        await sink.replace_documents(
            "docs", {"a": [Row("a1", E1), Row("a2", E2), Row("a3", E1)], "b": [Row("b1", E2, {"k": "v"})]}
        )
    finally:
        await sink.close()

    reopened = await MilvusSink.open_lite(path)
    try:
        assert await reopened.describe_namespace("docs") == NamespaceSpec(4, DistanceMetric.EUCLIDEAN_SQUARED)
        assert await reopened.count("docs") == 4
        # The per-document ids are read back from the database: the stale rows go.
        await reopened.replace_documents("docs", {"a": [Row("a9", E2)]})
        assert await reopened.count("docs", "a") == 1
        hits = await reopened.query("docs", E2, top_k=10, filter={"document_id": "a"})
        assert [hit.chunk_id for hit in hits] == ["a9"]
        assert [hit.attributes for hit in await reopened.query("docs", E2, top_k=1, filter={"k": "v"})] == [
            {"k": "v", "document_id": "b", "chunk_id": "b1"}
        ]
    finally:
        await reopened.close()


async def test_milvus_lite_is_opened_once_per_process(tmp_path: Path) -> None:
    path = str(tmp_path / "once.db")
    sink = await MilvusSink.open_lite(path)
    try:
        with pytest.raises(FailedPrecondition) as twice:
            await MilvusSink.open_lite(path)
        assert twice.value.reason == "ALREADY_OPEN"
    finally:
        await sink.close()
    reopened = await MilvusSink.open_lite(path)
    await reopened.close()


def _open_in_another_process(path: str) -> subprocess.CompletedProcess[str]:
    code = f"from pymilvus import MilvusClient; MilvusClient({path!r}).close(); print('opened')"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


async def test_milvus_lite_owns_its_file_until_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "owned.db")
    sink = await MilvusSink.open_lite(path)
    try:
        await sink.ensure_namespace("docs", 4, DistanceMetric.COSINE_DISTANCE)
        held = _open_in_another_process(path)
        assert held.returncode != 0
        assert "Open local milvus failed" in held.stderr
    finally:
        await sink.close()
    released = _open_in_another_process(path)
    assert released.returncode == 0, released.stderr[-2000:]


async def test_a_foreign_collection_is_refused(milvus_server: MilvusLiteServer) -> None:
    client = MilvusClient(uri=milvus_server.uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=4)
    client.create_collection("foreign", schema=schema)
    sink = await MilvusSink.open(milvus_server.uri)
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await sink.ensure_namespace("foreign", 4, DistanceMetric.COSINE_DISTANCE)
        assert refused.value.reason == "FOREIGN_COLLECTION"
    finally:
        await sink.close()
        client.drop_collection("foreign")
        client.close()


async def test_a_collection_created_without_its_index_is_completed(milvus_server: MilvusLiteServer) -> None:
    client = MilvusClient(uri=milvus_server.uri)
    client.create_collection("half_created", schema=collection_schema(4), consistency_level="Strong")
    sink = await MilvusSink.open(milvus_server.uri)
    try:
        assert await sink.describe_namespace("half_created") is None
        spec = await sink.ensure_namespace("half_created", 4, DistanceMetric.EUCLIDEAN_SQUARED)
        assert spec == NamespaceSpec(4, DistanceMetric.EUCLIDEAN_SQUARED)
        await sink.replace_documents("half_created", {"a": [Row("a1", E1)]})
        assert [hit.score for hit in await sink.query("half_created", E2, top_k=1)] == [pytest.approx(-2.0)]
    finally:
        await sink.drop_namespace("half_created")
        await sink.close()
        client.close()


async def test_an_unreachable_milvus_is_unavailable() -> None:
    with pytest.raises(Unavailable) as unreachable:
        await MilvusSink.open(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert unreachable.value.retry_after is not None


async def test_a_killed_milvus_makes_calls_unavailable(tmp_path: Path) -> None:
    server = MilvusLiteServer(tmp_path / "doomed")
    server.start()
    sink = await MilvusSink.open(server.uri, timeout=2)
    try:
        await sink.ensure_namespace("docs", 4, DistanceMetric.COSINE_DISTANCE)
        await sink.replace_documents("docs", {"a": [Row("a1", E1)]})
        server.kill()
        with pytest.raises(Unavailable) as write:
            await sink.replace_documents("docs", {"a": [Row("a1", E2)]})
        assert write.value.reason == "SINK_UNAVAILABLE"
        assert write.value.metadata == {"sink": "milvus"}
        with pytest.raises(Unavailable):
            await sink.query("docs", E1, top_k=1)
    finally:
        await sink.close()
        server.stop()
