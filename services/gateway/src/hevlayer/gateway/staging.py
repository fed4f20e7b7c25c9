"""Staging and reading documents: the transport-free core of StagingService and
of the REST document routes (deleting them is :mod:`hevlayer.gateway.documents`).

**Staging** (:class:`Stager`). Each document is validated (field paths
relative to the document: ``id``, ``chunks[3].text``, ...; the adapters put
``documents[i].`` or nothing in front), encoded into a segment, and handed to
its pipeline's *group commit*: while a pack write is in flight, documents
arriving from any caller (gRPC streams, REST requests) queue up and go into
the next pack together. A flush is:

1. one S3 PUT of the pack object (:mod:`hevlayer.gateway.chunkstore`);
2. one ``RecordStaged`` with every document's backing (atomic for the batch);
   if it fails for sure (the claimer rejected it) the pack is deleted at
   once; if the outcome is unknown (timeout, lost connection) the pack is
   checked later and deleted only when no document points into it;
3. deletion of the objects the claimer reports released (every document
   in them re-staged or deleted), so re-staging never orphans an object;
4. cache writes of the new segments and deletion of the replaced ones (in
   the background; the cache never fails a call).

A document is therefore staged whole (its segment and its state) or not at
all. ``Document`` protos are the value type here on purpose: they are also
the storage codec, so a staged document is serialized exactly once.

**Reading** (:class:`ChunkReader`): CheckLeases, then each document's segment
from the cache, then (misses) from S3 with ranged GETs merged per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format, struct_pb2

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client.errors import is_definite_failure
from hevlayer.client.naming import pack_prefix
from hevlayer.client.types import StagedRecord, StagedResult
from hevlayer.common.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    Violation,
)
from hevlayer.common.telemetry import traceparent
from hevlayer.gateway.cache import ResilientCache
from hevlayer.gateway.chunkstore import Backing, ChunkStore, SegmentCodec, new_pack_key
from hevlayer.gateway.claimer_client import ClaimerClient, LeaseCheck, PipelineInfo
from hevlayer.gateway.metrics import ORPHANS, PACK_DOCUMENTS, READ_CHUNKS, STAGED_CHUNKS, STAGED_DOCUMENTS
from hevlayer.gateway.settings import StagingSettings

log = logging.getLogger("hevlayer.gateway.staging")

MAX_DOCUMENT_ID_BYTES = 512
MAX_CONTENT_HASH_BYTES = 256
MAX_VIOLATIONS = 20
READ_WINDOW = 64

# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one document of a staging call."""

    document_id: str
    outcome: str
    """``staged``, ``unchanged`` or ``rejected``."""
    fencing_token: int = 0
    chunk_count: int = 0
    error: ServiceError | None = None


@dataclass(frozen=True)
class DocumentChunks:
    """One document read back: its chunks, or why it cannot be read."""

    document_id: str
    chunks: Sequence[document_pb2.Chunk] = ()
    error: ServiceError | None = None
    fencing_token: int = 0


@dataclass(frozen=True)
class Limits:
    """Bounds on staged documents."""

    max_chunk_text_bytes: int = 65536
    max_chunk_metadata_bytes: int = 16384
    max_chunk_id_bytes: int = 512
    max_chunks_per_document: int = 10000

    @classmethod
    def from_settings(cls, settings: StagingSettings) -> Limits:
        """From the gateway's staging settings."""
        return cls(
            settings.max_chunk_text_bytes,
            settings.max_chunk_metadata_bytes,
            settings.max_chunk_id_bytes,
            settings.max_chunks_per_document,
        )


def _too_long(text: str, limit: int) -> bool:
    return len(text) * 4 > limit and len(text.encode()) > limit


def struct_json_bytes(struct: struct_pb2.Struct) -> int:
    """Size of ``struct`` serialized as compact JSON (UTF-8)."""
    return len(
        json.dumps(json_format.MessageToDict(struct), separators=(",", ":"), ensure_ascii=False).encode()
    )


def metadata_too_large(struct: struct_pb2.Struct, limit: int) -> bool:
    """True if ``struct`` exceeds ``limit`` bytes as JSON.

    Its protobuf size bounds its JSON size within a factor of 6 (escapes
    and number formatting), so the exact JSON size is computed only for
    large values.
    """
    size = struct.ByteSize()
    if size * 6 + 16 <= limit:
        return False
    return struct_json_bytes(struct) > limit


