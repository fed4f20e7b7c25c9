"""Transport-free helpers shared by every sink."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.common.errors import InvalidArgument
from hevlayer.gateway.sinks import DistanceMetric, NamespaceSpec, Row, filter_tag, vector_id
from hevlayer.gateway.sinks.base import prepare_documents, prepare_filter, score_from_distance

ids = st.text(min_size=1, max_size=40)


@given(ids, ids, ids, ids)
def test_vector_ids_are_deterministic_hex_and_distinct(
    doc_a: str, chunk_a: str, doc_b: str, chunk_b: str
) -> None:
    first = vector_id(doc_a, chunk_a)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert vector_id(doc_a, chunk_a) == first
    if (doc_a, chunk_a) != (doc_b, chunk_b):
        assert vector_id(doc_b, chunk_b) != first


def test_vector_ids_do_not_depend_on_where_the_ids_split() -> None:
    assert vector_id("ab", "c") != vector_id("a", "bc")


def test_filter_tags_compare_numbers_by_value_and_nothing_else() -> None:
    assert filter_tag("page", 2) == filter_tag("page", 2.0)
    assert filter_tag("page", 2) != filter_tag("page", "2")
    assert filter_tag("flag", True) != filter_tag("flag", 1)
    assert filter_tag("flag", False) != filter_tag("flag", 0)
    assert filter_tag("a", "b") != filter_tag("b", "a")
    assert filter_tag("x", 0.1) != filter_tag("x", 0.1000001)
    with pytest.raises(ValueError, match="not a filterable value"):
        filter_tag("x", float("nan"))


def test_prepared_filters_split_reserved_keys_from_tags() -> None:
    prepared = prepare_filter({"document_id": "d", "lang": "en", "page": 1})
    assert prepared.document_id == "d"
    assert prepared.chunk_id is None
    assert prepared.tags == tuple(sorted([filter_tag("lang", "en"), filter_tag("page", 1)]))
    assert prepare_filter(None).empty
    assert prepare_filter({"chunk_id": 3}).impossible


def test_prepared_rows_carry_ids_json_and_tags() -> None:
    (document,) = prepare_documents(
        {"d": [Row("c", [1.0, 2.0], {"lang": "en", "nested": {"a": [1]}, "document_id": "d"})]},
        NamespaceSpec(2, DistanceMetric.COSINE_DISTANCE),
    )
    (row,) = document.rows
    assert row.id == vector_id("d", "c")
    assert row.attributes == {"lang": "en", "nested": {"a": [1]}}
    assert row.attributes_json == '{"lang":"en","nested":{"a":[1]}}'
    assert row.filter_tags == [filter_tag("lang", "en")]


def test_too_many_scalar_attributes_are_rejected() -> None:
    attributes = {f"k{i}": i for i in range(129)}
    with pytest.raises(InvalidArgument) as rejected:
        prepare_documents(
            {"d": [Row("c", [1.0], attributes)]}, NamespaceSpec(1, DistanceMetric.COSINE_DISTANCE)
        )
    assert rejected.value.violations[0].field == "documents[d].rows[0].attributes"


def test_scores_are_higher_for_nearer_vectors() -> None:
    assert score_from_distance(DistanceMetric.COSINE_DISTANCE, 0.25) == 0.75
    assert score_from_distance(DistanceMetric.EUCLIDEAN_SQUARED, 0.25) == -0.25
