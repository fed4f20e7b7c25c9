"""Value types of the API, shared by the client and the services.

Rich resources (``Pipeline``, ``PipelineStatus``, ``DocumentState``,
``QueryHit``, ``Job``) are the generated messages themselves; the types here
are what the generated messages do not express well: a lease with a local
deadline, a batch of lease references in either layout, per-document results
with their enum outcome.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client.enums import TransitionOutcome, WriteOutcome


class HasLease(Protocol):
    """Anything that names a held document: a :class:`LeaseRef`, a :class:`Lease`, a worker's own record.

    A value that also has a ``trace_parent`` attribute (a W3C ``traceparent``) carries the
    document's trace context into the calls that record per-document spans (WriteVectors,
    TransitionDocuments)."""

    @property
    def document_id(self) -> str: ...

    @property
    def fencing_token(self) -> int: ...


class LeaseRef(NamedTuple):
    """A document and the fencing token of the lease held on it."""

    document_id: str
    fencing_token: int
    trace_parent: str = ""
    """W3C trace context of the document's journey ("": none); calls naming the lease record
    their per-document spans under it."""


def trace_parent_of(lease: HasLease) -> str:
    """The trace context a lease-like value carries ("" when it has none)."""
    return str(getattr(lease, "trace_parent", "") or "")


@dataclass(frozen=True)
class Claim:
    """Where documents are claimed from and into, by whom, for how long."""

    pipeline_id: str
    worker_id: str
    from_stage: str
    """The stage documents are claimed from (e.g. ``pending``)."""
    claim_stage: str
    """The stage a claimed document is held in while leased (e.g. ``embedding``)."""
    lease_seconds: int = 0
    """Lease duration; 0: the server's default."""


@dataclass(frozen=True)
class Lease:
    """A granted lease, its expiry as a ``time.monotonic()`` deadline."""

    document_id: str
    fencing_token: int
    expires_at: float
    attempts: int
    chunk_count: int
    trace_parent: str = ""
    """W3C trace context recorded when the document was staged ("": none): spans for the
    document continue that trace."""

    @property
    def ref(self) -> LeaseRef:
        """The lease as a reference."""
        return LeaseRef(self.document_id, self.fencing_token, self.trace_parent)


def monotonic_deadline(stamp: datetime.datetime) -> float:
    """A wall-clock expiry as a ``time.monotonic()`` deadline."""
    now = datetime.datetime.now(datetime.UTC)
    return time.monotonic() + (stamp - now).total_seconds()


@dataclass(frozen=True)
class Transition:
    """TransitionDocuments' answer for one document."""

    document_id: str
    outcome: TransitionOutcome
    fencing_token: int
    """The document's token after the move (0 when it did not move)."""

    @property
    def moved(self) -> bool:
        """True if the document moved."""
        return self.outcome is TransitionOutcome.MOVED


@dataclass(frozen=True)
class WriteResult:
    """WriteVectors' answer for one document."""

    document_id: str
    outcome: WriteOutcome
    vectors_written: int
    error_code: int = 0
    """The ``google.rpc.Code`` of the error (STALE_LEASE and REJECTED); 0 when written."""
    error: str = ""
    """Why the document was not written."""


@dataclass(frozen=True)
class DocumentVectors:
    """All the vectors of one held document, for WriteVectors."""

    lease: HasLease
    vectors: list[document_pb2.Vector]


@dataclass(frozen=True)
class StagedRecord:
    """A document whose chunks the gateway stored (the claimer's RecordStaged)."""

    document_id: str
    content_hash: str = ""
    backing: str = ""
    chunk_count: int = 0
    lease_token: int = 0
    """A lease the stager holds on the document (0: none); staging ends it."""
    trace_parent: str = ""
    """W3C trace context of the staging span ("": none), handed to workers with its leases."""


@dataclass(frozen=True)
class StagedResult:
    """RecordStaged's answer for one document: its new token and the backing it replaced."""

    document_id: str
    fencing_token: int
    previous_backing: str
    """"" for a new document."""
    unchanged: bool = False