def validate_document(document: document_pb2.Document, limits: Limits) -> list[Violation]:
    """Every problem of one document, with paths relative to it (at most 20)."""
    violations: list[Violation] = []
    doc_id = document.id
    if not doc_id:
        violations.append(Violation("id", "is required"))
    elif _too_long(doc_id, MAX_DOCUMENT_ID_BYTES):
        violations.append(Violation("id", f"must be at most {MAX_DOCUMENT_ID_BYTES} bytes"))
    elif "\x00" in doc_id:
        violations.append(Violation("id", "must not contain NUL characters"))
    if document.content_hash and _too_long(document.content_hash, MAX_CONTENT_HASH_BYTES):
        violations.append(Violation("content_hash", f"must be at most {MAX_CONTENT_HASH_BYTES} bytes"))
    chunks = document.chunks
    if len(chunks) > limits.max_chunks_per_document:
        violations.append(
            Violation(
                "chunks", f"at most {limits.max_chunks_per_document} chunks per document, got {len(chunks)}"
            )
        )
        return violations
    seen: dict[str, int] = {}
    max_id = limits.max_chunk_id_bytes
    max_text = limits.max_chunk_text_bytes
    max_meta = limits.max_chunk_metadata_bytes
    for j, chunk in enumerate(chunks):
        chunk_id = chunk.id
        if not chunk_id:
            violations.append(Violation(f"chunks[{j}].id", "is required"))
        elif _too_long(chunk_id, max_id):
            violations.append(Violation(f"chunks[{j}].id", f"must be at most {max_id} bytes"))
        elif chunk_id in seen:
            violations.append(
                Violation(
                    f"chunks[{j}].id", f"duplicate chunk id {chunk_id!r} (also chunks[{seen[chunk_id]}].id)"
                )
            )
        else:
            seen[chunk_id] = j
        if _too_long(chunk.text, max_text):
            violations.append(Violation(f"chunks[{j}].text", f"must be at most {max_text} bytes (UTF-8)"))
        if chunk.HasField("metadata") and metadata_too_large(chunk.metadata, max_meta):
            violations.append(Violation(f"chunks[{j}].metadata", f"must be at most {max_meta} bytes as JSON"))
        if len(violations) >= MAX_VIOLATIONS:
            break
    return violations


_LIVE_OBJECTS_BATCH = 1000
PACK_CONDEMNED = "PACK_CONDEMNED"
"""Reason of a RecordStaged refused because a sweep condemned its pack (claimer's condemned.py)."""
MAX_REWRITES = 3
"""Times a staging whose pack was condemned before it was recorded is written again."""
_PACK_NAME = re.compile(r"/([0-9a-f]{16})-[0-9a-f]+\.pack$")


def pack_created_ns(key: str) -> int | None:
    """When a pack was created (the time its key carries, see ``new_pack_key``); None for
    a key that is not a pack's."""
    match = _PACK_NAME.search(key)
    return int(match.group(1), 16) if match else None


def lease_tokens(
    documents: Sequence[document_pb2.Document], leases: Sequence[tuple[str, int]]
) -> dict[str, int]:
    """Document id -> token of the leases a StageDocuments message carries.

    Each lease must name a document of the message, once, with a non-zero
    token; otherwise the whole message is refused (INVALID_ARGUMENT naming
    ``leases[i]``) before anything is stored.
    """
    if not leases:
        return {}
    names = {document.id for document in documents}
    tokens: dict[str, int] = {}
    for i, (document_id, token) in enumerate(leases):
        if document_id not in names:
            raise InvalidArgument.field(
                f"leases[{i}].document_id", f"{document_id!r} is not a document of this request"
            )
        if document_id in tokens:
            raise InvalidArgument.field(f"leases[{i}].document_id", f"{document_id!r} appears twice")
        if token <= 0:
            raise InvalidArgument.field(f"leases[{i}].fencing_token", "must be > 0")
        tokens[document_id] = token
    return tokens


def rejection(violations: Sequence[Violation], prefix: str = "") -> InvalidArgument:
    """An InvalidArgument for a document's violations, paths prefixed with ``prefix``."""
    moved = [Violation(prefix + v.field, v.description) for v in violations]
    first = moved[0]
    more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
    return InvalidArgument(f"{first.field}: {first.description}{more}", violations=moved)


def _hash_field(content_hash: str) -> bytes:
    """``content_hash`` (field 3 of Document) encoded as a protobuf field."""
    data = content_hash.encode()
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            varint.append(byte | 0x80)
        else:
            varint.append(byte)
            break
    return b"\x1a" + bytes(varint) + data


