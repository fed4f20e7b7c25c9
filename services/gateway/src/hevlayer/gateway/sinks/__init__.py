"""Vector sinks of the gateway: Milvus Lite (default), Milvus / Zilliz and Turbopuffer.

Transport-free: plain values in and out, ``hevlayer.common.errors`` raised.
See :mod:`.base` for the contract and ``docs/sinks.md`` for the storage
layout of each backend.
"""

from .base import (
    MAX_TOP_K,
    RESERVED_ATTRIBUTES,
    DistanceMetric,
    Hit,
    JSONValue,
    NamespaceSpec,
    Row,
    Scalar,
    Sink,
    SinkInstance,
    SinkKind,
    filter_tag,
    vector_id,
)
from .factory import SinkPool, open_sink
from .settings import SinkSettings

__all__ = [
    "MAX_TOP_K",
    "RESERVED_ATTRIBUTES",
    "DistanceMetric",
    "Hit",
    "JSONValue",
    "NamespaceSpec",
    "Row",
    "Scalar",
    "Sink",
    "SinkInstance",
    "SinkKind",
    "SinkPool",
    "SinkSettings",
    "filter_tag",
    "open_sink",
    "vector_id",
]
