"""Staging documents through each pipeline's *group commit*.

The path of a document (and so of each of its chunks) through this module:

1. :meth:`Stager.stage` validates it (:mod:`.validation`) and :meth:`Stager.prepare`
   encodes it into a segment: a :class:`PreparedDocument`;
2. the call's prepared documents are cut into :class:`Submission` s (at most one pack each),
   each carrying the ``results`` future its caller awaits, and appended to the pipeline's
   :class:`PipelineQueue` (:meth:`Stager._enqueue`);
3. while fewer than ``GATEWAY_PACK_FLUSHES_PER_PIPELINE`` flushes are in flight,
   :meth:`Stager._start_flushes` takes the next *batch* off the queue
   (:meth:`Stager._next_batch`: consecutive submissions of any callers that fit one pack)
   and starts a flush task for it. Documents arriving while a flush is in flight therefore
   wait in the queue and go into the next pack together;
4. the flush (:meth:`Stager._write_pack`) is: one S3 PUT of the pack object
   (:mod:`hevlayer.gateway.chunkstore`); one ``RecordStaged`` with every document's backing
   (atomic for the batch); deletion of the objects the claimer reports released (every
   document in them re-staged or deleted), so re-staging never orphans an object; cache
   writes of the new segments and deletion of the replaced ones (in the background; the
   cache never fails a call);
5. the flush resolves each submission's ``results`` future with its documents' results, or
   with the error (:meth:`Stager._flush` resolves every one whatever happens), and
   :meth:`Stager.stage` turns them into one :class:`StageOutcome` per document.

A failed ``RecordStaged`` hands the pack to :class:`~.sweep.PackSweeper` (deleted at once if
the claimer refused it for sure, checked later if the outcome is unknown). A batch refused
with INVALID_ARGUMENT is retried one submission at a time (one caller's document must not
fail the others); a pack a sweep condemned before it was recorded is written again.

A document is therefore staged whole (its segment and its state) or not at all.
``Document`` protos are the value type here on purpose: they are also the storage codec,
so a staged document is serialized exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client.naming import pack_prefix
from hevlayer.client.types import StagedRecord, StagedResult
from hevlayer.common.encoded import varint
from hevlayer.common.errors import Internal, InvalidArgument, NotFound, ServiceError, Unavailable, Violation
from hevlayer.common.telemetry import traceparent
from hevlayer.gateway.cache import ResilientCache
from hevlayer.gateway.chunkstore import ChunkStore, SegmentCodec, new_pack_key
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.metrics import ORPHANS, PACK_DOCUMENTS, STAGED_CHUNKS, STAGED_DOCUMENTS
from hevlayer.gateway.settings import StagingSettings
from hevlayer.gateway.staging.sweep import PACK_CONDEMNED, PackSweeper
from hevlayer.gateway.staging.validation import Limits, lease_tokens, rejection, validate_document

log = logging.getLogger("hevlayer.gateway.staging")

MAX_REWRITES = 3
"""Times a staging whose pack was condemned before it was recorded is written again."""


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one document of a staging call."""

    document_id: str
    outcome: str
    """``staged``, ``unchanged`` or ``rejected``."""
    fencing_token: int = 0
    chunk_count: int = 0
    error: ServiceError | None = None


def _hash_field(content_hash: str) -> bytes:
    """``content_hash`` (field 3 of Document) encoded as a protobuf field."""
    data = content_hash.encode()
    return b"\x1a" + varint(len(data)) + data


@dataclass
class PreparedDocument:
    """A valid document encoded into its segment, waiting for its pack."""

    document_id: str
    segment: bytes
    content_hash: str
    chunk_count: int
    lease_token: int = 0
    trace_parent: str = ""


@dataclass
class Submission:
    """One caller's documents for one pack, queued for the group commit.

    The caller (:meth:`Stager.stage`) awaits ``results``; the flush that records the
    submission resolves it with one :class:`StagedResult` per document, in order, or with
    the error that failed it.
    """

    pipeline: PipelineInfo
    documents: list[PreparedDocument]
    skip_unchanged: bool
    results: asyncio.Future[list[StagedResult]]
    alone: bool = False
    """Flushed in a pack of its own (after its batch was refused as a whole)."""
    rewrites: int = 0
    """Times its pack was condemned by a sweep before being recorded, and written again."""
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(len(document.segment) for document in self.documents)


@dataclass
class PipelineQueue:
    """One pipeline's submissions waiting for a flush, and the number of flushes in flight."""

    pending: deque[Submission] = field(default_factory=deque)
    inflight: int = 0