# -- the group commit --------------------------------------------------------------------------


@dataclass
class _Item:
    document_id: str
    segment: bytes
    content_hash: str
    chunk_count: int
    lease_token: int = 0
    trace_parent: str = ""


@dataclass
class _Submission:
    pipeline: PipelineInfo
    items: list[_Item]
    skip_unchanged: bool
    future: asyncio.Future[list[StagedResult]]
    alone: bool = False
    rewrites: int = 0
    """Times its pack was condemned by a sweep before being recorded, and written again."""
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(len(item.segment) for item in self.items)


@dataclass
class _Queue:
    pending: deque[_Submission] = field(default_factory=deque)
    inflight: int = 0


@dataclass
class _Suspect:
    pipeline_id: str
    not_before: float


class Stager:
    """Stages documents (see the module docstring)."""

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
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._suspects: dict[str, _Suspect] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._orphan_sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background checks: packs whose staging outcome was unknown, and the
        periodic sweep of old orphan packs (``GATEWAY_PACK_SWEEP_SECONDS``)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="pack-sweeper")
        if self._orphan_sweeper is None and self.settings.pack_sweep_seconds > 0:
            self._orphan_sweeper = asyncio.get_running_loop().create_task(
                self._sweep_orphans_forever(), name="orphan-pack-sweeper"
            )

    async def close(self) -> None:
        """Wait for in-flight flushes; stop the sweeper."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for task in (self._sweeper, self._orphan_sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._orphan_sweeper = None

    @property
    def suspects(self) -> list[str]:
        """Pack keys waiting for a check after an ambiguous RecordStaged failure."""
        return sorted(self._suspects)

    # -- staging ---------------------------------------------------------------------------

    def prepare(self, document: document_pb2.Document, lease_token: int = 0, trace_parent: str = "") -> _Item:
        """Encode a valid document into a segment (content hash included). ``trace_parent``:
        the staging span's trace context, stored with the document (its journey's trace)."""
        payload = document.SerializeToString(deterministic=True)
        content_hash = document.content_hash
        if not content_hash:
            content_hash = "sha256:" + hashlib.sha256(payload).hexdigest()
            payload += _hash_field(content_hash)
        return _Item(
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
        valid: list[tuple[int, _Item]] = []
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
            groups = self._split(valid)
            loop = asyncio.get_running_loop()
            submissions = [
                _Submission(pipeline, [item for _, item in group], skip_unchanged, loop.create_future())
                for group in groups
            ]
            for submission in submissions:
                self._enqueue(submission)
            settled = await asyncio.gather(*(s.future for s in submissions), return_exceptions=True)
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

    def _split(self, valid: list[tuple[int, _Item]]) -> list[list[tuple[int, _Item]]]:
        groups: list[list[tuple[int, _Item]]] = []
        current: list[tuple[int, _Item]] = []
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

    def _enqueue(self, submission: _Submission, *, front: bool = False) -> None:
        queue = self._queues.setdefault(submission.pipeline.id, _Queue())
        if front:
            queue.pending.appendleft(submission)
        else:
            queue.pending.append(submission)
        self._pump(submission.pipeline.id)

    def _pump(self, pipeline_id: str) -> None:
        queue = self._queues.get(pipeline_id)
        if queue is None:
            return
        while queue.pending and queue.inflight < self.settings.flushes_per_pipeline:
            batch = self._take(queue)
            queue.inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)

            def done(task: asyncio.Task[None], queue: _Queue = queue) -> None:
                self._tasks.discard(task)
                queue.inflight -= 1
                if not queue.pending and not queue.inflight:
                    self._queues.pop(pipeline_id, None)
                else:
                    self._pump(pipeline_id)

            task.add_done_callback(done)

    def _take(self, queue: _Queue) -> list[_Submission]:
        first = queue.pending.popleft()
        batch = [first]
        if first.alone:
            return batch
        ids = {item.document_id for item in first.items}
        size, count = first.size, len(first.items)
        while queue.pending:
            nxt = queue.pending[0]
            if (
                nxt.alone
                or nxt.skip_unchanged != first.skip_unchanged
                or count + len(nxt.items) > self.settings.pack_max_documents
                or size + nxt.size > self.settings.pack_max_bytes
                or any(item.document_id in ids for item in nxt.items)
            ):
                break
            queue.pending.popleft()
            batch.append(nxt)
            ids.update(item.document_id for item in nxt.items)
            size += nxt.size
            count += len(nxt.items)
        return batch

    async def _flush(self, batch: list[_Submission]) -> None:
        try:
            await self._write(batch)
        except BaseException as exc:  # resolve every waiter whatever happens
            error = (
                exc if isinstance(exc, ServiceError) else Internal(f"staging failed: {type(exc).__name__}")
            )
            if not isinstance(exc, ServiceError):
                log.exception("pack flush failed")
            for submission in batch:
                if not submission.future.done():
                    submission.future.set_exception(error)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise

    async def _write(self, batch: list[_Submission]) -> None:
        pipeline = batch[0].pipeline
        items = [item for submission in batch for item in submission.items]
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
            await self._after_failed_record(pipeline, key, error)
            if error.reason == PACK_CONDEMNED:
                self._rewrite(batch, key, error)
                return
            if len(batch) > 1 and error.code is grpc.StatusCode.INVALID_ARGUMENT:
                # One caller's document may have made the claimer refuse the whole
                # batch: retry each caller's submission on its own.
                for submission in reversed(batch):
                    submission.alone = True
                    self._enqueue(submission, front=True)
                return
            if error.code is grpc.StatusCode.NOT_FOUND:
                self.claimer.forget_pipeline(pipeline.id)
            for submission in batch:
                if not submission.future.done():
                    submission.future.set_exception(error)
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
            part = results[offset : offset + len(submission.items)]
            offset += len(submission.items)
            if not submission.future.done():
                submission.future.set_result(part)

    def _rewrite(self, batch: list[_Submission], key: str, error: ServiceError) -> None:
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
            elif not submission.future.done():
                submission.future.set_exception(
                    Unavailable(
                        f"staging took longer than GATEWAY_PACK_ORPHAN_AGE_SECONDS {MAX_REWRITES + 1} "
                        f"times (its pack was swept before it was recorded: {error.message}); "
                        "nothing was staged, retry",
                        retry_after=1.0,
                    )
                )

    async def _after_failed_record(self, pipeline: PipelineInfo, key: str, error: ServiceError) -> None:
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

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.orphan_retry_seconds, 5.0))
            try:
                await self.check_suspects()
            except Exception:
                log.exception("pack sweeper failed")


# -- reading -----------------------------------------------------------------------------------


class StagedChunkIds:
    """Chunk ids of staged documents by backing, the most recently used ``capacity`` kept.

    A backing names immutable bytes (a re-stage gets a new one), so an entry is never
    stale; it only ages out.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def get(self, backing: str) -> tuple[str, ...] | None:
        ids = self._ids.get(backing)
        if ids is not None:
            self._ids.move_to_end(backing)
        return ids

    def remember(self, backing: str, ids: tuple[str, ...]) -> None:
        self._ids[backing] = ids
        self._ids.move_to_end(backing)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


