"""The segmented queue of lightweight ids (``PIPELINE_QUEUE_BACKEND=segment``).

Ids enqueued without chunks are written in segments of
``PIPELINE_SEGMENT_SIZE`` ids to zstd manifests in S3
(:mod:`hevlayer.claimer.manifests`); PostgreSQL holds one ``queue_segments``
row per segment with its stage, lease, fencing token and counters. A segment
counts its ``remaining`` ids in its stage (maintained by triggers).

- A claim leases whole segments, or splits the first one that is larger than
  what the claim still wants: the two halves are written as new manifests
  and the superseded one is deleted after the commit.
- Every id of a leased segment is leased with the segment's fencing token;
  tokens come from the same sequence as document tokens, so a token finds
  its segment.
- A transition marks the moved positions in the segment's ``done`` bitmap;
  ids moved to ``indexed`` only bump the counter; to ``failed`` they become
  document rows carrying the reason; to ``pending`` or another worker stage
  they become a new queued segment. A segment with nothing remaining is
  deleted with its manifest.
- An expired segment is taken back by the next claim into its stage (its
  remaining ids only); past the pipeline's ``max_attempts`` its remaining ids
  go to ``failed`` instead.

The queue is four modules, each one concern, composed by :class:`SegmentQueue`:

- :mod:`hevlayer.claimer.segment_rows`: segment rows and manifests (shared);
- :mod:`hevlayer.claimer.segment_claims`: enqueue and claim (the claim half);
- :mod:`hevlayer.claimer.segment_transitions`: held leases, transitions, staging of leased ids
  (the transition half);
- :mod:`hevlayer.claimer.segment_garbage`: deleting manifests no row needs (the transactions'
  cleanup hooks and the sweeper).

Claims and transitions work inside the caller's transaction (see :mod:`hevlayer.claimer.txn`).
"""

from __future__ import annotations

from hevlayer.claimer.database import Database
from hevlayer.claimer.manifests import ManifestCache, ObjectStore
from hevlayer.claimer.segment_claims import SegmentClaims
from hevlayer.claimer.segment_garbage import DEFAULT_ORPHAN_AGE_SECONDS, ManifestGarbage
from hevlayer.claimer.segment_rows import SegmentRows
from hevlayer.claimer.segment_transitions import SegmentTransitions
from hevlayer.common.errors import FailedPrecondition


class SegmentQueue:
    """The segmented queue of one claimer: its claim and transition halves over shared rows."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        cache: ManifestCache,
        segment_size: int,
        *,
        orphan_age_seconds: float = DEFAULT_ORPHAN_AGE_SECONDS,
    ) -> None:
        self.rows = SegmentRows(db, cache, segment_size)
        self.garbage = ManifestGarbage(db, store, cache, orphan_age_seconds=orphan_age_seconds)
        """The cleanup hooks every transaction that may write manifests passes to
        :func:`hevlayer.claimer.txn.run`; and the sweeper."""
        self.claims = SegmentClaims(self.rows, self.garbage)
        self.transitions = SegmentTransitions(self.rows)

    @property
    def segment_size(self) -> int:
        """Ids per segment written by an enqueue (``PIPELINE_SEGMENT_SIZE``)."""
        return self.rows.segment_size


def cleanup_of(segments: SegmentQueue | None) -> ManifestGarbage | None:
    """The cleanup hooks of a store's transactions: the queue's, or none without one."""
    return segments.garbage if segments is not None else None


def require_segments(segments: SegmentQueue | None) -> SegmentQueue:
    """The segment queue, or FAILED_PRECONDITION when S3 is not configured."""
    if segments is None:
        raise FailedPrecondition(
            "the segmented queue needs S3 (S3_BUCKET); this pipeline's queue_backend is segment",
            reason="SEGMENTS_NOT_CONFIGURED",
        )
    return segments
