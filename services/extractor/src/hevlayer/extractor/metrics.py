"""Prometheus metrics of the extract worker (served on its ``/metrics``).

- ``hevlayer_extractor_objects_total{kind, outcome}``: objects read, by outcome: ``extracted``
  (chunks made or taken from the Artifact Cache), ``failed`` (unreadable, unsupported, a
  producer error), ``missing`` (gone from its source: the document is deleted);
- ``hevlayer_extractor_documents_total{outcome}``: claimed documents done with: ``staged``,
  ``failed``, ``deleted``;
- ``hevlayer_extractor_bytes_read_total``: bytes read from sources;
- ``hevlayer_extractor_conversions_total{kind}`` and ``hevlayer_extractor_conversion_seconds{kind}``:
  producer runs and their duration (a cache hit is no conversion);
- ``hevlayer_extractor_artifact_cache_total{event}``: Artifact Cache ``hit``, ``miss``, ``put``,
  ``eviction``, ``error``;
- ``hevlayer_extractor_documents_in_flight``: documents claimed and not yet done with.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from hevlayer.common.metrics import REGISTRY
from hevlayer.ingest.extract_loop import Extraction, ExtractObserver

OBJECTS = Counter(
    "hevlayer_extractor_objects_total",
    "Objects read by the extract worker, by kind and outcome (extracted, failed, missing).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
DOCUMENTS = Counter(
    "hevlayer_extractor_documents_total",
    "Claimed documents done with, by outcome (staged, failed, deleted).",
    ["outcome"],
    registry=REGISTRY,
)
BYTES_READ = Counter(
    "hevlayer_extractor_bytes_read_total", "Bytes read from object sources.", registry=REGISTRY
)
CONVERSIONS = Counter(
    "hevlayer_extractor_conversions_total",
    "Producer runs, by kind (an Artifact Cache hit is no conversion).",
    ["kind"],
    registry=REGISTRY,
)
CONVERSION_SECONDS = Histogram(
    "hevlayer_extractor_conversion_seconds",
    "Duration of one producer run, by kind.",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
ARTIFACT_CACHE = Counter(
    "hevlayer_extractor_artifact_cache_total",
    "Artifact Cache events (hit, miss, put, eviction, error).",
    ["event"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "hevlayer_extractor_documents_in_flight",
    "Documents claimed and not yet staged, failed, deleted or handed back.",
    registry=REGISTRY,
)


def cache_event(event: str, count: int) -> None:
    """The Artifact Cache's observer."""
    ARTIFACT_CACHE.labels(event).inc(count)


class MetricsObserver(ExtractObserver):
    """The extract loops' events, as the counters above."""

    def claimed(self, pipeline_id: str, count: int) -> None:
        IN_FLIGHT.inc(count)

    def finished(self, pipeline_id: str, count: int) -> None:
        IN_FLIGHT.dec(count)

    def extracted(self, pipeline_id: str, extraction: Extraction) -> None:
        kind = extraction.kind or "unknown"
        if extraction.missing:
            OBJECTS.labels(kind, "missing").inc()
            return
        BYTES_READ.inc(extraction.size)
        OBJECTS.labels(kind, "extracted" if extraction.document is not None else "failed").inc()
        if extraction.converted:
            CONVERSIONS.labels(kind).inc()
            CONVERSION_SECONDS.labels(kind).observe(extraction.seconds)

    def staged(self, pipeline_id: str, document_id: str, chunks: int) -> None:
        DOCUMENTS.labels("staged").inc()

    def failed(self, pipeline_id: str, document_id: str, reason: str) -> None:
        DOCUMENTS.labels("failed").inc()

    def deleted(self, pipeline_id: str, count: int) -> None:
        DOCUMENTS.labels("deleted").inc(count)
