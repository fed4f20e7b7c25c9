"""Cleaning up pack objects no document points into.

A pack (one group commit's S3 object, :mod:`hevlayer.gateway.chunkstore`) is left without a
document pointing into it when its ``RecordStaged`` fails, when the gateway stops between
writing it and recording it, or when a deletion is lost. :class:`PackSweeper` removes them:

- a pack whose ``RecordStaged`` the claimer refused for sure is deleted at once
  (:meth:`PackSweeper.after_failed_record`);
- a pack whose ``RecordStaged`` outcome is unknown (timeout, lost connection: the claimer
  may have recorded it) becomes a *suspect*, checked later (:meth:`PackSweeper.check_suspects`);
- a periodic sweep (``GATEWAY_PACK_SWEEP_SECONDS``) deletes every pipeline's packs older
  than ``GATEWAY_PACK_ORPHAN_AGE_SECONDS`` that no live document points into
  (:meth:`PackSweeper.sweep_orphan_packs`).

Nothing is deleted on the gateway's word alone: the claimer *condemns* the keys first
(``CondemnObjects``), atomically with respect to ``RecordStaged``, and answers only those no
document points into; a ``RecordStaged`` of a condemned pack is then refused
(:data:`PACK_CONDEMNED`) and the group commit writes its documents again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from hevlayer.client.errors import is_definite_failure
from hevlayer.client.naming import pack_prefix
from hevlayer.common.errors import NotFound, ServiceError
from hevlayer.gateway.chunkstore import ChunkStore
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.metrics import ORPHANS
from hevlayer.gateway.settings import StagingSettings

log = logging.getLogger("hevlayer.gateway.staging")

_LIVE_OBJECTS_BATCH = 1000
PACK_CONDEMNED = "PACK_CONDEMNED"
"""Reason of a RecordStaged refused because a sweep condemned its pack (claimer's condemned.py)."""
_PACK_NAME = re.compile(r"/([0-9a-f]{16})-[0-9a-f]+\.pack$")


def pack_created_ns(key: str) -> int | None:
    """When a pack was created (the time its key carries, see ``new_pack_key``); None for
    a key that is not a pack's."""
    match = _PACK_NAME.search(key)
    return int(match.group(1), 16) if match else None


@dataclass
class _Suspect:
    pipeline_id: str
    not_before: float


class PackSweeper:
    """Deletes pack objects no document points into (see the module docstring)."""

    def __init__(
        self,
        claimer: ClaimerClient,
        store: ChunkStore,
        settings: StagingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.claimer = claimer
        self.store = store
        self.settings = settings
        self._clock = clock
        self._suspects: dict[str, _Suspect] = {}
        self._suspect_checker: asyncio.Task[None] | None = None
        self._orphan_sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background checks: packs whose staging outcome was unknown, and the
        periodic sweep of old orphan packs (``GATEWAY_PACK_SWEEP_SECONDS``)."""
        if self._suspect_checker is None:
            self._suspect_checker = asyncio.get_running_loop().create_task(
                self._check_suspects_forever(), name="pack-sweeper"
            )
        if self._orphan_sweeper is None and self.settings.pack_sweep_seconds > 0:
            self._orphan_sweeper = asyncio.get_running_loop().create_task(
                self._sweep_orphans_forever(), name="orphan-pack-sweeper"
            )

    async def close(self) -> None:
        """Stop the background checks."""
        for task in (self._suspect_checker, self._orphan_sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._suspect_checker = self._orphan_sweeper = None

    @property
    def suspects(self) -> list[str]:
        """Pack keys waiting for a check after an ambiguous RecordStaged failure."""
        return sorted(self._suspects)

    async def after_failed_record(self, pipeline: PipelineInfo, key: str, error: ServiceError) -> None:
        """Delete the pack of a batch RecordStaged refused, or schedule a check if the
        outcome is unknown (the claimer may have recorded it before failing)."""
        if is_definite_failure(error):
            try:
                await self.store.delete_objects([key])
                ORPHANS.labels("failed").inc()
            except ServiceError as exc:
                log.warning("could not delete pack %s of a failed staging: %s", key, exc.message)
                self._suspect(pipeline.id, key, delay=0.0)
            return
        log.warning(
            "RecordStaged outcome unknown (%s); pack %s will be checked before deletion",
            error.code.name,
            key,
        )
        self._suspect(pipeline.id, key, delay=self.settings.orphan_retry_seconds)

    def _suspect(self, pipeline_id: str, key: str, *, delay: float) -> None:
        self._suspects[key] = _Suspect(pipeline_id, self._clock() + delay)

    async def check_suspects(self, *, force: bool = False) -> None:
        """Delete suspect packs no document points into (those due, or all if ``force``)."""
        now = self._clock()
        for key, suspect in list(self._suspects.items()):
            if not force and suspect.not_before > now:
                continue
            try:
                # Condemned (and then deleted) only if no document points into it; a RecordStaged
                # of it still in flight is then refused rather than left pointing at nothing.
                if await self.claimer.condemn_objects(suspect.pipeline_id, [key]):
                    await self.store.delete_objects([key])
                    ORPHANS.labels("unknown").inc()
                else:
                    ORPHANS.labels("kept").inc()
            except NotFound:
                # The pipeline is gone: nothing can point into the pack.
                await self.store.delete_objects([key])
                ORPHANS.labels("unknown").inc()
            except ServiceError as exc:
                suspect.not_before = now + self.settings.orphan_retry_seconds
                log.info("pack %s still unchecked: %s", key, exc.message)
                continue
            self._suspects.pop(key, None)

    async def sweep_orphan_packs(self, pipeline: PipelineInfo, *, min_age_seconds: float) -> int:
        """Delete the pipeline's pack objects older than ``min_age_seconds`` (by the creation
        time in their key) that no live document points into; return how many.

        Such a pack is left when the gateway stops between writing it and recording its
        documents (or loses a deletion); packs awaiting a check in memory are left to it. The
        claimer condemns what is deleted (``CondemnObjects``), atomically with respect to
        ``RecordStaged``: a pack another gateway (replica) has written and is still recording is
        either seen live and kept, or condemned and its staging refused and written again, so no
        recorded document ever points into a swept pack, whatever the age limit or clocks.
        """
        cutoff_ns = time.time_ns() - int(min_age_seconds * 1e9)
        old = [
            key
            for key in await self.store.list_keys(pack_prefix(pipeline.id, pipeline.incarnation))
            if (created := pack_created_ns(key)) is not None
            and created < cutoff_ns
            and key not in self._suspects
        ]
        deleted = 0
        for start in range(0, len(old), _LIVE_OBJECTS_BATCH):
            keys = old[start : start + _LIVE_OBJECTS_BATCH]
            doomed = await self.claimer.condemn_objects(pipeline.id, keys)
            if doomed:
                await self.store.delete_objects(doomed)
                ORPHANS.labels("swept").inc(len(doomed))
                deleted += len(doomed)
        if deleted:
            log.info(
                "deleted %d orphan pack objects of pipeline %s",
                deleted,
                pipeline.id,
                extra={"pipeline_id": pipeline.id, "objects": deleted},
            )
        return deleted

    async def sweep_all_orphan_packs(self) -> int:
        """:meth:`sweep_orphan_packs` over every pipeline (``GATEWAY_PACK_ORPHAN_AGE_SECONDS``)."""
        deleted = 0
        for proto in await self.claimer.list_pipelines():
            pipeline = PipelineInfo.from_proto(proto)
            try:
                deleted += await self.sweep_orphan_packs(
                    pipeline, min_age_seconds=self.settings.pack_orphan_age_seconds
                )
            except NotFound:
                continue  # deleted meanwhile: its deletion removes its packs
        return deleted

    async def _sweep_orphans_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.pack_sweep_seconds)
            try:
                await self.sweep_all_orphan_packs()
            except ServiceError as error:
                log.warning("orphan pack sweep failed: %s", error.message)
            except Exception:
                log.exception("orphan pack sweep failed")

    async def _check_suspects_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.orphan_retry_seconds, 5.0))
            try:
                await self.check_suspects()
            except Exception:
                log.exception("pack sweeper failed")
