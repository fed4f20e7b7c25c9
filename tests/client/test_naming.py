"""hevlayer.client.naming: the one definition of a pipeline's namespace, incarnation, pack
prefix and backing rule that claimer, gateway and operator share."""

from __future__ import annotations

import datetime

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client.naming import (
    backing_problem,
    default_namespace,
    effective_namespace,
    incarnation,
    incarnation_of,
    object_key_of,
    pack_prefix,
    pipeline_prefix,
)

PACKS = "pipelines/product-images/18c2f4a9b3e01/packs/"


def test_namespaces() -> None:
    assert default_namespace("product-images") == "product_images"
    assert effective_namespace("product-images") == "product_images"
    assert effective_namespace("product-images", "") == "product_images"
    assert effective_namespace("product-images", "products") == "products"


def test_the_gateway_and_the_claimer_derive_one_namespace() -> None:
    """The gateway reads a Pipeline message, the claimer a stored spec: one rule for both."""
    from hevlayer.gateway.claimer_client import PipelineInfo

    pipeline = pipeline_pb2.Pipeline(id="a-b-c")
    assert PipelineInfo.from_proto(pipeline).target_namespace == effective_namespace("a-b-c") == "a_b_c"


@given(
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(2200, 1, 1),
        timezones=st.just(datetime.UTC),
    )
)
def test_incarnation_of_a_datetime_is_the_protos(created: datetime.datetime) -> None:
    """The claimer computes it from PostgreSQL's timestamptz, the gateway from the
    Pipeline's create_time: both must name the same prefix, to the microsecond."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(created)
    assert incarnation_of(created) == incarnation(stamp.ToMicroseconds())


def test_incarnation_is_hex_microseconds() -> None:
    created = datetime.datetime(2026, 12, 4, 9, 0, 0, 123456, tzinfo=datetime.UTC)
    assert int(incarnation_of(created), 16) == 1796374800123456
    assert incarnation(255) == "ff"


def test_prefixes() -> None:
    assert pipeline_prefix("product-images", "18c2f4a9b3e01") == "pipelines/product-images/18c2f4a9b3e01/"
    assert pack_prefix("product-images", "18c2f4a9b3e01") == PACKS
    assert object_key_of(f"{PACKS}x.pack#8:3") == f"{PACKS}x.pack"


@pytest.mark.parametrize(
    "backing",
    ["", f"{PACKS}0000000000000001-abcdef012345.pack#0:1", f"{PACKS}x#18446744073709551615:0"],
)
def test_own_backings(backing: str) -> None:
    assert backing_problem(backing, "product-images", "18c2f4a9b3e01") is None


@pytest.mark.parametrize(
    ("backing", "problem"),
    [
        ("pipelines/other/18c2f4a9b3e01/packs/x.pack#0:1", "outside the pipeline's packs"),
        ("pipelines/product-images/18c2f4a9b3e00/packs/x.pack#0:1", "outside the pipeline's packs"),
        ("pipelines/product-images/18c2f4a9b3e01/x.pack#0:1", "outside the pipeline's packs"),
        ("pipelines/product-images-2/18c2f4a9b3e01/packs/x.pack#0:1", "outside the pipeline's packs"),
        ("secrets/key.json#0:1", "outside the pipeline's packs"),
        (f"{PACKS}sub/x.pack#0:1", "outside the pipeline's packs"),
        (f"{PACKS}a#b#0:1", "outside the pipeline's packs"),
        (f"{PACKS}#0:1", "outside the pipeline's packs"),
        (f"{PACKS}x.pack", "is not '<object key>#<offset>:<length>'"),
        (f"{PACKS}x.pack#1", "is not '<object key>#<offset>:<length>'"),
        (f"{PACKS}x.pack#-1:2", "is not '<object key>#<offset>:<length>'"),
        (f"{PACKS}x.pack#1:", "is not '<object key>#<offset>:<length>'"),
    ],
)
def test_foreign_backings(backing: str, problem: str) -> None:
    found = backing_problem(backing, "product-images", "18c2f4a9b3e01")
    assert found is not None
    assert problem in found
