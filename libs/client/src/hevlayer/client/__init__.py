"""Typed client of the hevlayer v1 API: async first (:class:`Client`), blocking on top (:class:`SyncClient`).

>>> async with Client.connect("127.0.0.1:50051") as client:
...     await client.pipelines.create(Pipeline(id="docs"))
...     results = await client.staging.stage("docs", documents)
...     hits = await client.index.query("docs", "how do I rotate a key?", top_k=5)

Errors are :class:`ServiceError` subclasses that keep the server's rich status
(field violations, ``RetryInfo``); :mod:`hevlayer.client.methods` says which
calls the channel retries and why the others are never repeated blindly;
:class:`ClientOptions` holds deadlines, retries, keepalive, message sizes,
TLS and credentials.
"""

from hevlayer.api.document.v1.document_pb2 import Chunk, Document, Vector
from hevlayer.api.pipeline.v1.pipeline_pb2 import Pipeline
from hevlayer.client.channel import open_channel
from hevlayer.client.client import DEFAULT_GATEWAY, Client
from hevlayer.client.embedding import EmbeddingClient
from hevlayer.client.enums import (
    DistanceMetric,
    InputType,
    JobState,
    LeaseLayout,
    QueueBackend,
    Sink,
    StageOutcome,
    TransitionOutcome,
    WriteOutcome,
)
from hevlayer.client.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Violation,
    is_definite_failure,
    is_transient,
)
from hevlayer.client.index import IndexClient
from hevlayer.client.leases import LeasesClient
from hevlayer.client.options import TLS, ClientOptions, RetryPolicy
from hevlayer.client.pipelines import PipelinesClient
from hevlayer.client.staging import StagingClient
from hevlayer.client.summaries import SummariesClient
from hevlayer.client.sync import SyncClient
from hevlayer.client.tokens import TokensClient
from hevlayer.client.types import (
    Claim,
    DocumentVectors,
    HasLease,
    Lease,
    LeaseRef,
    StagedRecord,
    StagedResult,
    Transition,
    WriteResult,
)

__all__ = [
    "DEFAULT_GATEWAY",
    "TLS",
    "AlreadyExists",
    "Chunk",
    "Claim",
    "Client",
    "ClientOptions",
    "DistanceMetric",
    "Document",
    "DocumentVectors",
    "EmbeddingClient",
    "FailedPrecondition",
    "HasLease",
    "IndexClient",
    "InputType",
    "Internal",
    "InvalidArgument",
    "JobState",
    "Lease",
    "LeaseLayout",
    "LeaseRef",
    "LeasesClient",
    "NotFound",
    "PermissionDenied",
    "Pipeline",
    "PipelinesClient",
    "QueueBackend",
    "RetryPolicy",
    "ServiceError",
    "Sink",
    "StageOutcome",
    "StagedRecord",
    "StagedResult",
    "StagingClient",
    "SummariesClient",
    "SyncClient",
    "TokensClient",
    "Transition",
    "TransitionOutcome",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Vector",
    "Violation",
    "WriteOutcome",
    "WriteResult",
    "is_definite_failure",
    "is_transient",
    "open_channel",
]
