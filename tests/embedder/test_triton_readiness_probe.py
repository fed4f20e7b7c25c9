"""The launcher's hand-written readiness messages against Triton's generated classes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from hevlayer.triton.readiness import model_ready_request, ready_field


@given(st.text())
def test_a_model_ready_request_is_what_the_generated_class_writes(name: str) -> None:
    assert model_ready_request(name) == service_pb2.ModelReadyRequest(name=name).SerializeToString()


@given(st.booleans())
def test_ready_is_read_from_both_responses(ready: bool) -> None:
    assert ready_field(service_pb2.ServerReadyResponse(ready=ready).SerializeToString()) is ready
    assert ready_field(service_pb2.ModelReadyResponse(ready=ready).SerializeToString()) is ready


def test_unknown_fields_are_skipped_and_a_truncated_message_is_not_ready() -> None:
    # field 2 (length-delimited "xy"), field 3 (fixed64), field 4 (fixed32), then ready = 1
    payload = b"\x12\x02xy" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x08\x01"
    assert ready_field(payload) is True
    assert ready_field(b"\x08") is False  # the value is missing
    assert ready_field(b"\x12\x05xy\x08\x01") is False  # a length past the end
    assert ready_field(b"\x0b\x08\x01") is False  # wire type 3 (a group): not Triton's
    assert ready_field(b"\x08\x96\x01") is True  # a multi-byte varint is still true
