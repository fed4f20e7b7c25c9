"""The extract loop: claim ids from stage ``extract``, read each object, run its producer, stage.

Shared by ``hevlayer add`` (its in-process workers) and the extract worker deployable
(``hevlayer-extractor``). One :class:`ExtractLoop` works one pipeline; its workers
(:meth:`ExtractLoop.worker`, one asyncio task each) repeat:

1. ``ClaimDocuments`` from ``extract`` into ``extracting`` under leases of
   ``lease_seconds`` (heartbeated every third of it while the documents are worked);
2. read each object from its source (:mod:`hevlayer.ingest.sources`: the id names it);
3. consult the Artifact Cache (:mod:`hevlayer.ingest.artifacts`) for the object's chunks
   (content hash + producer version + budget + name); on a miss run the producer of the
   object's kind in a thread (a *conversion*) and store its chunks and derived text, under the
   cache's single flight (another lane or worker converting the same object now is waited for
   and its entry read);
4. ``StageDocuments`` with the leases (fenced: a lease lost meanwhile rejects the write), which
   makes the documents ``pending`` for the embedder. An object that cannot be read or
   converted is moved to ``failed`` with the reason; one that is gone is deleted.

Failures on the way keep every id: a crash leaves the leases to expire (the ids return to
``extract`` for any worker); a cancelled worker hands its documents back to ``extract`` at once;
UNAVAILABLE (a gateway restarting) is ridden out with backoff for ``retry_seconds`` and the
documents of a cut-off call are handed back (fenced by their tokens) once the gateway answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client import Claim, Client, Lease, LeaseRef
from hevlayer.client.errors import ServiceError, Unavailable
from hevlayer.ingest.artifacts import (
    ArtifactCache,
    chunks_token,
    data_hash,
    decode_chunks,
    derived_text,
    encode_chunks,
    text_token,
    version_token,
)
from hevlayer.ingest.files import DEFAULT_MAX_FILE_BYTES
from hevlayer.ingest.producers import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    content_hash,
    detect_kind,
    select_producer,
    unsupported_reason,
)
from hevlayer.ingest.sources import ObjectData, ObjectMissing, ObjectSource, SourceError

EXTRACT_STAGE = "extract"
EXTRACTING_STAGE = "extracting"
FAILED_STAGE = "failed"
MAX_REASON_CHARS = 1000
MAX_BACKOFF = 5.0
_HEAD_BYTES = 8192


def to_document(document_id: str, chunks: Sequence[Chunk], hash_value: str) -> document_pb2.Document:
    """The Document proto of a producer's chunks."""
    document = document_pb2.Document(id=document_id, content_hash=hash_value)
    for chunk in chunks:
        proto = document.chunks.add(id=chunk.id, text=chunk.text)
        proto.metadata.update(chunk.metadata)
    return document


@dataclass(frozen=True)
class Extraction:
    """The result of reading and chunking one claimed document."""

    document_id: str
    document: document_pb2.Document | None = None
    reason: str = ""
    missing: bool = False
    kind: str = ""
    size: int = 0
    """Bytes read."""
    converted: bool = False
    """The producer ran (not an Artifact Cache hit)."""
    seconds: float = 0.0
    """Time spent converting (0 on a cache hit)."""


def classify(obj: ObjectData) -> tuple[Producer | None, str]:
    """The producer of an object's kind, or None and why none takes it."""
    head = obj.data[:_HEAD_BYTES]
    kind = detect_kind(obj.name, head)
    if kind is None:
        return None, unsupported_reason(obj.name, head)
    return select_producer(kind), ""


def convert(obj: ObjectData, producer: Producer, budget: Budget) -> tuple[list[Chunk] | None, str]:
    """Run ``producer`` on ``obj`` (blocking): its chunks, or None and the reason it failed."""
    try:
        return producer.produce(Source(obj.document_id, obj.name, obj.data), budget), ""
    except ProducerError as exc:
        return None, str(exc)
    except Exception as exc:  # a producer bug must not stop the run; the object is reported
        return None, f"{producer.kind} producer failed: {type(exc).__name__}: {exc}"


