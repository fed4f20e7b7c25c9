"""Validation of the fields of lease and document-state requests.

Every check raises :class:`InvalidArgument` naming the offending field, so
the gRPC status carries a ``BadRequest`` field violation with its path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hevlayer.common.errors import InvalidArgument

PENDING = "pending"
INDEXED = "indexed"
FAILED = "failed"
RESERVED_STAGES = (PENDING, INDEXED, FAILED)
TERMINAL_STAGES = (INDEXED, FAILED)

PIPELINE_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MAX_LIMIT = 10_000
MAX_BATCH = 10_000
MAX_WORKER_ID_BYTES = 256
MAX_DOCUMENT_ID_BYTES = 512
MAX_LEASE_SECONDS = 86_400
MAX_REASON_BYTES = 4096
MAX_HASH_BYTES = 256
MAX_BACKING_BYTES = 2048


def validate_pipeline_id(value: str, field_name: str = "pipeline_id") -> str:
    """The id if it is a valid pipeline id, else INVALID_ARGUMENT naming the field."""
    if not value:
        raise InvalidArgument.field(field_name, "is required")
    if not PIPELINE_ID.match(value):
        raise InvalidArgument.field(
            field_name,
            f"{value!r} is not a valid pipeline id: use 1 to 63 lowercase letters, digits "
            "and '-', starting with a letter and not ending with '-'",
        )
    return value


def stage_name(value: str, field: str) -> str:
    """A valid stage name (any, reserved included)."""
    if not value:
        raise InvalidArgument.field(field, "is required")
    if not STAGE_NAME.match(value):
        raise InvalidArgument.field(
            field,
            f"{value[:80]!r} is not a valid stage name: use 1 to 63 lowercase letters, digits, "
            "'_' and '-', starting with a letter",
        )
    return value


def worker_stage(value: str, field: str) -> str:
    """A stage a worker can hold documents in: valid and not reserved."""
    stage_name(value, field)
    if value in RESERVED_STAGES:
        raise InvalidArgument.field(
            field, f"{value!r} is reserved; documents are held in worker stages such as 'embedding'"
        )
    return value


def claimable_stage(value: str, field: str) -> str:
    """A stage documents can be claimed from: valid and not terminal."""
    stage_name(value, field)
    if value in TERMINAL_STAGES:
        raise InvalidArgument.field(field, f"{value!r} is terminal; claim from 'pending' or a worker stage")
    return value


def worker_id(value: str, field: str = "worker_id") -> str:
    """A worker id of 1 to 256 bytes."""
    if not value:
        raise InvalidArgument.field(field, "is required")
    if len(value.encode()) > MAX_WORKER_ID_BYTES:
        raise InvalidArgument.field(field, f"must be at most {MAX_WORKER_ID_BYTES} bytes")
    return value


def document_id(value: str, field: str) -> str:
    """A document id of 1 to 512 bytes without NUL."""
    if not value:
        raise InvalidArgument.field(field, "is required")
    if len(value) * 4 > MAX_DOCUMENT_ID_BYTES and len(value.encode()) > MAX_DOCUMENT_ID_BYTES:
        raise InvalidArgument.field(field, f"must be at most {MAX_DOCUMENT_ID_BYTES} bytes")
    if "\x00" in value:
        raise InvalidArgument.field(field, "must not contain NUL characters")
    return value


def document_ids(values: Sequence[str], field: str) -> None:
    """Every id valid; the error names the first invalid one (``field[i]``)."""
    for i, value in enumerate(values):
        if not value or len(value) > MAX_DOCUMENT_ID_BYTES // 4 or "\x00" in value:
            document_id(value, f"{field}[{i}]")


def lease_tokens(ids: Sequence[str], tokens: Sequence[int], field: str) -> None:
    """Every lease a gRPC heartbeat, transition or lease check names carries its fencing
    token: 0 is no wildcard. ``field`` names the refs as the store does (``documents``:
    ``documents[3].fencing_token``; ``document_columns``: ``document_columns.fencing_tokens[3]``).
    Ids before the first zero are checked first, so an invalid id is reported as such; a
    length mismatch is left to the store, which names it."""
    if len(ids) != len(tokens) or 0 not in tokens:
        return
    columns = field.endswith("_columns")
    first = list(tokens).index(0)
    for i in range(first + 1):
        document_id(ids[i], f"{field}.document_ids[{i}]" if columns else f"{field}[{i}].document_id")
    raise InvalidArgument.field(
        f"{field}.fencing_tokens[{first}]" if columns else f"{field}[{first}].fencing_token",
        "is required: the fencing token of the lease, as the claim returned it (0 is no wildcard)",
    )


def limit(value: int, field: str = "limit") -> int:
    """A claim limit between 1 and 10000."""
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument.field(field, f"must be between 1 and {MAX_LIMIT}, got {value}")
    return value


def lease_seconds(value: int, field: str = "lease_seconds") -> int:
    """0 (pipeline default) to 86400."""
    if not 0 <= value <= MAX_LEASE_SECONDS:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_LEASE_SECONDS}, got {value}")
    return value


def batch_size(count: int, field: str, maximum: int = MAX_BATCH) -> None:
    """At most ``maximum`` items in one request."""
    if count > maximum:
        raise InvalidArgument.field(field, f"at most {maximum} items per request, got {count}")


def max_bytes(value: str, maximum: int, field: str) -> str:
    """A string of at most ``maximum`` UTF-8 bytes."""
    if len(value) * 4 > maximum and len(value.encode()) > maximum:
        raise InvalidArgument.field(field, f"must be at most {maximum} bytes")
    return value
