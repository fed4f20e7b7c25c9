"""The claimer's Prometheus metrics (on :data:`hevlayer.common.metrics.REGISTRY`).

- ``layer_pipeline_stage_count{pipeline_id,stage}``: documents per stage, the
  KEDA signal. Read from the counter table by a background refresher (one
  small query per interval, never a scan of documents) and served from
  memory at scrape time.
- ``layer_claim_latency_seconds{pipeline_id}``: time of one claim.
- ``layer_claimed_documents_total``, ``layer_claim_retries_total`` (documents
  claimed again, attempts > 1), ``layer_lease_expiries_total`` (expired
  leases taken back or failed), ``layer_poisoned_documents_total`` (both present at 0 from a
  pipeline's first claim) and ``layer_transitions_total{pipeline_id,to_stage,outcome}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hevlayer.claimer.database import Database
from hevlayer.client.enums import TransitionOutcome
from hevlayer.common.errors import ServiceError
from hevlayer.common.metrics import REGISTRY

log = logging.getLogger("hevlayer.claimer.metrics")

CLAIM_LATENCY = Histogram(
    "layer_claim_latency_seconds",
    "Time to claim one batch of documents (transaction included), in seconds.",
    ["pipeline_id"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
CLAIMED = Counter(
    "layer_claimed_documents_total", "Documents leased by claims.", ["pipeline_id"], registry=REGISTRY
)
RETRIES = Counter(
    "layer_claim_retries_total",
    "Documents leased again after an earlier claim since they were staged (attempts > 1).",
    ["pipeline_id"],
    registry=REGISTRY,
)
EXPIRIES = Counter(
    "layer_lease_expiries_total",
    "Expired leases found by claims (taken back, or failed as poison).",
    ["pipeline_id"],
    registry=REGISTRY,
)
POISONED = Counter(
    "layer_poisoned_documents_total",
    "Documents moved to failed because their lease expired max_attempts times.",
    ["pipeline_id"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "layer_transitions_total",
    "Documents of transition requests, by target stage class and outcome.",
    ["pipeline_id", "to_stage", "outcome"],
    registry=REGISTRY,
)


def observe_claim(
    pipeline_id: str, seconds: float, *, claimed: int, retried: int, expired: int, poisoned: int
) -> None:
    """Record one claim that took ``seconds``: documents leased, leased again (attempts > 1),
    taken back after their lease expired, and failed as poison."""
    CLAIM_LATENCY.labels(pipeline_id).observe(seconds)
    if claimed:
        CLAIMED.labels(pipeline_id).inc(claimed)
        if retried:
            RETRIES.labels(pipeline_id).inc(retried)
    # Always touched, so that a pipeline's series exist at 0 from its first claim: an alert on
    # increase() then sees the first expiry (a series born at 1 shows no increase).
    EXPIRIES.labels(pipeline_id).inc(expired)
    POISONED.labels(pipeline_id).inc(poisoned)


def observe_transition(pipeline_id: str, to_stage: str, outcomes: Sequence[TransitionOutcome]) -> None:
    """Record one transition (worker stage names are folded into "stage")."""
    target = to_stage if to_stage in ("pending", "indexed", "failed") else "stage"
    if not outcomes:
        return
    # one kind (all moved) in the common case: a C-level count instead of a tally
    first = outcomes[0]
    uniform = outcomes.count(first) == len(outcomes)
    tally = {first: len(outcomes)} if uniform else Tally(outcomes)
    for outcome, count in tally.items():
        TRANSITIONS.labels(pipeline_id, target, outcome.name.lower()).inc(count)


def observe_segment_lease_transition(pipeline_id: str, to_stage: str, moved: Sequence[int]) -> None:
    """Record a transition of whole segment leases: ids moved, and leases not held."""
    target = to_stage if to_stage in ("pending", "indexed", "failed") else "stage"
    total = sum(moved)
    if total:
        TRANSITIONS.labels(pipeline_id, target, "moved").inc(total)
    not_held = sum(1 for count in moved if not count)
    if not_held:
        TRANSITIONS.labels(pipeline_id, target, "not_held").inc(not_held)


class StageCountCollector(Collector):
    """``layer_pipeline_stage_count`` from a snapshot of the counter table."""

    def __init__(self) -> None:
        self.snapshot: list[tuple[str, str, int]] = []

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "layer_pipeline_stage_count",
            "Documents of a pipeline per stage (lightweight queued ids included), from the "
            "claimer's counters.",
            labels=["pipeline_id", "stage"],
        )
        for pipeline_id, stage, count in self.snapshot:
            family.add_metric([pipeline_id, stage], count)
        yield family

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("layer_pipeline_stage_count", "", labels=["pipeline_id", "stage"])]


STAGE_COUNTS = StageCountCollector()
REGISTRY.register(STAGE_COUNTS)


async def refresh_stage_counts(db: Database) -> None:
    """Read the counter table into the collector."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pipeline_id, stage, count FROM pipeline_stage_counts ORDER BY pipeline_id, stage"
        )
    STAGE_COUNTS.snapshot = [(r[0], r[1], int(r[2])) for r in rows]


class StageCountRefresher:
    """Refreshes the stage counts every ``interval`` seconds while the database is open."""

    def __init__(self, db: Database, interval: float = 2.0) -> None:
        self._db = db
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def loop() -> None:
            while True:
                if self._db.ready:
                    try:
                        await refresh_stage_counts(self._db)
                    except ServiceError as exc:
                        log.debug("stage counts not refreshed: %s", exc)
                    except Exception:
                        log.exception("stage counts refresh failed")
                await asyncio.sleep(self._interval)

        self._task = asyncio.create_task(loop(), name="stage-count-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