def extract_object(obj: ObjectData, budget: Budget = DEFAULT_BUDGET) -> Extraction:
    """Detect the kind of ``obj`` and convert it (blocking; no cache)."""
    producer, reason = classify(obj)
    if producer is None:
        return Extraction(obj.document_id, reason=reason, size=len(obj.data))
    started = time.perf_counter()
    chunks, reason = convert(obj, producer, budget)
    seconds = time.perf_counter() - started
    if chunks is None:
        return Extraction(
            obj.document_id, reason=reason, kind=producer.kind, size=len(obj.data), converted=True
        )
    document = to_document(obj.document_id, chunks, content_hash(obj.data, producer))
    return Extraction(
        obj.document_id,
        document=document,
        kind=producer.kind,
        size=len(obj.data),
        converted=True,
        seconds=seconds,
    )


@dataclass(frozen=True)
class LoopOptions:
    """How an extract loop claims and converts."""

    claim_limit: int = 16
    """Documents one claim takes."""
    lease_seconds: int = 300
    """Lease of a claimed document (heartbeated every third of it while it is extracted)."""
    poll_seconds: float = 0.5
    """Longest pause of an idle worker between claims (it starts at a quarter and doubles)."""
    budget: Budget = DEFAULT_BUDGET
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest object read; a larger one fails naming its size."""
    retry_seconds: float = math.inf
    """How long UNAVAILABLE is ridden out before a worker raises it (inf: forever)."""
    interrupted_reason: str = "the extract worker was interrupted"
    """Reason recorded when a cancelled worker hands its documents back."""
    worker_prefix: str = "extractor"
    """Worker ids on leases are ``<prefix>-<number>``."""


@dataclass
class ExtractStats:
    """What one loop has done (all its workers)."""

    claimed: int = 0
    staged: int = 0
    chunks: int = 0
    failed: int = 0
    deleted: int = 0
    released: int = 0
    """Documents handed back to ``extract`` (interrupted, or the gateway went away mid-call)."""
    bytes_read: int = 0
    conversions: int = 0
    """Producer runs (every miss of the Artifact Cache, or every object without one)."""
    cache_hits: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class ExtractObserver:
    """Told what the loop does (the CLI's progress, the extract worker's metrics); no-ops here."""

    def claimed(self, pipeline_id: str, count: int) -> None:
        """``count`` documents were claimed and are being worked."""

    def finished(self, pipeline_id: str, count: int) -> None:
        """A batch of ``count`` claimed documents is done with (staged, failed, deleted or released)."""

    def extracted(self, pipeline_id: str, extraction: Extraction) -> None:
        """An object was read (and converted or found in the cache, or not)."""

    def staged(self, pipeline_id: str, document_id: str, chunks: int) -> None:
        """A document was staged."""

    def failed(self, pipeline_id: str, document_id: str, reason: str) -> None:
        """A document was moved to ``failed``."""

    def deleted(self, pipeline_id: str, count: int) -> None:
        """Documents whose objects are gone were deleted."""


class ExtractLoop:
    """The extract workers of one pipeline; see the module docstring."""

    def __init__(
        self,
        gateway: Client,
        pipeline_id: str,
        sources: ObjectSource,
        options: LoopOptions = LoopOptions(),
        *,
        cache: ArtifactCache | None = None,
        observer: ExtractObserver | None = None,
    ) -> None:
        self.gateway = gateway
        self.pipeline_id = pipeline_id
        self.sources = sources
        self.options = options
        self.cache = cache
        self.observer = observer or ExtractObserver()
        self.stats = ExtractStats()
        self.in_flight = 0
        """Documents claimed and not yet done with."""
        self._unavailable_since: float | None = None
        """When the workers' calls started failing UNAVAILABLE (None: they answer)."""

    def start(self, count: int, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """``count`` worker tasks, running until ``stop`` is set (or cancelled)."""
        return [
            asyncio.create_task(self.worker(n, stop), name=f"extract-{self.pipeline_id}-{n}")
            for n in range(count)
        ]

    def worker_id(self, number: int) -> str:
        return f"{self.options.worker_prefix}-{number}"

    def claim(self, worker: str) -> Claim:
        return Claim(
            self.pipeline_id,
            worker,
            EXTRACT_STAGE,
            EXTRACTING_STAGE,
            lease_seconds=self.options.lease_seconds,
        )

    async def worker(self, number: int, stop: asyncio.Event) -> None:
        """Claim, extract and stage until ``stop`` is set; raises UNAVAILABLE after ``retry_seconds``."""
        worker = self.worker_id(number)
        idle = self.options.poll_seconds / 4
        while not stop.is_set():
            try:
                leases = await self.gateway.leases.claim(self.claim(worker), self.options.claim_limit)
            except Unavailable as error:
                await self.ride_out(error, stop)
                continue
            self._unavailable_since = None
            if not leases:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle)
                idle = min(self.options.poll_seconds, idle * 2)
                continue
            idle = self.options.poll_seconds / 4
            self.in_flight += len(leases)
            self.stats.claimed += len(leases)
            self.observer.claimed(self.pipeline_id, len(leases))
            try:
                await self.process(worker, leases)
            finally:
                self.in_flight -= len(leases)
                self.observer.finished(self.pipeline_id, len(leases))

    async def ride_out(self, error: Unavailable, stop: asyncio.Event | None) -> None:
        """Back off after UNAVAILABLE; re-raise it once the gateway has been unavailable for
        ``retry_seconds``."""
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
        if now - self._unavailable_since > self.options.retry_seconds:
            raise error
        pause = min(MAX_BACKOFF, error.retry_after or MAX_BACKOFF / 5)
        if stop is None:
            await asyncio.sleep(pause)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)

    async def process(self, worker: str, leases: Sequence[Lease]) -> None:
        """Extract and stage one claimed batch; hand it back when interrupted."""
        held = {lease.document_id: lease.fencing_token for lease in leases}
        try:
            await self._extract_and_stage(worker, held)
        except Unavailable as error:
            # The gateway (or what it needs) went away mid-call: once it answers again, hand the
            # documents back to ``extract`` (fenced by their tokens: a no-op for any the lost call
            # did stage) and let the workers claim them again.
            await self.ride_out(error, None)
            with contextlib.suppress(ServiceError):
                await self.gateway.leases.transition_claimed(
                    self.claim(worker),
                    [LeaseRef(d, t) for d, t in held.items()],
                    EXTRACT_STAGE,
                    reason="the gateway was unavailable during staging",
                )
                self.stats.released += len(held)
        except asyncio.CancelledError:
            # Interrupted: hand the documents back to ``extract`` now rather than when the leases expire.
            with contextlib.suppress(ServiceError, asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(
                    self.gateway.leases.transition_claimed(
                        self.claim(worker),
                        [LeaseRef(d, t) for d, t in held.items()],
                        EXTRACT_STAGE,
                        reason=self.options.interrupted_reason,
                    ),
                    timeout=5,
                )
                self.stats.released += len(held)
            raise

    async def extract(self, document_id: str) -> Extraction:
        """Read the object behind ``document_id`` and chunk it (from the cache when it can)."""
        try:
            obj = await self.sources.read(document_id, self.options.max_bytes)
        except ObjectMissing:
            return Extraction(document_id, missing=True)
        except SourceError as exc:
            return Extraction(document_id, reason=exc.reason)
        self.stats.bytes_read += len(obj.data)
        if self.cache is None:
            extraction = await asyncio.to_thread(extract_object, obj, self.options.budget)
        else:
            extraction = await self._extract_cached(obj, self.cache)
        if extraction.converted:
            self.stats.conversions += 1
        if extraction.kind:
            self.stats.by_kind[extraction.kind] = self.stats.by_kind.get(extraction.kind, 0) + 1
        return extraction

    async def _extract_cached(self, obj: ObjectData, cache: ArtifactCache) -> Extraction:
        producer, reason = classify(obj)
        size = len(obj.data)
        if producer is None:
            return Extraction(obj.document_id, reason=reason, size=size)
        key = await asyncio.to_thread(data_hash, obj.data)
        token = chunks_token(producer, self.options.budget, obj.name)
        cached = await self._cached(obj, producer, cache, key, token)
        if cached is not None:
            return cached
        # Single flight: whoever else converts this object now (the Job Lane, another worker on
        # this directory) finishes first, and its entry is read instead of converting again.
        async with cache.flight(key, version_token(producer)):
            cached = await self._cached(obj, producer, cache, key, token)
            if cached is not None:
                return cached
            started = time.perf_counter()
            converted, reason = await asyncio.to_thread(convert, obj, producer, self.options.budget)
            seconds = time.perf_counter() - started
            if converted is None:
                return Extraction(
                    obj.document_id, reason=reason, kind=producer.kind, size=size, converted=True
                )
            await cache.put(key, token, encode_chunks(converted))
            await cache.put(key, text_token(producer), derived_text(converted).encode(errors="surrogatepass"))
        document = to_document(obj.document_id, converted, content_hash(obj.data, producer))
        return Extraction(
            obj.document_id, document=document, kind=producer.kind, size=size, converted=True, seconds=seconds
        )

    async def _cached(
        self, obj: ObjectData, producer: Producer, cache: ArtifactCache, key: str, token: str
    ) -> Extraction | None:
        """The extraction of ``obj`` from its cached chunks; None on a miss."""
        blob = await cache.get(key, token)
        if blob is None:
            return None
        try:
            chunks = decode_chunks(blob)
        except ValueError:
            return None
        self.stats.cache_hits += 1
        document = to_document(obj.document_id, chunks, f"sha256:{key};{producer.kind}/{producer.version}")
        return Extraction(obj.document_id, document=document, kind=producer.kind, size=len(obj.data))

    async def _extract_and_stage(self, worker: str, held: dict[str, int]) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(worker, held))
        try:
            extractions = await asyncio.gather(*(self.extract(doc) for doc in held))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        for extraction in extractions:
            self.observer.extracted(self.pipeline_id, extraction)
        missing = [e.document_id for e in extractions if e.missing]
        failed = [(e.document_id, e.reason) for e in extractions if not e.missing and e.document is None]
        documents = [e.document for e in extractions if e.document is not None]
        if documents:
            results = await self.gateway.staging.stage(
                self.pipeline_id, documents, leases=[LeaseRef(d.id, held[d.id]) for d in documents]
            )
            for result, document in zip(results, documents, strict=False):
                if result.outcome == staging_pb2.STAGE_OUTCOME_REJECTED:
                    failed.append((result.document_id, f"rejected: {result.error.message}"))
                else:
                    self.stats.staged += 1
                    self.stats.chunks += len(document.chunks)
                    self.observer.staged(self.pipeline_id, document.id, len(document.chunks))
        for document_id, reason in failed:
            reason = reason[:MAX_REASON_CHARS] or "extraction failed"
            await self.gateway.leases.transition_claimed(
                self.claim(worker), [LeaseRef(document_id, held[document_id])], FAILED_STAGE, reason=reason
            )
            self.stats.failed += 1
            self.observer.failed(self.pipeline_id, document_id, reason)
        if missing:
            # A claimed id may still live only in a queue segment (no document row that
            # DeleteDocuments could remove): settle it under its lease first, then delete it.
            await self.gateway.leases.transition_claimed(
                self.claim(worker),
                [LeaseRef(d, held[d]) for d in missing],
                FAILED_STAGE,
                reason="the object is gone from its source",
            )
            deleted = await self.gateway.staging.delete_documents(self.pipeline_id, missing)
            self.stats.deleted += deleted
            self.observer.deleted(self.pipeline_id, deleted)

    async def _heartbeat(self, worker: str, held: dict[str, int]) -> None:
        interval = max(1.0, self.options.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ServiceError):
                await self.gateway.leases.heartbeat(
                    self.claim(worker), [LeaseRef(d, t) for d, t in held.items()]
                )
