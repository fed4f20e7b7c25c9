"""Pipelines: validation and storage, independent of gRPC.

The store speaks in :class:`PipelineRecord` values and raises
:mod:`hevlayer.common.errors` exceptions naming the offending field.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from hevlayer.claimer.database import Database
from hevlayer.claimer.segments import SegmentQueue
from hevlayer.claimer.validation import PIPELINE_ID, validate_pipeline_id
from hevlayer.client.naming import NAMESPACE_TAKEN, effective_namespace
from hevlayer.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Violation

NAMESPACE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
DISTANCE_METRICS = ("cosine_distance", "euclidean_squared")
QUEUE_BACKENDS = ("segment", "row")
SINKS = ("milvus_lite", "milvus", "turbopuffer")
RESERVED_STAGES = ("pending", "indexed", "failed")
PENDING = "pending"
UPDATABLE_FIELDS = ("paused", "max_attempts", "default_lease_seconds", "dimension", "summaries_enabled")
NAMESPACE_INDEX = "pipelines_sink_namespace"
"""The unique index on (sink, target_namespace) (migration 0004)."""
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class PipelineDefaults:
    """Server defaults for what a create request leaves unset."""

    queue_backend: str = "segment"
    sink: str = "milvus_lite"
    max_attempts: int = 5
    lease_seconds: int = 900


@dataclass(frozen=True)
class PipelineSpec:
    """What a client asks for when creating a pipeline (empty/0 = default)."""

    id: str
    target_namespace: str = ""
    distance_metric: str = ""
    paused: bool = False
    max_attempts: int = 0
    default_lease_seconds: int = 0
    queue_backend: str = ""
    sink: str = ""
    dimension: int = 0
    summaries_enabled: bool = False


@dataclass(frozen=True)
class PipelineRecord:
    """A stored pipeline."""

    id: str
    target_namespace: str
    distance_metric: str
    paused: bool
    max_attempts: int
    default_lease_seconds: int
    queue_backend: str
    sink: str
    dimension: int
    create_time: datetime
    update_time: datetime
    summaries_enabled: bool = False


@dataclass(frozen=True)
class PipelineStatus:
    """Per-stage counts of one pipeline."""

    pipeline_id: str
    counts: Mapping[str, int] = field(default_factory=dict)
    version: int = 0
    observe_time: datetime | None = None

    @property
    def pending_count(self) -> int:
        """Documents waiting in "pending" (what KEDA scales on)."""
        return int(self.counts.get(PENDING, 0))


def _check_range(value: int, low: int, high: int, field_name: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument.field(field_name, f"must be between {low} and {high}, got {value}")


def resolve_spec(spec: PipelineSpec, defaults: PipelineDefaults) -> PipelineSpec:
    """Validate a create request and fill in defaults."""
    validate_pipeline_id(spec.id, "pipeline.id")
    namespace = effective_namespace(spec.id, spec.target_namespace)
    if not NAMESPACE.match(namespace):
        raise InvalidArgument.field(
            "pipeline.target_namespace",
            f"{namespace!r} is not a valid namespace: letters, digits and '_', "
            "not starting with a digit, at most 255 characters",
        )
    metric = spec.distance_metric or "cosine_distance"
    if metric not in DISTANCE_METRICS:
        raise InvalidArgument.field(
            "pipeline.distance_metric", f"must be one of {', '.join(DISTANCE_METRICS)}"
        )
    backend = spec.queue_backend or defaults.queue_backend
    if backend not in QUEUE_BACKENDS:
        raise InvalidArgument.field("pipeline.queue_backend", f"must be one of {', '.join(QUEUE_BACKENDS)}")
    sink = spec.sink or defaults.sink
    if sink not in SINKS:
        raise InvalidArgument.field("pipeline.sink", f"must be one of {', '.join(SINKS)}")
    max_attempts = spec.max_attempts or defaults.max_attempts
    _check_range(max_attempts, 1, 1000, "pipeline.max_attempts")
    lease = spec.default_lease_seconds or defaults.lease_seconds
    _check_range(lease, 1, 86400, "pipeline.default_lease_seconds")
    _check_range(spec.dimension, 0, 65536, "pipeline.dimension")
    return PipelineSpec(
        id=spec.id,
        target_namespace=namespace,
        distance_metric=metric,
        paused=spec.paused,
        max_attempts=max_attempts,
        default_lease_seconds=lease,
        queue_backend=backend,
        sink=sink,
        dimension=spec.dimension,
        summaries_enabled=spec.summaries_enabled,
    )


def _namespace_taken(resolved: PipelineSpec, owner: str) -> AlreadyExists:
    description = (
        f"namespace {resolved.target_namespace!r} of sink {resolved.sink} belongs to pipeline {owner!r}; "
        "each pipeline needs a namespace of its own (name another target_namespace)"
    )
    return AlreadyExists(
        f"pipeline.target_namespace: {description}",
        violations=[Violation("pipeline.target_namespace", description)],
        reason=NAMESPACE_TAKEN,
        metadata={
            "pipeline_id": resolved.id,
            "owner_pipeline_id": owner,
            "target_namespace": resolved.target_namespace,
            "sink": resolved.sink,
        },
    )


def _record(row: asyncpg.Record) -> PipelineRecord:
    return PipelineRecord(**dict(row))


def encode_page_token(last_id: str) -> str:
    """Opaque page token: the last id of the previous page."""
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def decode_page_token(token: str) -> str:
    """The last id carried by ``token``; INVALID_ARGUMENT if it is not one of ours."""
    try:
        last = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "is not a token returned by this API") from None
    if not PIPELINE_ID.match(last):
        raise InvalidArgument.field("page_token", "is not a token returned by this API")
    return last


_COLUMNS = (
    "id, target_namespace, distance_metric, paused, max_attempts, default_lease_seconds, "
    "queue_backend, sink, dimension, create_time, update_time, summaries_enabled"
)


class PipelineStore:
    """CRUD and status of pipelines in PostgreSQL."""

    def __init__(
        self, db: Database, defaults: PipelineDefaults, segments: SegmentQueue | None = None
    ) -> None:
        self._db = db
        self.defaults = defaults
        self._segments = segments

    async def create(self, spec: PipelineSpec) -> PipelineRecord:
        """Create a pipeline; ALREADY_EXISTS if the id is taken, or if another pipeline
        of the same sink has the same (effective) target namespace. Nothing is
        written when it is refused."""
        resolved = resolve_spec(spec, self.defaults)
        async with self._db.acquire() as conn:
            owner = await self._namespace_owner(conn, resolved)
            if owner is not None:
                raise _namespace_taken(resolved, owner)
            try:
                row = await self._insert(conn, resolved)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != NAMESPACE_INDEX:
                    raise
                # A concurrent create of the same namespace committed first.
                owner = await self._namespace_owner(conn, resolved)
                raise _namespace_taken(resolved, owner or "(deleted meanwhile)") from None
        if row is None:
            raise AlreadyExists(
                f"pipeline {resolved.id!r} already exists", metadata={"pipeline_id": resolved.id}
            )
        return _record(row)

    @staticmethod
    async def _namespace_owner(conn: asyncpg.Connection, resolved: PipelineSpec) -> str | None:
        """The id of another pipeline of the sink whose namespace is ``resolved``'s, or None."""
        owner: str | None = await conn.fetchval(
            """SELECT id FROM pipelines WHERE sink = $1 AND target_namespace = $2 AND id <> $3
               ORDER BY id LIMIT 1""",
            resolved.sink,
            resolved.target_namespace,
            resolved.id,
        )
        return owner

    @staticmethod
    async def _insert(conn: asyncpg.Connection, resolved: PipelineSpec) -> asyncpg.Record | None:
        """Insert the pipeline; None if the id is taken."""
        row: asyncpg.Record | None = await conn.fetchrow(
            f"""INSERT INTO pipelines (id, target_namespace, distance_metric, paused,
                    max_attempts, default_lease_seconds, queue_backend, sink, dimension,
                    summaries_enabled)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (id) DO NOTHING
                RETURNING {_COLUMNS}""",
            resolved.id,
            resolved.target_namespace,
            resolved.distance_metric,
            resolved.paused,
            resolved.max_attempts,
            resolved.default_lease_seconds,
            resolved.queue_backend,
            resolved.sink,
            resolved.dimension,
            resolved.summaries_enabled,
        )
        return row

    async def get(self, pipeline_id: str) -> PipelineRecord:
        """One pipeline; NOT_FOUND if it does not exist."""
        validate_pipeline_id(pipeline_id)
        async with self._db.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM pipelines WHERE id = $1", pipeline_id)
        if row is None:
            raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
        return _record(row)

    async def list(self, page_size: int, page_token: str) -> tuple[list[PipelineRecord], str]:
        """A page of pipelines ordered by id, and the next page's token ("" at the end)."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        after = decode_page_token(page_token) if page_token else ""
        async with self._db.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM pipelines WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                size + 1,
            )
        records = [_record(r) for r in rows[:size]]
        token = encode_page_token(records[-1].id) if len(rows) > size else ""
        return records, token

    async def update(self, pipeline_id: str, changes: Mapping[str, object]) -> PipelineRecord:
        """Update mutable fields; INVALID_ARGUMENT for an unknown or immutable one."""
        validate_pipeline_id(pipeline_id, "pipeline.id")
        if not changes:
            raise InvalidArgument.field("update_mask", f"must name one of {', '.join(UPDATABLE_FIELDS)}")
        for name, value in changes.items():
            if name not in UPDATABLE_FIELDS:
                raise InvalidArgument.field(
                    "update_mask",
                    f"{name!r} cannot be updated; updatable: {', '.join(UPDATABLE_FIELDS)}",
                )
            if name == "max_attempts":
                _check_range(int(value), 1, 1000, "pipeline.max_attempts")  # type: ignore[call-overload]
            if name == "default_lease_seconds":
                _check_range(int(value), 1, 86400, "pipeline.default_lease_seconds")  # type: ignore[call-overload]
            if name == "dimension":
                _check_range(int(value), 1, 65536, "pipeline.dimension")  # type: ignore[call-overload]
        assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(changes))
        async with self._db.transaction() as conn:
            current = await conn.fetchval(
                "SELECT dimension FROM pipelines WHERE id = $1 FOR UPDATE", pipeline_id
            )
            if current is None:
                raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
            wanted = changes.get("dimension")
            if wanted is not None and current not in (0, wanted):
                raise FailedPrecondition(
                    f"pipeline.dimension: pipeline {pipeline_id!r} already has dimension {current}; "
                    "it is set once (by the first write) and cannot change",
                    violations=[Violation("pipeline.dimension", f"is already {current}")],
                    reason="DIMENSION_FIXED",
                )
            row = await conn.fetchrow(
                f"UPDATE pipelines SET {assignments}, update_time = now() WHERE id = $1 RETURNING {_COLUMNS}",
                pipeline_id,
                *changes.values(),
            )
        return _record(row)

    async def delete(self, pipeline_id: str) -> tuple[int, int]:
        """Delete a pipeline and everything it owns (documents, segments and, after
        the commit, its segment manifests); return (documents, segments) deleted."""
        validate_pipeline_id(pipeline_id)
        keys: list[str] = []
        fence = 0
        async with self._db.transaction() as conn:
            exists = await conn.fetchval("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE", pipeline_id)
            if exists is None:
                raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
            # Without its change head the deletion of its documents logs no changes (migration
            # 0011); the notification ends its watches (NOT_FOUND) once this commits.
            await conn.execute("DELETE FROM document_change_heads WHERE pipeline_id = $1", pipeline_id)
            await conn.execute("DELETE FROM document_changes WHERE pipeline_id = $1", pipeline_id)
            await conn.execute("SELECT pg_notify('hevlayer_document_changes', $1)", pipeline_id)
            documents = await conn.fetchval(
                """WITH gone AS (DELETE FROM documents WHERE pipeline_id = $1 RETURNING 1)
                   SELECT count(*) FROM gone""",
                pipeline_id,
            )
            segments = 0
            if self._segments is not None:
                segments, keys, fence = await self._segments.rows.delete_pipeline(conn, pipeline_id)
            else:
                segments = await conn.fetchval(
                    "SELECT count(*) FROM queue_segments WHERE pipeline_id = $1", pipeline_id
                )
            await conn.execute("DELETE FROM pipelines WHERE id = $1", pipeline_id)
        if self._segments is not None:
            await self._segments.garbage.remove_pipeline_objects(pipeline_id, keys, fence)
        return int(documents), int(segments)

    async def status(self, pipeline_id: str) -> PipelineStatus:
        """Per-stage counts from the counter table (no scan of documents)."""
        validate_pipeline_id(pipeline_id)
        async with self._db.acquire() as conn:
            rows = await conn.fetch(
                """SELECT p.id, c.stage, c.count, c.version, now() AS observed
                   FROM pipelines p LEFT JOIN pipeline_stage_counts c ON c.pipeline_id = p.id
                   WHERE p.id = $1""",
                pipeline_id,
            )
        if not rows:
            raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
        counts = {r["stage"]: int(r["count"]) for r in rows if r["stage"] is not None and r["count"]}
        version = max((int(r["version"]) for r in rows if r["version"] is not None), default=0)
        return PipelineStatus(pipeline_id, counts, version, rows[0]["observed"])
