"""The gateway boundary: where directory summaries go once written.

A summary is staged as one document per directory through the gateway's
public ``StagingService.StageDocuments``: document id
``dir:<job_id>:/<path>`` (:func:`summary_document_id`), one chunk (id
``summary``) whose metadata is ``{"kind": "directory_summary", "path": ...,
"job_id": ...}``, content hash = the summary's cache key, and
``skip_unchanged`` set, so re-staging an unchanged summary (a job rebuilt
after a restart) leaves the gateway's document and vectors alone. From there
it takes the same embedding tail as every other chunk.

The job runner only sees the :class:`Stager` interface:
:class:`GrpcStager` talks to the gateway; :class:`MemoryStager` keeps the
documents in memory (tests, and ``SUMMARIZER_GATEWAY_ADDRESS=""``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client import Client, ClientOptions, ServiceError, StageOutcome
from hevlayer.common.errors import GOOGLE_RPC_CODE_NAMES

log = logging.getLogger("hevlayer.summarizer.staging")

CHUNK_KIND = "directory_summary"
CHUNK_ID = "summary"
MAX_DOCUMENT_ID_BYTES = 512
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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


class Stager(abc.ABC):
    """Sends directory summaries into the embedding tail."""

    tracks_indexing = False
    """Whether :meth:`document_stages` reports where staged summaries are in the embedding tail."""

    @abc.abstractmethod
    async def stage(self, summary: StagedSummary) -> None:
        """Stage one summary; raise :class:`StageError` when it cannot be."""

    async def document_stages(self, pipeline_id: str, id_prefix: str) -> dict[str, str] | None:
        """The stage of every staged document whose id starts with ``id_prefix`` (the
        completion tracker's view of the embedding tail); None when this stager stages
        nowhere that indexes (nothing to track)."""
        return None

    async def close(self) -> None:
        """Release connections."""
        return None


@dataclass
class MemoryStager(Stager):
    """Keeps staged documents in memory, in staging order (tests; staging disabled)."""

    documents: dict[str, StagedSummary] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    async def stage(self, summary: StagedSummary) -> None:
        self.documents[summary.document_id] = summary
        self.order.append(summary.document_id)


class GrpcStager(Stager):
    """Stages through the gateway's StagingService with :class:`hevlayer.client.StagingClient`.

    StageDocuments is not retried by the client library (a stream's outcome is
    unknown when it fails); here it is safe to retry, because a summary is staged
    without a lease and with ``skip_unchanged``: staging the same summary again
    leaves the gateway's document as it is. UNAVAILABLE and DEADLINE_EXCEEDED are
    retried up to ``max_attempts`` times with jittered exponential backoff (or
    the server's RetryInfo delay, when longer).
    """

    tracks_indexing = True

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        options: ClientOptions | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._client = Client.connect(address, options)

    async def stage(self, summary: StagedSummary) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                results = await self._client.staging.stage(
                    summary.pipeline_id, [summary.to_document()], skip_unchanged=True, timeout=self.timeout
                )
            except ServiceError as exc:
                message = f"StageDocuments to {self.address} failed: {exc.code.name}: {exc.message}"
                if exc.code not in _RETRYABLE or attempt == self.max_attempts:
                    raise StageError(message) from None
                delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                delay = max(delay, exc.retry_after or 0.0)
                log.warning(
                    "staging failed; retrying",
                    extra={
                        "document_id": summary.document_id,
                        "error": message,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)
                continue
            if len(results) != 1:
                raise StageError(f"StageDocuments answered {len(results)} results for 1 document")
            result = results[0]
            if StageOutcome(result.outcome) is StageOutcome.REJECTED:
                code_name = GOOGLE_RPC_CODE_NAMES.get(result.error.code, str(result.error.code))
                raise StageError(
                    f"the gateway rejected {summary.document_id!r}: {code_name}: {result.error.message}"
                )
            return
        raise StageError(f"StageDocuments to {self.address}: no attempt made")  # max_attempts < 1

    async def document_stages(self, pipeline_id: str, id_prefix: str) -> dict[str, str] | None:
        """ListDocuments of the pipeline under ``id_prefix``: document id to stage.
        ServiceError propagates (the tracker logs it and asks again later)."""
        return {
            document.document_id: document.stage
            async for document in self._client.staging.list_documents(
                pipeline_id, id_prefix=id_prefix, timeout=self.timeout
            )
        }

    async def close(self) -> None:
        await self._client.close()
