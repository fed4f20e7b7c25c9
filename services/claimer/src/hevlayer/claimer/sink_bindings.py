"""Which sink instance holds each pipeline's vectors (``BindSinkInstance``; migration 0006).

Two gateways on different Milvus Lite databases would each write their own file and split
one pipeline's index between them. The first gateway that uses a pipeline's sink binds the
pipeline to its instance here; a gateway on another instance sees the binding and refuses
the pipeline (docs/reliability.md, "Replicas"). A binding is never replaced and is deleted
with its pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from hevlayer.claimer.database import Database
from hevlayer.claimer.pipelines import SINKS
from hevlayer.common.errors import InvalidArgument, NotFound

MAX_TEXT_BYTES = 4096
"""Longest instance id or location accepted (UTF-8 bytes)."""

# One statement: insert the binding unless the pipeline has one, and return the binding in
# force (the inserted row, else the existing one; the outer SELECT sees the table as it was
# when the statement started, so exactly one of the two parts answers, except when another
# bind committed after that start: then neither does and the call is repeated).
_BIND = """
WITH inserted AS (
    INSERT INTO pipeline_sink_bindings (pipeline_id, kind, instance_id, location)
    SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM pipelines WHERE id = $1)
    ON CONFLICT (pipeline_id) DO NOTHING
    RETURNING kind, instance_id, location, bind_time
)
SELECT kind, instance_id, location, bind_time FROM inserted
UNION ALL
SELECT kind, instance_id, location, bind_time FROM pipeline_sink_bindings WHERE pipeline_id = $1
"""


@dataclass(frozen=True)
class SinkBinding:
    """The sink instance a pipeline is bound to."""

    kind: str
    instance_id: str
    location: str
    bind_time: datetime


def _check_text(value: str, field_name: str, *, required: bool) -> None:
    if required and not value:
        raise InvalidArgument.field(field_name, "is required")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise InvalidArgument.field(field_name, f"must be at most {MAX_TEXT_BYTES} UTF-8 bytes")
    if "\x00" in value:
        raise InvalidArgument.field(field_name, "must not contain NUL")


class SinkBindings:
    """Bindings of pipelines to sink instances, in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def bind(self, pipeline_id: str, kind: str, instance_id: str, location: str) -> SinkBinding:
        """Bind the pipeline to the instance unless it is bound already; the binding in force.
        NOT_FOUND if the pipeline does not exist; INVALID_ARGUMENT naming the field."""
        _check_text(pipeline_id, "pipeline_id", required=True)
        if kind not in SINKS:
            raise InvalidArgument.field("instance.kind", f"must be one of {', '.join(SINKS)}")
        _check_text(instance_id, "instance.instance_id", required=True)
        _check_text(location, "instance.location", required=False)
        for _ in range(5):
            async with self._db.acquire() as conn:
                try:
                    row = await conn.fetchrow(_BIND, pipeline_id, kind, instance_id, location)
                except asyncpg.ForeignKeyViolationError:
                    row = None  # the pipeline was deleted meanwhile
                if row is not None:
                    return SinkBinding(row["kind"], row["instance_id"], row["location"], row["bind_time"])
                exists = await conn.fetchval("SELECT 1 FROM pipelines WHERE id = $1", pipeline_id)
            if exists is None:
                raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
        # Five binds in a row lost to concurrent ones cannot happen: a binding, once committed,
        # is seen by the next statement.
        raise RuntimeError(f"could not read the sink binding of pipeline {pipeline_id!r}")
