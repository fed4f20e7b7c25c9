"""The transport adapter of the summarizer's staging: :class:`GrpcStager` stages directory
summaries through the gateway's public ``StagingService.StageDocuments`` over gRPC (with
:class:`hevlayer.client.StagingClient`) and follows their documents' changes with
``WatchDocuments`` (the completion tracker's success hook).

What a summary document is, the :class:`~hevlayer.summarizer.staging.Stager` interface the
job runner sees, and the in-memory stager live in the core module
:mod:`hevlayer.summarizer.staging`; this module is the only one of them that imports grpc.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import grpc

from hevlayer.client import Client, ClientOptions, ServiceError, StageOutcome
from hevlayer.common.errors import GOOGLE_RPC_CODE_NAMES
from hevlayer.summarizer.staging import DocumentUpdate, StagedSummary, StageError, TrackingStager

log = logging.getLogger("hevlayer.summarizer.staging")

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class GrpcStager(TrackingStager):
    """Stages through the gateway's StagingService with :class:`hevlayer.client.StagingClient`.

    StageDocuments is not retried by the client library (a stream's outcome is
    unknown when it fails); here it is safe to retry, because a summary is staged
    without a lease and with ``skip_unchanged``: staging the same summary again
    leaves the gateway's document as it is. UNAVAILABLE and DEADLINE_EXCEEDED are
    retried up to ``max_attempts`` times with jittered exponential backoff (or
    the server's RetryInfo delay, when longer).
    """

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

    async def stage(self, summary: StagedSummary) -> int:
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
            return int(result.fencing_token)
        raise StageError(f"StageDocuments to {self.address}: no attempt made")  # max_attempts < 1

    async def watch_documents(
        self, pipeline_id: str, id_prefix: str, cursor: str
    ) -> AsyncIterator[DocumentUpdate]:
        """WatchDocuments of the pipeline under ``id_prefix``, resumed after ``cursor``.
        ServiceError propagates (NOT_FOUND included); the stream has no deadline."""
        async for message in self._client.staging.watch_documents(
            pipeline_id, id_prefix=id_prefix, cursor=cursor
        ):
            yield DocumentUpdate(
                states=[(c.document_id, c.stage, c.fencing_token) for c in message.changes],
                snapshot=message.snapshot,
                snapshot_complete=message.snapshot_complete,
                cursor=message.cursor,
            )

    async def close(self) -> None:
        await self._client.close()