class Stager:
    """Stages documents through each pipeline's group commit (see the module docstring)."""

    def __init__(
        self,
        claimer: ClaimerClient,
        store: ChunkStore,
        cache: ResilientCache,
        settings: StagingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.claimer = claimer
        self.store = store
        self.cache = cache
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.codec = SegmentCodec(settings.pack_compression)
        self.sweeper = PackSweeper(claimer, store, settings, clock=clock)
        """Deletes the packs no document points into (failed stagings, orphans)."""
        self._queues: dict[str, PipelineQueue] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sweeper's background checks (:meth:`PackSweeper.start`)."""
        self.sweeper.start()

    async def close(self) -> None:
        """Wait for in-flight flushes; stop the sweeper."""
        while self._flushes:
            await asyncio.gather(*list(self._flushes), return_exceptions=True)
        await self.sweeper.close()

    # -- the sweeper's operations, for the gateway's callers and tests ------------------------

    @property
    def suspects(self) -> list[str]:
        """Pack keys waiting for a check after an ambiguous RecordStaged failure."""
        return self.sweeper.suspects

    async def check_suspects(self, *, force: bool = False) -> None:
        """:meth:`PackSweeper.check_suspects`."""
        await self.sweeper.check_suspects(force=force)

    async def sweep_orphan_packs(self, pipeline: PipelineInfo, *, min_age_seconds: float) -> int:
        """:meth:`PackSweeper.sweep_orphan_packs`."""
        return await self.sweeper.sweep_orphan_packs(pipeline, min_age_seconds=min_age_seconds)

    async def sweep_all_orphan_packs(self) -> int:
        """:meth:`PackSweeper.sweep_all_orphan_packs`."""
        return await self.sweeper.sweep_all_orphan_packs()

    # -- staging ---------------------------------------------------------------------------

    def prepare(
        self, document: document_pb2.Document, lease_token: int = 0, trace_parent: str = ""
    ) -> PreparedDocument:
        """Encode a valid document into a segment (content hash included). ``trace_parent``:
        the staging span's trace context, stored with the document (its journey's trace)."""
        payload = document.SerializeToString(deterministic=True)
        content_hash = document.content_hash
        if not content_hash:
            content_hash = "sha256:" + hashlib.sha256(payload).hexdigest()
            payload += _hash_field(content_hash)
        return PreparedDocument(
            document.id,
            self.codec.encode_serialized(payload),
            content_hash,
            len(document.chunks),
            lease_token,
            trace_parent,
        )

    async def stage(
        self,
        pipeline_id: str,
        documents: Sequence[document_pb2.Document],
        *,
        skip_unchanged: bool = False,
        leases: Sequence[tuple[str, int]] = (),
        path_prefix: Callable[[int], str] = lambda i: f"documents[{i}].",
    ) -> list[StageOutcome]:
        """Stage ``documents`` into ``pipeline_id``; one outcome per document, in order.

        Invalid documents are rejected (INVALID_ARGUMENT naming the field,
        paths prefixed by ``path_prefix(i)``) without affecting the others.
        ``leases`` (document id, fencing token) are leases the caller holds on
        documents of the batch; staging ends them (see ``lease_tokens``).
        Raises (NOT_FOUND, UNAVAILABLE, ...) when the batch cannot be staged
        at all; then none of its documents was staged.
        """
        tokens = lease_tokens(documents, leases)
        # The staging span (StageDocuments'; the REST routes have none: "") starts the trace
        # of each document's journey; the claimer stores it and leases hand it on.
        trace_parent = traceparent()
        pipeline = await self.claimer.pipeline(pipeline_id)
        outcomes: list[StageOutcome | None] = [None] * len(documents)
        valid: list[tuple[int, PreparedDocument]] = []
        first_seen: dict[str, int] = {}
        for i, document in enumerate(documents):
            violations = validate_document(document, self.limits)
            if not violations and document.id in first_seen:
                violations = [
                    Violation("id", f"duplicate of documents[{first_seen[document.id]}].id in this batch")
                ]
            if violations:
                outcomes[i] = StageOutcome(
                    document.id, "rejected", error=rejection(violations, path_prefix(i))
                )
                continue
            first_seen[document.id] = i
            valid.append((i, self.prepare(document, tokens.get(document.id, 0), trace_parent)))

        if skip_unchanged and valid:
            # Documents with a lease go to the claimer even when unchanged: it ends their lease.
            stored = await self.claimer.content_hashes(
                pipeline.id, [item.document_id for _, item in valid if not item.lease_token]
            )
            remaining = []
            for i, item in valid:
                if not item.lease_token and stored.get(item.document_id) == item.content_hash:
                    outcomes[i] = StageOutcome(item.document_id, "unchanged", chunk_count=item.chunk_count)
                else:
                    remaining.append((i, item))
            valid = remaining

        if valid:
            # The hand-off to the group commit: one Submission per pack-sized group, queued on
            # the pipeline's PipelineQueue; the flush that records it resolves its ``results``
            # future (``_flush``), which is all this call waits for.
            groups = self._split(valid)
            loop = asyncio.get_running_loop()
            submissions = [
                Submission(pipeline, [item for _, item in group], skip_unchanged, loop.create_future())
                for group in groups
            ]
            for submission in submissions:
                self._enqueue(submission)
            settled = await asyncio.gather(*(s.results for s in submissions), return_exceptions=True)
            failures = [r for r in settled if isinstance(r, BaseException)]
            if len(failures) == len(settled):
                STAGED_DOCUMENTS.labels("failed").inc(len(valid))
                first = failures[0]
                raise first if isinstance(first, ServiceError) else Internal("staging failed")
            for group, group_results in zip(groups, settled, strict=True):
                if isinstance(group_results, BaseException):
                    # Part of a large call failed (its own packs); the rest is staged.
                    error = (
                        group_results
                        if isinstance(group_results, ServiceError)
                        else Internal("staging failed")
                    )
                    for i, item in group:
                        outcomes[i] = StageOutcome(item.document_id, "rejected", error=error)
                    continue
                for (i, item), result in zip(group, group_results, strict=True):
                    if result.unchanged:
                        outcomes[i] = StageOutcome(
                            item.document_id, "unchanged", result.fencing_token, item.chunk_count
                        )
                    else:
                        outcomes[i] = StageOutcome(
                            item.document_id, "staged", result.fencing_token, item.chunk_count
                        )
                        STAGED_CHUNKS.inc(item.chunk_count)
        final = [o for o in outcomes if o is not None]
        if len(final) != len(documents):  # pragma: no cover - every branch sets an outcome
            raise Internal("staging lost a document's outcome")
        for outcome in final:
            STAGED_DOCUMENTS.labels(outcome.outcome).inc()
        return final

    def _split(self, valid: list[tuple[int, PreparedDocument]]) -> list[list[tuple[int, PreparedDocument]]]:
        """Cut one call's prepared documents into groups of at most one pack each
        (``GATEWAY_PACK_MAX_DOCUMENTS``, ``GATEWAY_PACK_MAX_BYTES``), keeping their order."""
        groups: list[list[tuple[int, PreparedDocument]]] = []
        current: list[tuple[int, PreparedDocument]] = []
        size = 0
        for entry in valid:
            item_size = len(entry[1].segment)
            if current and (
                len(current) >= self.settings.pack_max_documents
                or size + item_size > self.settings.pack_max_bytes
            ):
                groups.append(current)
                current, size = [], 0
            current.append(entry)
            size += item_size
        if current:
            groups.append(current)
        return groups

    def _enqueue(self, submission: Submission, *, front: bool = False) -> None:
        """Hand ``submission`` to its pipeline's queue (at the front for a retry, so it keeps
        its turn) and start a flush if one may start."""
        queue = self._queues.setdefault(submission.pipeline.id, PipelineQueue())
        if front:
            queue.pending.appendleft(submission)
        else:
            queue.pending.append(submission)
        self._start_flushes(submission.pipeline.id)

    def _start_flushes(self, pipeline_id: str) -> None:
        """Start flushes of the pipeline's queued submissions while fewer than
        ``GATEWAY_PACK_FLUSHES_PER_PIPELINE`` are in flight; each finished flush starts the next.
        The queue is dropped once it is empty and idle."""
        queue = self._queues.get(pipeline_id)
        if queue is None:
            return
        while queue.pending and queue.inflight < self.settings.flushes_per_pipeline:
            batch = self._next_batch(queue)
            queue.inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(task)

            def done(task: asyncio.Task[None], queue: PipelineQueue = queue) -> None:
                self._flushes.discard(task)
                queue.inflight -= 1
                if not queue.pending and not queue.inflight:
                    self._queues.pop(pipeline_id, None)
                else:
                    self._start_flushes(pipeline_id)

            task.add_done_callback(done)

    def _next_batch(self, queue: PipelineQueue) -> list[Submission]:
        """Take the next batch off ``queue``: its first submission and the consecutive ones
        that fit the same pack (same ``skip_unchanged``, within the pack limits, no document
        twice); a submission marked ``alone`` goes by itself."""
        first = queue.pending.popleft()
        batch = [first]
        if first.alone:
            return batch
        ids = {item.document_id for item in first.documents}
        size, count = first.size, len(first.documents)
        while queue.pending:
            nxt = queue.pending[0]
            if (
                nxt.alone
                or nxt.skip_unchanged != first.skip_unchanged
                or count + len(nxt.documents) > self.settings.pack_max_documents
                or size + nxt.size > self.settings.pack_max_bytes
                or any(item.document_id in ids for item in nxt.documents)
            ):
                break
            queue.pending.popleft()
            batch.append(nxt)
            ids.update(item.document_id for item in nxt.documents)
            size += nxt.size
            count += len(nxt.documents)
        return batch

    async def _flush(self, batch: list[Submission]) -> None:
        """Write and record one batch (:meth:`_write_pack`); every submission's ``results``
        future is resolved whatever happens (with the error if it failed)."""
        try:
            await self._write_pack(batch)
        except BaseException as exc:  # resolve every waiter whatever happens
            error = (
                exc if isinstance(exc, ServiceError) else Internal(f"staging failed: {type(exc).__name__}")
            )
            if not isinstance(exc, ServiceError):
                log.exception("pack flush failed")
            for submission in batch:
                if not submission.results.done():
                    submission.results.set_exception(error)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise

    async def _write_pack(self, batch: list[Submission]) -> None:
        """One pack: PUT it, ``RecordStaged`` its documents, delete what the claimer released,
        update the cache, and resolve each submission's ``results`` with its part. A refused
        ``RecordStaged`` hands the pack to the sweeper and either re-queues the submissions
        (one by one after INVALID_ARGUMENT; written again after PACK_CONDEMNED) or fails them."""
        pipeline = batch[0].pipeline
        items = [document for submission in batch for document in submission.documents]
        key = new_pack_key(pack_prefix(pipeline.id, pipeline.incarnation))
        backings = await self.store.write_pack(key, [(item.document_id, item.segment) for item in items])
        PACK_DOCUMENTS.observe(len(items))
        records = [
            StagedRecord(
                item.document_id,
                item.content_hash,
                str(backing),
                item.chunk_count,
                item.lease_token,
                item.trace_parent,
            )
            for item, backing in zip(items, backings, strict=True)
        ]
        try:
            results, released = await self.claimer.record_staged(
                pipeline.id, records, skip_unchanged=batch[0].skip_unchanged
            )
        except ServiceError as error:
            await self.sweeper.after_failed_record(pipeline, key, error)
            if error.reason == PACK_CONDEMNED:
                self._rewrite(batch, key, error)
                return
            if len(batch) > 1 and isinstance(error, InvalidArgument):
                # One caller's document may have made the claimer refuse the whole
                # batch: retry each caller's submission on its own.
                for submission in reversed(batch):
                    submission.alone = True
                    self._enqueue(submission, front=True)
                return
            if isinstance(error, NotFound):
                self.claimer.forget_pipeline(pipeline.id)
            for submission in batch:
                if not submission.results.done():
                    submission.results.set_exception(error)
            return
        if len(results) != len(records):
            raise Internal(f"RecordStaged answered {len(results)} results for {len(records)} records")

        doomed = set(released)
        if all(result.unchanged for result in results):
            doomed.add(key)
            ORPHANS.labels("unchanged").inc()
        doomed.discard("")
        if doomed:
            ORPHANS.labels("released").inc(len(doomed - {key}))
            try:
                await self.store.delete_objects(doomed)
            except ServiceError as exc:
                log.warning("could not delete released pack objects %s: %s", sorted(doomed)[:5], exc.message)

        namespace = pipeline.target_namespace
        fresh = {
            str(backing): item.segment
            for item, backing, result in zip(items, backings, results, strict=True)
            if not result.unchanged
        }
        self.cache.put_later(namespace, fresh)
        replaced = [r.previous_backing for r in results if r.previous_backing and not r.unchanged]
        self.cache.delete_later(namespace, replaced)

        offset = 0
        for submission in batch:
            part = results[offset : offset + len(submission.documents)]
            offset += len(submission.documents)
            if not submission.results.done():
                submission.results.set_result(part)

    def _rewrite(self, batch: list[Submission], key: str, error: ServiceError) -> None:
        """RecordStaged refused the pack because a sweep (of any gateway) condemned it first: the
        staging took longer than GATEWAY_PACK_ORPHAN_AGE_SECONDS and nothing was recorded. Each
        submission is written again into a new pack, up to :data:`MAX_REWRITES` times; then it
        fails UNAVAILABLE (the caller's retry stages it whole)."""
        ORPHANS.labels("rewritten").inc()
        log.warning("pack %s was swept before it was recorded; writing its documents again", key)
        for submission in reversed(batch):
            if submission.rewrites < MAX_REWRITES:
                submission.rewrites += 1
                self._enqueue(submission, front=True)
            elif not submission.results.done():
                submission.results.set_exception(
                    Unavailable(
                        f"staging took longer than GATEWAY_PACK_ORPHAN_AGE_SECONDS {MAX_REWRITES + 1} "
                        f"times (its pack was swept before it was recorded: {error.message}); "
                        "nothing was staged, retry",
                        retry_after=1.0,
                    )
                )
