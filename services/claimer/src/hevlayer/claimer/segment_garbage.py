"""Manifest objects no segment row needs any more, deleted from S3.

A transaction that orphans manifests (a split, a completed segment, a deleted pipeline) records
them in ``segment_garbage`` and hands them to :meth:`ManifestGarbage.collect` after its commit;
one that does not commit hands what it wrote to :meth:`ManifestGarbage.discard`. Both are the
hooks :func:`hevlayer.claimer.txn.run` calls (:class:`~hevlayer.claimer.txn.ObjectCleanup`).
Whatever a crash leaves behind is deleted by the sweeper: the manifests recorded in
``segment_garbage`` every minute, and, less often, every manifest of a segment pipeline that no
segment row references once it is ``CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS`` old. Those are the
manifests of transactions that never committed and could not clean up: the claimer killed between
its manifest PUT and its COMMIT, or PostgreSQL lost in the middle of a COMMIT and still unreachable
when the claimer asked whether the commit happened. No transaction commits a manifest it wrote
more than :data:`~hevlayer.claimer.txn.MAX_UNCOMMITTED_SECONDS` earlier, so an unreferenced
manifest older than the orphan age will never be referenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from hevlayer.claimer.database import Database
from hevlayer.claimer.manifests import ManifestCache, ObjectStore, segment_id_of, segments_prefix
from hevlayer.common.errors import ServiceError

DEFAULT_ORPHAN_AGE_SECONDS = 900.0
"""``CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS``'s default (its least value is 300: five times the
longest a writer may take to commit, with room for the commit itself and for the difference
between the claimer's and S3's clocks)."""

log = logging.getLogger("hevlayer.claimer.segments")  # the queue's logger, as before the split


class ManifestGarbage:
    """Deletes uncommitted and orphaned manifests (the transactions' cleanup hooks) and sweeps."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        cache: ManifestCache,
        *,
        orphan_age_seconds: float = DEFAULT_ORPHAN_AGE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self.store = store
        self.cache = cache
        self.orphan_age_seconds = orphan_age_seconds
        """How old an unreferenced manifest must be before :meth:`sweep_unreferenced` deletes it."""
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    async def discard(self, keys: Sequence[str], *, outcome_unknown: bool = False) -> None:
        """Delete manifests written by a transaction that did not commit (best effort).

        ``outcome_unknown``: the connection failed, possibly during COMMIT (PostgreSQL killed,
        the connection cut), so the transaction may have committed and its segment rows point
        into these manifests. Only the manifests no segment row references are deleted; when
        PostgreSQL cannot say, all are kept (an orphan manifest costs storage, a deleted one
        would make its segment unclaimable: "segment manifest ... is missing from S3").
        """
        self.cache.forget(keys)
        doomed = list(keys)
        if outcome_unknown:
            try:
                async with self._db.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT manifest_key FROM queue_segments WHERE manifest_key = ANY($1::text[])", doomed
                    )
            except ServiceError as exc:
                log.warning("kept %d manifests of a transaction that may have committed: %s", len(keys), exc)
                return
            referenced = {row[0] for row in rows}
            if referenced:
                log.warning("kept %d manifests of a transaction that committed after all", len(referenced))
            doomed = [key for key in doomed if key not in referenced]
        if not doomed:
            return
        try:
            await self.store.delete(doomed)
        except ServiceError as exc:
            log.warning("could not delete %d uncommitted manifests: %s", len(doomed), exc)

    async def collect(self, keys: Sequence[str]) -> None:
        """Delete orphaned manifests and their segment_garbage rows (best effort)."""
        self.cache.forget(keys)
        try:
            await self.store.delete(list(keys))
            async with self._db.acquire() as conn:
                await conn.execute(
                    "DELETE FROM segment_garbage WHERE manifest_key = ANY($1::text[])", list(keys)
                )
        except ServiceError as exc:
            log.warning("manifest garbage left for the sweeper (%d keys): %s", len(keys), exc)

    async def sweep(self) -> int:
        """Delete every manifest recorded in segment_garbage; return how many."""
        async with self._db.acquire() as conn:
            keys = [r[0] for r in await conn.fetch("SELECT manifest_key FROM segment_garbage LIMIT 10000")]
        if keys:
            await self.collect(keys)
        return len(keys)

    async def sweep_unreferenced(self, min_age_seconds: float | None = None) -> int:
        """Delete the manifests of every segment pipeline that no segment row references and that
        are at least ``min_age_seconds`` old (default: :attr:`orphan_age_seconds`; 0 only where
        nothing is being enqueued, as in an audit once a run is quiet); return how many."""
        age = timedelta(seconds=self.orphan_age_seconds if min_age_seconds is None else min_age_seconds)
        async with self._db.acquire() as conn:
            pipelines = [
                r[0] for r in await conn.fetch("SELECT id FROM pipelines WHERE queue_backend = 'segment'")
            ]
        deleted = 0
        for pipeline_id in pipelines:
            cutoff = self._clock() - age
            old = [
                o.key
                for o in await self.store.list_objects(segments_prefix(pipeline_id))
                if o.last_modified <= cutoff and segment_id_of(o.key) is not None
            ]
            if not old:
                continue
            async with self._db.acquire() as conn:
                referenced = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT manifest_key FROM queue_segments WHERE manifest_key = ANY($1::text[])", old
                    )
                }
            orphans = [key for key in old if key not in referenced]
            if orphans:
                self.cache.forget(orphans)
                await self.store.delete(orphans)
                log.warning(
                    "deleted %d manifests of pipeline %s that no segment references (left by a "
                    "transaction that did not commit)",
                    len(orphans),
                    pipeline_id,
                )
                deleted += len(orphans)
        return deleted

    def start_sweeper(self, interval: float = 60.0) -> None:
        """Sweep garbage now and every ``interval`` seconds; unreferenced manifests now and every
        third of :attr:`orphan_age_seconds` (at least ``interval``)."""
        orphan_interval = max(interval, self.orphan_age_seconds / 3)

        async def loop() -> None:
            next_orphan_sweep = 0.0
            while True:
                try:
                    await self.sweep()
                except ServiceError as exc:
                    log.warning("garbage sweep failed: %s", exc)
                if time.monotonic() >= next_orphan_sweep:
                    try:
                        await self.sweep_unreferenced()
                        next_orphan_sweep = time.monotonic() + orphan_interval
                    except ServiceError as exc:
                        log.warning("sweep of unreferenced manifests failed: %s", exc)
                await asyncio.sleep(interval)

        self._sweeper = asyncio.create_task(loop(), name="segment-garbage-sweeper")

    async def stop_sweeper(self) -> None:
        """Stop the background sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def remove_pipeline_objects(self, pipeline_id: str, keys: Sequence[str], fence: int) -> None:
        """After a pipeline's deletion: delete its manifests, then any manifest
        left under its prefix with a segment id below ``fence`` (allocated
        before the deletion, so not a recreated pipeline's)."""
        if keys:
            await self.collect(keys)
        try:
            leftovers = [
                key
                for key in await self.store.list_keys(segments_prefix(pipeline_id))
                if (segment := segment_id_of(key)) is not None and segment < fence
            ]
            if leftovers:
                self.cache.forget(leftovers)
                await self.store.delete(leftovers)
        except ServiceError as exc:
            log.warning("could not sweep the manifests of deleted pipeline %s: %s", pipeline_id, exc)
