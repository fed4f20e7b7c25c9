"""The gateway boundary: where directory summaries go once written.

A summary is staged as one document per directory through the gateway's
public ``StagingService.StageDocuments``: document id
``dir:<job_id>:/<path>`` (:func:`summary_document_id`), one chunk (id
``summary``) whose metadata is ``{"kind": "directory_summary", "path": ...,
"job_id": ...}``, content hash = the summary's cache key, and
``skip_unchanged`` set, so re-staging an unchanged summary (a job rebuilt
after a restart) leaves the gateway's document and vectors alone. From there
it takes the same embedding tail as every other chunk.

The job runner only sees the :class:`Stager` interface. This module is the core side
and imports no transport: the interface, the summary document, and
:class:`MemoryStager`, which keeps the documents in memory (tests, and
``SUMMARIZER_GATEWAY_ADDRESS=""``). The stager that talks to the gateway over gRPC,
:class:`~hevlayer.summarizer.gateway_stager.GrpcStager`, is a transport adapter in
:mod:`hevlayer.summarizer.gateway_stager`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from hevlayer.api.document.v1 import document_pb2

CHUNK_KIND = "directory_summary"
CHUNK_ID = "summary"
MAX_DOCUMENT_ID_BYTES = 512


def summary_document_id(job_id: str, path: str) -> str:
    """The document id of a directory's summary (``path`` "" is the root)."""
    return f"dir:{job_id}:/{path}"


class StageError(Exception):
    """A summary could not be staged; the message says why."""


@dataclass(frozen=True)
class StagedSummary:
    """One directory summary to stage."""

    pipeline_id: str
    job_id: str
    path: str
    text: str
    cache_key: str

    @property
    def document_id(self) -> str:
        """``dir:<job_id>:/<path>``."""
        return summary_document_id(self.job_id, self.path)

    @property
    def metadata(self) -> dict[str, str]:
        """The chunk's metadata."""
        return {"kind": CHUNK_KIND, "path": self.path, "job_id": self.job_id}

    def to_document(self) -> document_pb2.Document:
        """The document as StageDocuments takes it."""
        metadata = struct_pb2.Struct()
        metadata.update(self.metadata)
        return document_pb2.Document(
            id=self.document_id,
            chunks=[document_pb2.Chunk(id=CHUNK_ID, text=self.text, metadata=metadata)],
            content_hash=self.cache_key,
        )


@dataclass(frozen=True)
class DocumentUpdate:
    """One message of the gateway's ``WatchDocuments`` stream, as the completion tracker
    (:mod:`hevlayer.summarizer.completion`) reads it."""

    states: list[tuple[str, str, int]]
    """``(document id, stage, fencing token)`` per change, in commit order (in a snapshot:
    each document's current state, by id). Stage "" means the document was deleted."""
    snapshot: bool = False
    """The message is part of a snapshot (the stream's start, or a resync)."""
    snapshot_complete: bool = False
    """The last message of a snapshot."""
    cursor: str = ""
    """Where to resume after this message (empty inside a snapshot)."""


class Stager(abc.ABC):
    """Sends directory summaries into the embedding tail."""

    @abc.abstractmethod
    async def stage(self, summary: StagedSummary) -> int:
        """Stage one summary and return its document's fencing token (0 if this stager has
        none); raise :class:`StageError` when it cannot be."""

    async def close(self) -> None:
        """Release connections."""
        return None


class TrackingStager(Stager):
    """A stager that also reports how staged summaries move through the embedding tail (the
    summarizer tracks their indexing only with one)."""

    @abc.abstractmethod
    def watch_documents(self, pipeline_id: str, id_prefix: str, cursor: str) -> AsyncIterator[DocumentUpdate]:
        """The committed changes of the pipeline's documents under ``id_prefix``: a snapshot
        first without ``cursor``, else the changes after it (``StagingService.WatchDocuments``).
        Raises ``NotFound`` when the pipeline does not exist; any other error ends the stream
        (the tracker watches again from its last cursor)."""


@dataclass
class MemoryStager(Stager):
    """Keeps staged documents in memory, in staging order (tests; staging disabled)."""

    documents: dict[str, StagedSummary] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    async def stage(self, summary: StagedSummary) -> int:
        self.documents[summary.document_id] = summary
        self.order.append(summary.document_id)
        return 0
