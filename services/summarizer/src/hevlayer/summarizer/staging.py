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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import GOOGLE_RPC_CODE_NAMES

log = logging.getLogger("hevlayer.summarizer.staging")

STAGING_SERVICE = staging_pb2.DESCRIPTOR.services_by_name["StagingService"].full_name
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

    @abc.abstractmethod
    async def stage(self, summary: StagedSummary) -> None:
        """Stage one summary; raise :class:`StageError` when it cannot be."""

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


async def _single(
    request: staging_pb2.StageDocumentsRequest,
) -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
    yield request


class GrpcStager(Stager):
    """Stages through the gateway's StagingService over a hevlayer client channel.

    UNAVAILABLE and DEADLINE_EXCEEDED are retried (after the channel's own
    retries) up to ``max_attempts`` times with backoff; staging the same id
    again is safe, the gateway replaces the document.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._channel: aio.Channel = open_channel(address)
        self._stub = staging_pb2_grpc.StagingServiceStub(self._channel)

    async def stage(self, summary: StagedSummary) -> None:
        request = staging_pb2.StageDocumentsRequest(
            pipeline_id=summary.pipeline_id, documents=[summary.to_document()], skip_unchanged=True
        )
        for attempt in range(1, self.max_attempts + 1):
            try:
                result = await self._stage_once(request)
            except aio.AioRpcError as exc:
                code = exc.code()
                message = f"StageDocuments to {self.address} failed: {code.name}: {exc.details()}"
                if code not in _RETRYABLE or attempt == self.max_attempts:
                    raise StageError(message) from None
                delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
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
            if result.outcome == staging_pb2.STAGE_OUTCOME_REJECTED:
                code_name = GOOGLE_RPC_CODE_NAMES.get(result.error.code, str(result.error.code))
                raise StageError(
                    f"the gateway rejected {summary.document_id!r}: {code_name}: {result.error.message}"
                )
            return
        raise StageError(f"StageDocuments to {self.address}: no attempt made")  # max_attempts < 1

    async def _stage_once(self, request: staging_pb2.StageDocumentsRequest) -> staging_pb2.StageResult:
        call = self._stub.StageDocuments(_single(request), timeout=self.timeout)
        results: list[staging_pb2.StageResult] = []
        async for response in call:
            results.extend(response.results)
        if len(results) != 1:
            raise StageError(f"StageDocuments answered {len(results)} results for 1 document")
        return results[0]

    async def close(self) -> None:
        await self._channel.close()
