"""Prometheus metrics of the worker loop (served on the embedder's ``/metrics``).

The stage timings answer "where does the time go": ``read`` (ReadChunks
streams, including time blocked on the full chunk queue), ``embed`` (one
flush: the Triton call), ``write`` (one WriteVectors call: lease checks,
delete-then-upsert, transition to indexed), ``transition`` (releases and
failures). ``embed_busy_seconds_total`` is the time with at least one
flush in flight (wall time minus it: Triton waited for the worker);
``slot_wait_seconds_total`` the time a ready batch waited for a free flush
slot (the worker waited for Triton).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from hevlayer.common.metrics import REGISTRY

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

STAGE_SECONDS = Histogram(
    "hevlayer_embedder_worker_stage_seconds",
    "Duration of one worker operation, by stage (read, embed, write, transition, heartbeat).",
    ["stage"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
FLUSHES = Counter(
    "hevlayer_embedder_worker_flushes_total",
    "Embedding flushes, by trigger (full: the batch size was reached; idle: no chunk arrived for "
    "EMBEDDER_WORKER_FLUSH_IDLE_SECONDS).",
    ["trigger"],
    registry=REGISTRY,
)
FLUSH_CHUNKS = Histogram(
    "hevlayer_embedder_worker_flush_chunks",
    "Chunks per embedding flush.",
    buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256, 512, 1024),
    registry=REGISTRY,
)
CHUNKS_EMBEDDED = Counter(
    "hevlayer_embedder_worker_chunks_embedded_total", "Chunks embedded by the worker.", registry=REGISTRY
)
FLUSH_RETRIES = Counter(
    "hevlayer_embedder_worker_flush_retries_total",
    "Flush attempts repeated after UNAVAILABLE, by step (embed, write).",
    ["step"],
    registry=REGISTRY,
)
DOCUMENTS = Counter(
    "hevlayer_embedder_worker_documents_total",
    "Documents finished by the worker, by outcome (indexed, lost, released, failed).",
    ["outcome"],
    registry=REGISTRY,
)
LEASES = Counter(
    "hevlayer_embedder_worker_leases_total",
    "Leases received from StreamLeases or ClaimDocuments.",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "hevlayer_embedder_worker_documents_in_flight", "Documents held by the worker now.", registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    "hevlayer_embedder_worker_chunk_queue_depth", "Items in the chunk queue now.", registry=REGISTRY
)
QUEUE_CAPACITY = Gauge(
    "hevlayer_embedder_worker_chunk_queue_capacity", "maxsize of the chunk queue.", registry=REGISTRY
)
EMBED_BUSY = Counter(
    "hevlayer_embedder_worker_embed_busy_seconds_total",
    "Seconds with at least one embedding flush in flight (the rest of the time Triton waited for the "
    "worker).",
    registry=REGISTRY,
)
SLOT_WAIT = Counter(
    "hevlayer_embedder_worker_slot_wait_seconds_total",
    "Seconds a ready batch waited for a free flush slot (the worker waiting for Triton).",
    registry=REGISTRY,
)
LAST_EMBEDDED = Gauge(
    "hevlayer_embedder_worker_last_embedded_timestamp_seconds",
    "Unix time at which the last flush finished embedding.",
    registry=REGISTRY,
)
FLUSHES_IN_FLIGHT = Gauge(
    "hevlayer_embedder_worker_flushes_in_flight", "Embedding flushes running now.", registry=REGISTRY
)
