"""Every public RPC, whether the client may repeat it, and its default deadline.

An RPC is **idempotent** when making it twice has the effect of making it
once: reads, watches, heartbeats (extending a held lease again), updates that
set fields, embedding. Only those are retried by the channel (on
``UNAVAILABLE``, ``RESOURCE_EXHAUSTED`` and ``ABORTED``, with exponential
backoff; see :class:`hevlayer.client.options.RetryPolicy`).

The others change state in a way a second attempt would see differently —
a claim grants new leases, a transition or a write is fenced by a token the
first attempt may already have used, a create answers ``ALREADY_EXISTS`` the
second time, a stream of staged documents cannot be replayed — so when their
outcome is unknown (a deadline passed, the connection dropped) the client
never repeats them; the caller sees the error and decides (a worker's lease
expires and the document is claimed again; staging the same content again
with ``skip_unchanged`` is safe). gRPC's own *transparent* retry still
applies to every call: it only resends a call that never reached a server.
"""

from __future__ import annotations

from dataclasses import dataclass

from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.claimer.v1 import document_state_pb2, token_verification_pb2
from hevlayer.api.embedding.v1 import embedding_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.api.summary.v1 import summary_pb2
from hevlayer.common.auth import READER, STAGER, WORKER


def _service(module: object, name: str) -> str:
    descriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    full_name: str = descriptor.services_by_name[name].full_name
    return full_name


PIPELINE_SERVICE = _service(pipeline_pb2, "PipelineService")
STAGING_SERVICE = _service(staging_pb2, "StagingService")
LEASE_SERVICE = _service(lease_pb2, "LeaseService")
INDEX_SERVICE = _service(index_pb2, "IndexService")
EMBEDDING_SERVICE = _service(embedding_pb2, "EmbeddingService")
SUMMARY_SERVICE = _service(summary_pb2, "SummaryService")
TOKEN_SERVICE = _service(auth_pb2, "TokenService")
DOCUMENT_STATE_SERVICE = _service(document_state_pb2, "DocumentStateService")
"""The claimer's internal service (the gateway is its only caller)."""
TOKEN_VERIFICATION_SERVICE = _service(token_verification_pb2, "TokenVerificationService")
"""The claimer's internal token lookup (the gateway is its only caller)."""

UNARY = 30.0
"""Default deadline of a unary call, seconds."""


@dataclass(frozen=True)
class Method:
    """One RPC as the client treats it."""

    service: str
    name: str
    idempotent: bool
    timeout: float | None
    """Default deadline in seconds; None for streams that last as long as the caller wants."""

    @property
    def full_name(self) -> str:
        """``/package.Service/Method``."""
        return f"/{self.service}/{self.name}"


METHODS: tuple[Method, ...] = (
    Method(PIPELINE_SERVICE, "CreatePipeline", False, UNARY),
    Method(PIPELINE_SERVICE, "GetPipeline", True, UNARY),
    Method(PIPELINE_SERVICE, "ListPipelines", True, UNARY),
    Method(PIPELINE_SERVICE, "UpdatePipeline", True, UNARY),
    Method(PIPELINE_SERVICE, "DeletePipeline", False, 120.0),
    Method(PIPELINE_SERVICE, "GetPipelineStatus", True, UNARY),
    Method(PIPELINE_SERVICE, "WatchPipelineStatus", True, None),
    Method(STAGING_SERVICE, "StageDocuments", False, 600.0),
    Method(STAGING_SERVICE, "EnqueueDocuments", False, 600.0),
    Method(STAGING_SERVICE, "ReadChunks", True, 300.0),
    Method(STAGING_SERVICE, "GetDocument", True, UNARY),
    Method(STAGING_SERVICE, "ListDocuments", True, 600.0),
    Method(STAGING_SERVICE, "DeleteDocuments", False, 600.0),
    Method(STAGING_SERVICE, "WatchDocuments", True, None),
    Method(LEASE_SERVICE, "ClaimDocuments", False, UNARY),
    Method(LEASE_SERVICE, "HeartbeatLeases", True, UNARY),
    Method(LEASE_SERVICE, "TransitionDocuments", False, UNARY),
    Method(LEASE_SERVICE, "StreamLeases", False, None),
    Method(INDEX_SERVICE, "WriteVectors", False, 300.0),
    Method(INDEX_SERVICE, "Query", True, 60.0),
    Method(EMBEDDING_SERVICE, "Embed", True, 120.0),
    Method(EMBEDDING_SERVICE, "DescribeModel", True, UNARY),
    Method(SUMMARY_SERVICE, "SubmitJob", False, 600.0),
    Method(SUMMARY_SERVICE, "WatchJob", True, None),
    Method(SUMMARY_SERVICE, "GetSummary", True, UNARY),
    Method(SUMMARY_SERVICE, "CancelJob", True, UNARY),
    Method(TOKEN_SERVICE, "CreateToken", False, UNARY),
    Method(TOKEN_SERVICE, "ListTokens", True, UNARY),
    Method(TOKEN_SERVICE, "RevokeToken", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "RecordStaged", False, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "CheckLeases", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "EnqueueIds", False, 600.0),
    Method(DOCUMENT_STATE_SERVICE, "DescribeDocument", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "ScanDocuments", True, 600.0),
    Method(DOCUMENT_STATE_SERVICE, "ForgetDocuments", False, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "GetContentHashes", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "GetLiveObjects", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "CondemnObjects", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "BindSinkInstance", True, UNARY),
    Method(DOCUMENT_STATE_SERVICE, "WatchChanges", True, None),
    Method(TOKEN_VERIFICATION_SERVICE, "VerifyToken", True, UNARY),
)

