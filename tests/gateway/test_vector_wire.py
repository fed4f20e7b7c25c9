"""The fast WriteVectors decoder reads every valid encoding of Vector.values, into float32
arrays that the sinks validate as they validate lists."""

from __future__ import annotations

import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.common.errors import InvalidArgument
from hevlayer.gateway.sinks import Row
from hevlayer.gateway.sinks.base import DistanceMetric, NamespaceSpec, prepare_documents
from hevlayer.gateway.wire import parse_write_request, vector_values

floats32 = st.floats(width=32, allow_nan=False)


@given(st.lists(floats32, max_size=64), st.text(max_size=10))
def test_packed_values_round_trip(values: list[float], chunk_id: str) -> None:
    request = index_pb2.WriteVectorsRequest(
        pipeline_id="p",
        worker_id="w",
        from_stage="embedding",
        lease=document_pb2.LeaseRef(document_id="d", fencing_token=7),
        vectors=[document_pb2.Vector(id=chunk_id, values=values)],
        end_of_document=True,
    )
    request.vectors[0].attributes.update({"page": 2, "text": "t"})
    raw = parse_write_request(request.SerializeToString())
    assert (raw.pipeline_id, raw.worker_id, raw.from_stage) == ("p", "w", "embedding")
    assert (raw.lease.document_id, raw.lease.fencing_token, raw.end_of_document) == ("d", 7, True)
    assert raw.vectors[0].id == chunk_id
    assert vector_values(raw.vectors[0]).tolist() == list(request.vectors[0].values)
    assert dict(raw.vectors[0].attributes) == {"page": 2.0, "text": "t"}


@given(st.lists(floats32, min_size=1, max_size=16))
def test_unpacked_values_are_read_too(values: list[float]) -> None:
    """proto3 parsers must accept the unpacked encoding (one fixed32 field per value)."""
    vector = b"\x0a\x01c" + b"".join(b"\x15" + struct.pack("<f", v) for v in values)
    assert len(vector) < 128  # one-byte length
    raw = parse_write_request(b"\x2a" + bytes([len(vector)]) + vector)
    expected = document_pb2.Vector.FromString(vector).values
    assert vector_values(raw.vectors[0]).tolist() == list(expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float32_rows_are_validated_as_lists_are(bad: float) -> None:
    spec = NamespaceSpec(3, DistanceMetric.COSINE_DISTANCE)
    [document] = prepare_documents({"d": [Row("c", array("f", [1, 2, 3]))]}, spec)
    assert list(document.rows[0].values) == [1.0, 2.0, 3.0]
    for values in (array("f", [1, bad, 3]), [1.0, bad, 3.0]):
        with pytest.raises(InvalidArgument) as refused:
            prepare_documents({"d": [Row("c", values)]}, spec)
        assert refused.value.violations[0].field == "documents[d].rows[0].values"
        assert refused.value.violations[0].description == "values must be finite (no NaN or infinity)"
    with pytest.raises(InvalidArgument, match="expected 3 values, got 2"):
        prepare_documents({"d": [Row("c", array("f", [1, 2]))]}, spec)
