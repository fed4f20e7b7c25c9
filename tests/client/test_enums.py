"""hevlayer.client.enums: one IntEnum per proto enum, named after the generated constants."""

from __future__ import annotations

from enum import IntEnum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from hevlayer.api.embedding.v1 import embedding_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.client import enums

PAIRS = [
    (enums.TransitionOutcome, lease_pb2.DESCRIPTOR.enum_types_by_name["TransitionOutcome"]),
    (enums.LeaseLayout, lease_pb2.DESCRIPTOR.enum_types_by_name["LeaseLayout"]),
    (enums.WriteOutcome, index_pb2.DESCRIPTOR.enum_types_by_name["WriteOutcome"]),
    (enums.StageOutcome, staging_pb2.DESCRIPTOR.enum_types_by_name["StageOutcome"]),
    (enums.DistanceMetric, pipeline_pb2.DESCRIPTOR.enum_types_by_name["DistanceMetric"]),
    (enums.QueueBackend, pipeline_pb2.DESCRIPTOR.enum_types_by_name["QueueBackend"]),
    (enums.Sink, pipeline_pb2.DESCRIPTOR.enum_types_by_name["Sink"]),
    (enums.JobState, summary_pb2.DESCRIPTOR.enum_types_by_name["JobState"]),
    (enums.InputType, embedding_pb2.DESCRIPTOR.enum_types_by_name["InputType"]),
]


def _prefix(descriptor: EnumDescriptor) -> str:
    return "".join("_" + c if c.isupper() else c for c in descriptor.name).lstrip("_").upper() + "_"


@pytest.mark.parametrize(("enum", "descriptor"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_every_proto_value_has_a_member_of_the_same_name(
    enum: type[IntEnum], descriptor: EnumDescriptor
) -> None:
    prefix = _prefix(descriptor)
    expected = {value.name.removeprefix(prefix): value.number for value in descriptor.values}
    assert {member.name: member.value for member in enum} == expected


def test_every_api_enum_is_covered() -> None:
    modules = [embedding_pb2, index_pb2, lease_pb2, pipeline_pb2, staging_pb2, summary_pb2]
    names = {e.full_name for m in modules for e in m.DESCRIPTOR.enum_types_by_name.values()}
    assert names == {descriptor.full_name for _, descriptor in PAIRS}


def test_a_message_field_converts_to_its_member() -> None:
    result = lease_pb2.TransitionResult(outcome=lease_pb2.TRANSITION_OUTCOME_NOT_FOUND)
    assert enums.TransitionOutcome(result.outcome) is enums.TransitionOutcome.NOT_FOUND
