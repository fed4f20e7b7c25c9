"""The API's enums as Python ``IntEnum`` classes whose values are the generated constants.

Compare with these names (``TransitionOutcome.NOT_FOUND``), never with numbers.
Each member's value is the generated module's constant of the same name with
the enum's prefix (``lease_pb2.TRANSITION_OUTCOME_NOT_FOUND``), so a message's
enum field converts with ``TransitionOutcome(message.outcome)``; tests check that
every proto value has a member.
"""

from __future__ import annotations

from enum import IntEnum

from hevlayer.api.embedding.v1 import embedding_pb2
from hevlayer.api.index.v1 import index_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.api.summary.v1 import summary_pb2


class TransitionOutcome(IntEnum):
    """What happened to one document of TransitionDocuments."""

    UNSPECIFIED = lease_pb2.TRANSITION_OUTCOME_UNSPECIFIED
    MOVED = lease_pb2.TRANSITION_OUTCOME_MOVED
    NOT_HELD = lease_pb2.TRANSITION_OUTCOME_NOT_HELD
    NOT_FOUND = lease_pb2.TRANSITION_OUTCOME_NOT_FOUND


class LeaseLayout(IntEnum):
    """How a batch of leases travels: one message per lease, or parallel columns."""

    UNSPECIFIED = lease_pb2.LEASE_LAYOUT_UNSPECIFIED
    COLUMNS = lease_pb2.LEASE_LAYOUT_COLUMNS


class WriteOutcome(IntEnum):
    """What happened to one document of WriteVectors."""

    UNSPECIFIED = index_pb2.WRITE_OUTCOME_UNSPECIFIED
    INDEXED = index_pb2.WRITE_OUTCOME_INDEXED
    STALE_LEASE = index_pb2.WRITE_OUTCOME_STALE_LEASE
    REJECTED = index_pb2.WRITE_OUTCOME_REJECTED


class StageOutcome(IntEnum):
    """What happened to one document of StageDocuments."""

    UNSPECIFIED = staging_pb2.STAGE_OUTCOME_UNSPECIFIED
    STAGED = staging_pb2.STAGE_OUTCOME_STAGED
    UNCHANGED = staging_pb2.STAGE_OUTCOME_UNCHANGED
    REJECTED = staging_pb2.STAGE_OUTCOME_REJECTED


class DistanceMetric(IntEnum):
    """How a pipeline's index compares vectors."""

    UNSPECIFIED = pipeline_pb2.DISTANCE_METRIC_UNSPECIFIED
    COSINE_DISTANCE = pipeline_pb2.DISTANCE_METRIC_COSINE_DISTANCE
    EUCLIDEAN_SQUARED = pipeline_pb2.DISTANCE_METRIC_EUCLIDEAN_SQUARED


class QueueBackend(IntEnum):
    """Where a pipeline queues lightweight ids."""

    UNSPECIFIED = pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED
    SEGMENT = pipeline_pb2.QUEUE_BACKEND_SEGMENT
    ROW = pipeline_pb2.QUEUE_BACKEND_ROW


class Sink(IntEnum):
    """The vector index a pipeline writes to."""

    UNSPECIFIED = pipeline_pb2.SINK_UNSPECIFIED
    MILVUS_LITE = pipeline_pb2.SINK_MILVUS_LITE
    MILVUS = pipeline_pb2.SINK_MILVUS
    TURBOPUFFER = pipeline_pb2.SINK_TURBOPUFFER


class JobState(IntEnum):
    """The state of a summary job."""

    UNSPECIFIED = summary_pb2.JOB_STATE_UNSPECIFIED
    ENUMERATING = summary_pb2.JOB_STATE_ENUMERATING
    RUNNING = summary_pb2.JOB_STATE_RUNNING
    SUCCEEDED = summary_pb2.JOB_STATE_SUCCEEDED
    FAILED = summary_pb2.JOB_STATE_FAILED
    CANCELLED = summary_pb2.JOB_STATE_CANCELLED


class InputType(IntEnum):
    """What a text to embed is."""

    UNSPECIFIED = embedding_pb2.INPUT_TYPE_UNSPECIFIED
    DOCUMENT = embedding_pb2.INPUT_TYPE_DOCUMENT
    QUERY = embedding_pb2.INPUT_TYPE_QUERY
