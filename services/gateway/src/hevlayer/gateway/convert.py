"""Conversions shared by the gRPC and REST adapters: Struct <-> JSON values,
errors -> DocumentError, and the JSON shapes of the REST answers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.common.errors import InvalidArgument, ServiceError
from hevlayer.gateway.sinks import JSONValue

_MAX_SAFE_INT = 2**53


def value_to_python(value: struct_pb2.Value) -> JSONValue:
    """A Struct value as plain JSON; integral numbers come back as ints."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) < _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    return None


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, JSONValue]:
    """A Struct as a plain dict (integral numbers as ints)."""
    return {key: value_to_python(value) for key, value in struct.fields.items()}


def python_to_struct(values: Mapping[str, Any], field: str = "metadata") -> struct_pb2.Struct:
    """A JSON object as a Struct; InvalidArgument naming ``field`` if it is not one."""
    struct = struct_pb2.Struct()
    try:
        struct.update(values)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument.field(field, f"must be a JSON object: {exc}") from None
    return struct


def document_error(error: ServiceError) -> document_pb2.DocumentError:
    """The DocumentError of a per-document failure."""
    return document_pb2.DocumentError(
        code=error.code.value[0],
        message=error.message,
        field_violations=[
            document_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations
        ],
    )


def timestamp_json(stamp: timestamp_pb2.Timestamp) -> str | None:
    """RFC 3339 (UTC), or None for an unset timestamp."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def chunk_json(chunk: document_pb2.Chunk) -> dict[str, JSONValue]:
    """A chunk as the REST API shows it."""
    out: dict[str, JSONValue] = {"id": chunk.id, "text": chunk.text}
    if chunk.HasField("metadata"):
        out["metadata"] = struct_to_python(chunk.metadata)
    return out


def lease_json(lease: document_pb2.Lease) -> dict[str, JSONValue]:
    """A lease as the REST API shows it."""
    return {
        "document_id": lease.document_id,
        "stage": lease.stage,
        "worker_id": lease.worker_id,
        "fencing_token": lease.fencing_token,
        "expires_at": timestamp_json(lease.expires_at),
        "attempts": lease.attempts,
        "content_hash": lease.content_hash,
        "chunk_count": lease.chunk_count,
    }


def document_state_json(state: staging_pb2.DocumentState) -> dict[str, JSONValue]:
    """A document's state as the REST API shows it."""
    return {
        "document_id": state.document_id,
        "stage": state.stage,
        "fencing_token": state.fencing_token,
        "claimed_by": state.claimed_by or None,
        "lease_expires_at": timestamp_json(state.lease_expires_at),
        "attempts": state.attempts,
        "last_error": state.last_error,
        "content_hash": state.content_hash,
        "chunk_count": state.chunk_count,
        "update_time": timestamp_json(state.update_time),
    }


METRIC_NAMES = {
    pipeline_pb2.DISTANCE_METRIC_UNSPECIFIED: "cosine_distance",
    pipeline_pb2.DISTANCE_METRIC_COSINE_DISTANCE: "cosine_distance",
    pipeline_pb2.DISTANCE_METRIC_EUCLIDEAN_SQUARED: "euclidean_squared",
}
METRIC_VALUES = {
    "cosine_distance": pipeline_pb2.DISTANCE_METRIC_COSINE_DISTANCE,
    "euclidean_squared": pipeline_pb2.DISTANCE_METRIC_EUCLIDEAN_SQUARED,
}
QUEUE_NAMES = {
    pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED: None,
    pipeline_pb2.QUEUE_BACKEND_SEGMENT: "segment",
    pipeline_pb2.QUEUE_BACKEND_ROW: "row",
}
QUEUE_VALUES = {"segment": pipeline_pb2.QUEUE_BACKEND_SEGMENT, "row": pipeline_pb2.QUEUE_BACKEND_ROW}
SINK_NAMES = {
    pipeline_pb2.SINK_UNSPECIFIED: None,
    pipeline_pb2.SINK_MILVUS_LITE: "milvus_lite",
    pipeline_pb2.SINK_MILVUS: "milvus",
    pipeline_pb2.SINK_TURBOPUFFER: "turbopuffer",
}
SINK_VALUES = {
    "milvus_lite": pipeline_pb2.SINK_MILVUS_LITE,
    "milvus": pipeline_pb2.SINK_MILVUS,
    "turbopuffer": pipeline_pb2.SINK_TURBOPUFFER,
}
TRANSITION_NAMES: dict[int, str] = {
    lease_pb2.TRANSITION_OUTCOME_UNSPECIFIED: "unspecified",
    lease_pb2.TRANSITION_OUTCOME_MOVED: "moved",
    lease_pb2.TRANSITION_OUTCOME_NOT_HELD: "not_held",
    lease_pb2.TRANSITION_OUTCOME_NOT_FOUND: "not_found",
}


def pipeline_json(pipeline: pipeline_pb2.Pipeline) -> dict[str, JSONValue]:
    """A pipeline as the REST API shows it."""
    return {
        "id": pipeline.id,
        "target_namespace": pipeline.target_namespace,
        "distance_metric": METRIC_NAMES.get(pipeline.distance_metric, "cosine_distance"),
        "paused": pipeline.paused,
        "max_attempts": pipeline.max_attempts,
        "default_lease_seconds": pipeline.default_lease_seconds,
        "queue_backend": QUEUE_NAMES.get(pipeline.queue_backend),
        "sink": SINK_NAMES.get(pipeline.sink),
        "dimension": pipeline.dimension,
        "summaries_enabled": pipeline.summaries_enabled,
        "create_time": timestamp_json(pipeline.create_time),
        "update_time": timestamp_json(pipeline.update_time),
    }