BY_NAME: dict[str, Method] = {m.full_name: m for m in METHODS}


def method(service: str, name: str) -> Method:
    """The :class:`Method` of ``service``/``name`` (KeyError if it is not public)."""
    return BY_NAME[f"/{service}/{name}"]


# -- Who may call what ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Who may make one RPC: the roles besides ``admin`` (which may make every call), and
    which request field names the pipeline the call acts on."""

    roles: frozenset[str]
    """Roles allowed besides admin; empty: admin only."""
    pipeline_field: str | None = "pipeline_id"
    """Dotted path of the request field naming the pipeline (``pipeline.id``, ``open.pipeline_id``);
    None: the call names no pipeline (ListPipelines answers only the token's pipelines)."""
    internal: bool = False
    """An internal RPC (claimer): no API token may make it; the caller proves it is the gateway
    (CLAIMER_INTERNAL_TOKEN or, with mutual TLS, its certificate)."""


_READ = frozenset({STAGER, WORKER, READER})
_LEASES = frozenset({STAGER, WORKER})
_INTERNAL = Access(frozenset(), None, internal=True)

ACCESS: dict[str, Access] = {
    f"/{service}/{name}": access
    for service, name, access in (
        (PIPELINE_SERVICE, "CreatePipeline", Access(frozenset(), "pipeline.id")),
        (PIPELINE_SERVICE, "GetPipeline", Access(_READ)),
        (PIPELINE_SERVICE, "ListPipelines", Access(_READ, None)),
        (PIPELINE_SERVICE, "UpdatePipeline", Access(frozenset(), "pipeline.id")),
        (PIPELINE_SERVICE, "DeletePipeline", Access(frozenset())),
        (PIPELINE_SERVICE, "GetPipelineStatus", Access(_READ)),
        (PIPELINE_SERVICE, "WatchPipelineStatus", Access(_READ)),
        (STAGING_SERVICE, "StageDocuments", Access(frozenset({STAGER}))),
        (STAGING_SERVICE, "EnqueueDocuments", Access(frozenset({STAGER}))),
        (STAGING_SERVICE, "ReadChunks", Access(frozenset({WORKER}))),
        (STAGING_SERVICE, "GetDocument", Access(frozenset({STAGER}))),
        (STAGING_SERVICE, "ListDocuments", Access(frozenset({STAGER}))),
        (STAGING_SERVICE, "DeleteDocuments", Access(frozenset({STAGER}))),
        # Like ListDocuments: the Job Lane's success hook (the summarizer) holds a stager token.
        (STAGING_SERVICE, "WatchDocuments", Access(frozenset({STAGER}))),
        # CPU workers of the Object Lane claim ids from their own stage (extract) and stage them.
        (LEASE_SERVICE, "ClaimDocuments", Access(_LEASES)),
        (LEASE_SERVICE, "HeartbeatLeases", Access(_LEASES)),
        (LEASE_SERVICE, "TransitionDocuments", Access(_LEASES)),
        (LEASE_SERVICE, "StreamLeases", Access(_LEASES, "open.pipeline_id")),
        (INDEX_SERVICE, "WriteVectors", Access(frozenset({WORKER}))),
        (INDEX_SERVICE, "Query", Access(frozenset({READER}))),
        (EMBEDDING_SERVICE, "Embed", Access(frozenset({WORKER, READER}), None)),
        (EMBEDDING_SERVICE, "DescribeModel", Access(frozenset({WORKER, READER}), None)),
        (SUMMARY_SERVICE, "SubmitJob", Access(frozenset({STAGER}))),
        (SUMMARY_SERVICE, "WatchJob", Access(frozenset({STAGER, READER}), None)),
        (SUMMARY_SERVICE, "GetSummary", Access(frozenset({STAGER, READER}), None)),
        (SUMMARY_SERVICE, "CancelJob", Access(frozenset({STAGER}), None)),
        (TOKEN_SERVICE, "CreateToken", Access(frozenset(), None)),
        (TOKEN_SERVICE, "ListTokens", Access(frozenset(), None)),
        (TOKEN_SERVICE, "RevokeToken", Access(frozenset(), None)),
        (DOCUMENT_STATE_SERVICE, "RecordStaged", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "CheckLeases", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "EnqueueIds", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "DescribeDocument", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "ScanDocuments", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "ForgetDocuments", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "GetContentHashes", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "GetLiveObjects", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "CondemnObjects", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "BindSinkInstance", _INTERNAL),
        (DOCUMENT_STATE_SERVICE, "WatchChanges", _INTERNAL),
        (TOKEN_VERIFICATION_SERVICE, "VerifyToken", _INTERNAL),
    )
}
"""The role every RPC needs and where its pipeline is: the one table the gateway's
interceptor and REST middleware enforce (docs/security.md prints it). The gateway refuses a
method missing here to every token, admin's included, and tests/client/test_access.py fails
when a method of any service has no entry: a new RPC cannot ship open."""
