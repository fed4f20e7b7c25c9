"""Prometheus metrics of the summarizer (served on /metrics with the common ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from hevlayer.common.metrics import REGISTRY

DIRECTORIES = Counter(
    "summarizer_directories_total",
    "Directories folded, by outcome (summarized, failed).",
    ["outcome"],
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "summarizer_cache_lookups_total",
    "Transformation cache look-ups, by outcome (hit: stored; joined: shared an in-flight "
    "computation; miss: the provider ran).",
    ["outcome"],
    registry=REGISTRY,
)
CACHE_EVICTIONS = Counter(
    "summarizer_cache_evictions_total",
    "Transformation cache entries evicted to stay under SUMMARIZER_CACHE_MAX_BYTES.",
    registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "summarizer_provider_calls_total",
    "Summary provider calls, by provider model and outcome (ok, error).",
    ["model", "outcome"],
    registry=REGISTRY,
)
GATE_IN_FLIGHT = Gauge(
    "summarizer_gate_in_flight",
    "Provider calls in flight through each process-wide gate.",
    ["gate"],
    registry=REGISTRY,
)
JOBS = Gauge(
    "summarizer_jobs",
    "Jobs held in memory, by state.",
    ["state"],
    registry=REGISTRY,
)
SUMMARIES_SETTLED = Counter(
    "summarizer_summaries_settled_total",
    "Staged summaries the completion tracker saw settle in the embedding tail, by outcome "
    "(indexed: the success hook advanced the job's indexed_directories; failed).",
    ["outcome"],
    registry=REGISTRY,
)
