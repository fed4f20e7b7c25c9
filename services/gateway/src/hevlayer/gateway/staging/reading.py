"""Reading staged documents' chunks back (ReadChunks, the REST chunks route, WriteVectors'
chunk-id check).

:class:`ChunkReader` checks the leases (``CheckLeases``; or only that the documents exist,
for the REST route), then reads each document's segment from the chunk cache, then the
misses from S3 with ranged GETs merged per object, and decodes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from hevlayer.api.document.v1 import document_pb2
from hevlayer.common.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, ServiceError
from hevlayer.gateway.cache import ResilientCache
from hevlayer.gateway.chunkstore import Backing, ChunkStore, SegmentCodec
from hevlayer.gateway.claimer_client import ClaimerClient, LeaseCheck
from hevlayer.gateway.metrics import READ_CHUNKS

READ_WINDOW = 64
"""Documents checked with the claimer and read from the cache and S3 at a time."""


@dataclass(frozen=True)
class DocumentChunks:
    """One document read back: its chunks, or why it cannot be read."""

    document_id: str
    chunks: Sequence[document_pb2.Chunk] = ()
    error: ServiceError | None = None
    fencing_token: int = 0


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