class ChunkReader:
    """Reads documents' chunks: cache first, then S3."""

    def __init__(self, claimer: ClaimerClient, store: ChunkStore, cache: ResilientCache, codec: SegmentCodec):
        self.claimer = claimer
        self.store = store
        self.cache = cache
        self.codec = codec
        self.chunk_ids = StagedChunkIds()
        """The chunk ids of recently read documents, by backing (what WriteVectors checks)."""

    async def staged_chunk_ids(
        self, namespace: str, backings: Sequence[str]
    ) -> dict[str, tuple[str, ...] | ServiceError]:
        """The chunk ids of the documents these backings hold, in staged order: remembered
        ones from the last reads (a worker reads a document's chunks before writing its
        vectors), the others from the chunk cache or S3. A backing whose segment cannot be
        read maps to the error."""
        found: dict[str, tuple[str, ...] | ServiceError] = {}
        missing: list[str] = []
        for backing in dict.fromkeys(backings):
            ids = self.chunk_ids.get(backing)
            if ids is None:
                missing.append(backing)
            else:
                found[backing] = ids
        if missing:
            for backing, outcome in (await self._segments(namespace, missing)).items():
                if isinstance(outcome, ServiceError):
                    found[backing] = outcome
                else:
                    ids = tuple(chunk.id for chunk in self.codec.decode(outcome).chunks)
                    self.chunk_ids.remember(backing, ids)
                    found[backing] = ids
        return found

    async def read(
        self,
        pipeline_id: str,
        worker_id: str,
        stage: str,
        leases: Sequence[tuple[str, int]],
        *,
        require_lease: bool = True,
    ) -> AsyncIterator[DocumentChunks]:
        """Each requested document's chunks, in request order.

        With ``require_lease`` a document whose lease ``worker_id`` does not
        hold in ``stage`` yields a FAILED_PRECONDITION error instead; an
        unknown document yields NOT_FOUND; every lease must carry its fencing
        token (0 is no wildcard: INVALID_ARGUMENT naming
        ``leases[i].fencing_token``). Without it (the seed's REST route
        carries no lease), any staged document is read.
        """
        if not pipeline_id:
            raise InvalidArgument.field("pipeline_id", "is required")
        if require_lease:
            if not worker_id:
                raise InvalidArgument.field("worker_id", "is required")
            if not stage:
                raise InvalidArgument.field("stage", "is required")
        for index, (document_id, token) in enumerate(leases):
            if not document_id:
                raise InvalidArgument.field(f"leases[{index}].document_id", "is required")
            if require_lease and not token:
                raise InvalidArgument.field(
                    f"leases[{index}].fencing_token",
                    "is required: the fencing token of the lease, as the claim returned it "
                    "(0 is no wildcard)",
                )
        pipeline = await self.claimer.pipeline(pipeline_id)
        for start in range(0, len(leases), READ_WINDOW):
            window = leases[start : start + READ_WINDOW]
            if require_lease:
                checks = await self.claimer.check_leases(pipeline.id, worker_id, stage, window)
            else:
                checks = await self.claimer.probe(pipeline.id, [document_id for document_id, _ in window])
            readable: dict[str, LeaseCheck] = {}
            errors: dict[int, ServiceError] = {}
            for offset, check in enumerate(checks):
                document_id = window[offset][0]
                if not check.found:
                    errors[offset] = NotFound(
                        f"document {document_id!r} not found in pipeline {pipeline.id!r}",
                        metadata={"document_id": document_id},
                    )
                elif require_lease and not check.held:
                    errors[offset] = FailedPrecondition(
                        f"worker {worker_id!r} does not hold a lease on document {document_id!r} in stage "
                        f"{stage!r} with fencing token {window[offset][1]} "
                        f"(current token {check.fencing_token})",
                        reason="LEASE_NOT_HELD",
                        metadata={"document_id": document_id, "fencing_token": str(check.fencing_token)},
                    )
                elif check.backing:
                    readable[check.backing] = check
            segments = await self._segments(pipeline.target_namespace, list(readable))
            for offset, check in enumerate(checks):
                document_id = window[offset][0]
                if offset in errors:
                    yield DocumentChunks(document_id, error=errors[offset], fencing_token=check.fencing_token)
                    continue
                if not check.backing:
                    yield DocumentChunks(document_id, (), fencing_token=check.fencing_token)
                    continue
                outcome = segments.get(check.backing)
                if isinstance(outcome, ServiceError):
                    yield DocumentChunks(document_id, error=outcome, fencing_token=check.fencing_token)
                    continue
                assert outcome is not None
                document = self.codec.decode(outcome)
                if document.id != document_id:
                    raise Internal(
                        f"backing {check.backing} holds document {document.id!r}, not {document_id!r}"
                    )
                READ_CHUNKS.inc(len(document.chunks))
                self.chunk_ids.remember(check.backing, tuple(chunk.id for chunk in document.chunks))
                yield DocumentChunks(document_id, document.chunks, fencing_token=check.fencing_token)

    async def _segments(self, namespace: str, backings: list[str]) -> dict[str, bytes | ServiceError]:
        if not backings:
            return {}
        found: dict[str, bytes | ServiceError] = dict(await self.cache.get_many(namespace, backings))
        missing = [b for b in backings if b not in found]
        if missing:
            parsed: dict[Backing, str] = {}
            for text in missing:
                try:
                    parsed[Backing.parse(text)] = text
                except ValueError:
                    found[text] = Internal(f"malformed chunk backing {text!r}")
            try:
                fetched = await self.store.read_segments(parsed)
            except NotFound:
                # One object is gone (re-staged meanwhile): read the rest one by one.
                fetched = {}
                for backing, text in parsed.items():
                    try:
                        fetched.update(await self.store.read_segments([backing]))
                    except NotFound as exc:
                        found[text] = exc
            fresh = {parsed_text: fetched[b] for b, parsed_text in parsed.items() if b in fetched}
            found.update(fresh)
            self.cache.put_later(namespace, fresh)
        return found
