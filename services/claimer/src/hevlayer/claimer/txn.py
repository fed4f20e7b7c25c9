"""Transactions with retries, S3 side effects and the pipeline row they need.

:func:`run` executes a unit of work in one PostgreSQL transaction. Deadlocks
and serialization failures are retried a few times. Manifests written to S3
during an attempt that does not commit are deleted again (best effort; the
sweeper of :class:`~hevlayer.claimer.segment_garbage.ManifestGarbage` deletes
what remains); manifests the committed transaction orphaned (its
``garbage``) are deleted after the commit. Both go through the caller's
:class:`ObjectCleanup` (the abort and post-commit hooks), so this module
knows nothing of segments.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import asyncpg

from hevlayer.claimer.database import CONNECTION_ERRORS, Database
from hevlayer.claimer.validation import validate_pipeline_id
from hevlayer.common.errors import NotFound, Unavailable

log = logging.getLogger("hevlayer.claimer.txn")

T = TypeVar("T")
Clock = Callable[[], datetime]


class RetryTransaction(Exception):
    """Raised by a unit of work that lost a race it can only resolve by starting over."""


RETRIED_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    RetryTransaction,
)
ATTEMPTS = 4


def system_clock() -> datetime:
    """The current time (UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class PipelineConfig:
    """What lease operations need to know about a pipeline."""

    id: str
    paused: bool
    max_attempts: int
    default_lease_seconds: int
    queue_backend: str
    create_time: datetime
    """When the pipeline was created: its incarnation (:func:`hevlayer.client.naming.incarnation_of`)
    is part of its pack keys."""

    @property
    def segmented(self) -> bool:
        """True if lightweight ids go to the segmented queue."""
        return self.queue_backend == "segment"


async def pipeline_config(
    conn: asyncpg.Connection, pipeline_id: str, field_name: str = "pipeline_id"
) -> PipelineConfig:
    """The pipeline's settings; NOT_FOUND if it does not exist."""
    validate_pipeline_id(pipeline_id, field_name)
    row = await conn.fetchrow(
        """SELECT id, paused, max_attempts, default_lease_seconds, queue_backend, create_time
           FROM pipelines WHERE id = $1""",
        pipeline_id,
    )
    if row is None:
        raise NotFound(f"pipeline {pipeline_id!r} not found", metadata={"pipeline_id": pipeline_id})
    return PipelineConfig(**dict(row))


MAX_UNCOMMITTED_SECONDS = 60.0
"""Longest time from an attempt's first manifest write to its commit. An attempt past it is
started over instead of committed, so a manifest no row references once it is older than this
(plus the commit's own time) is one no transaction will ever reference: the sweeper of
:class:`~hevlayer.claimer.segment_garbage.ManifestGarbage` deletes such manifests once they are
``CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS`` old (at least five times this)."""


@dataclass
class Work:
    """Side effects of one transaction attempt."""

    written: list[str] = field(default_factory=list)
    """Manifests written during the attempt (deleted if it does not commit)."""
    garbage: list[str] = field(default_factory=list)
    """Manifests orphaned by the attempt (recorded in segment_garbage; deleted after commit)."""
    first_write: float | None = None
    """``time.monotonic()`` when the attempt began writing its first manifest."""

    def writing(self, key: str) -> None:
        """Record a manifest about to be written (before its PUT: a PUT that fails may still
        have written it)."""
        if self.first_write is None:
            self.first_write = time.monotonic()
        self.written.append(key)

    def check_age(self) -> None:
        """Just before the commit: :class:`RetryTransaction` if the attempt's first manifest was
        written more than :data:`MAX_UNCOMMITTED_SECONDS` ago (the orphan sweeper may count it
        as abandoned by then)."""
        if self.first_write is not None and time.monotonic() - self.first_write > MAX_UNCOMMITTED_SECONDS:
            raise RetryTransaction(
                f"{len(self.written)} manifests written more than "
                f"{MAX_UNCOMMITTED_SECONDS:.0f} s before the commit"
            )


class ObjectCleanup(Protocol):
    """What :func:`run` calls about the S3 objects of a transaction (:class:`Work`)."""

    async def discard(self, keys: Sequence[str], *, outcome_unknown: bool = False) -> None:
        """After an attempt that did not commit: delete the objects it wrote. ``outcome_unknown``:
        the connection failed, so the attempt may have committed after all."""

    async def collect(self, keys: Sequence[str]) -> None:
        """After the commit: delete the objects the transaction orphaned."""


async def run(
    db: Database,
    body: Callable[[asyncpg.Connection, Work], Awaitable[T]],
    cleanup: ObjectCleanup | None = None,
    *,
    transaction: bool = True,
) -> T:
    """Run ``body`` in a transaction, retrying deadlocks; hand the S3 side effects to ``cleanup``
    (none: the body writes no objects). ``transaction=False``: ``body`` gets a pooled
    connection outside any transaction (each statement commits by itself; a body of one
    writing statement saves the BEGIN and COMMIT round trips) and is retried the same way."""
    for attempt in range(ATTEMPTS):
        work = Work()
        try:
            async with db.transaction() if transaction else db.acquire() as conn:
                result = await body(conn, work)
                work.check_age()
        except BaseException as exc:
            if work.written and cleanup is not None:
                # A lost connection may have lost only COMMIT's answer, not the commit.
                unknown = isinstance(exc, (Unavailable, *CONNECTION_ERRORS))
                await cleanup.discard(work.written, outcome_unknown=unknown)
            if isinstance(exc, RETRIED_ERRORS):
                if attempt + 1 < ATTEMPTS:
                    log.info("retrying after %s", type(exc).__name__)
                    await asyncio.sleep(0.005 * 2**attempt)
                    continue
                raise Unavailable(f"PostgreSQL contention: {type(exc).__name__}", retry_after=0.1) from exc
            raise
        if work.garbage and cleanup is not None:
            await cleanup.collect(work.garbage)
        return result
    raise AssertionError("unreachable")
