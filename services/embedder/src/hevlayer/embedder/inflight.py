"""Documents in flight in the worker, and the items of the chunk queue.

A document is *in flight* from the moment its lease arrives until it is
*finished* with one :class:`Fate`. In between, its chunks travel
through the bounded :class:`~hevlayer.embedder.chunk_queue.ChunkQueue` as
:class:`ChunkItem` s followed by one :class:`EndOfDocument`, get embedded
(possibly across several flushes, with chunks of other documents), and the
complete document is written with WriteVectors.

The document's *owner* (the :class:`~hevlayer.embedder.pipeline_worker.PipelineWorker`
of its pipeline) writes it and is told how it finished — the success hook
that also delivers failures.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.rpc import code_pb2

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client import WriteOutcome, WriteResult
from hevlayer.embedder.document_trace import DocumentTrace


class Fate(enum.Enum):
    """How a document's time in the worker ended (its fate, not an API outcome)."""

    INDEXED = "indexed"
    """Its vectors were written and the gateway moved it to indexed."""
    LOST = "lost"
    """Its lease is gone (expired and re-claimed, re-staged, deleted): its work is dropped."""
    RELEASED = "released"
    """A retryable failure (Triton or the gateway unavailable, shutdown): moved back to pending."""
    FAILED = "failed"
    """A permanent failure (the model or the index refused it): moved to failed with the error."""


def fate_of(result: WriteResult) -> Fate:
    """How a WriteVectors result ends a document: written, lost (the lease is stale, or the
    document was deleted meanwhile: NOT_FOUND) or failed (the gateway refused it)."""
    if result.outcome is WriteOutcome.INDEXED:
        return Fate.INDEXED
    if result.outcome is WriteOutcome.STALE_LEASE or result.error_code == code_pb2.NOT_FOUND:
        return Fate.LOST
    return Fate.FAILED


class DocumentOwner(Protocol):
    """Writes its documents and is told how each one finished."""

    @property
    def pipeline_id(self) -> str: ...

    async def write(self, documents: Sequence[InFlightDocument]) -> list[WriteResult]:
        """WriteVectors for complete documents; one result per document, in order (its
        :func:`fate_of` says how it ends the document)."""
        ...

    async def finish(self, documents: Sequence[InFlightDocument], outcome: Fate, error: str = "") -> None:
        """Called once per document (later calls for a finished document are ignored)."""
        ...


@dataclass(eq=False)
class InFlightDocument:
    """One leased document on its way through the worker."""

    owner: DocumentOwner
    document_id: str
    fencing_token: int
    expires_at: float
    """``time.monotonic()`` at which the lease runs out unless heartbeated."""
    attempts: int = 0
    vectors: list[document_pb2.Vector | None] = field(default_factory=list)
    queued: int = 0
    """Chunks put into the chunk queue."""
    embedded: int = 0
    """Chunks embedded (their vectors are in ``vectors``)."""
    total: int | None = None
    """Number of chunks, known once the :class:`EndOfDocument` has been consumed."""
    submitted: bool = False
    """Handed to the writer."""
    writing: bool = False
    """A WriteVectors call carrying it is in flight (its result decides the outcome)."""
    finished: bool = False
    outcome: Fate | None = None
    claimed_at: float = field(default_factory=time.perf_counter)
    trace: DocumentTrace | None = None
    """The document's spans in the worker (its journey's trace), when it came with a lease."""
    trace_parent: str = ""
    """The trace context its WriteVectors sends (the current ``document.write_vectors`` span)."""

    @property
    def complete(self) -> bool:
        """Every chunk embedded and the end of the document seen."""
        return self.total is not None and self.embedded == self.total

    def set_vector(self, index: int, vector: document_pb2.Vector) -> None:
        if index >= len(self.vectors):
            self.vectors.extend([None] * (index + 1 - len(self.vectors)))
        if self.vectors[index] is None:
            self.embedded += 1
        self.vectors[index] = vector

    def written_vectors(self) -> list[document_pb2.Vector]:
        """The vectors in chunk order (the document must be complete)."""
        out = [v for v in self.vectors[: self.total or 0] if v is not None]
        if len(out) != (self.total or 0):
            raise RuntimeError(f"document {self.document_id!r} is not complete")
        return out

    def drop_vectors(self) -> None:
        """Free the vectors (the document is finished)."""
        self.vectors = []

    def __repr__(self) -> str:
        return (
            f"InFlightDocument({self.owner.pipeline_id}/{self.document_id}, token={self.fencing_token}, "
            f"queued={self.queued}, embedded={self.embedded}, total={self.total}, finished={self.finished})"
        )


@dataclass(frozen=True, slots=True)
class ChunkItem:
    """One chunk of a document, to be embedded."""

    document: InFlightDocument
    index: int
    chunk: document_pb2.Chunk


@dataclass(frozen=True, slots=True)
class EndOfDocument:
    """Follows the last chunk of a document in the queue; ``total`` chunks preceded it."""

    document: InFlightDocument
    total: int


QueueItem = ChunkItem | EndOfDocument
