"""The gateway's Prometheus metrics, all in one place.

Every metric the gateway exports is defined here, on the process-wide registry of
:mod:`hevlayer.common.metrics` (which also holds the gRPC server metrics); ``GET /metrics``
serves them. The modules that count import what they count from here. Names and labels are
a contract: docs/operations.md, the Grafana dashboards and the Prometheus rules under
deploy/ refer to them, so rename nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from hevlayer.common.metrics import REGISTRY

# -- staging (hevlayer.gateway.staging) ---------------------------------------------------------

STAGED_DOCUMENTS = Counter(
    "hevlayer_gateway_staged_documents_total",
    "Documents handled by StageDocuments, by outcome (staged, unchanged, rejected, failed).",
    ["outcome"],
    registry=REGISTRY,
)
STAGED_CHUNKS = Counter(
    "hevlayer_gateway_staged_chunks_total", "Chunks stored by StageDocuments.", registry=REGISTRY
)
PACK_DOCUMENTS = Histogram(
    "hevlayer_gateway_pack_documents",
    "Documents per pack object (one group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
    registry=REGISTRY,
)
ORPHANS = Counter(
    "hevlayer_gateway_pack_cleanup_total",
    "Pack objects deleted because no document points into them, by cause: released (the claimer "
    "said so), failed (RecordStaged rejected the batch), unchanged (every document was unchanged), "
    "unknown (checked after an ambiguous failure), swept (old packs no live document points into, "
    "found by the periodic sweep); and 'kept' when a check found them in use; 'rewritten' counts "
    "packs written again because another gateway's sweep condemned them before they were recorded.",
    ["cause"],
    registry=REGISTRY,
)
READ_CHUNKS = Counter(
    "hevlayer_gateway_read_chunks_total",
    "Chunks served by ReadChunks and the REST chunks route.",
    registry=REGISTRY,
)

# -- the chunk store (hevlayer.gateway.chunkstore) ----------------------------------------------

S3_REQUESTS = Counter(
    "hevlayer_gateway_s3_requests_total",
    "S3 requests made by the gateway's chunk store, by operation.",
    ["operation"],
    registry=REGISTRY,
)
S3_BYTES = Counter(
    "hevlayer_gateway_s3_bytes_total",
    "Bytes written to (put) and read from (get) S3 by the chunk store.",
    ["direction"],
    registry=REGISTRY,
)

# -- the chunk cache (hevlayer.gateway.cache) ---------------------------------------------------

CACHE_LOOKUPS = Counter(
    "hevlayer_gateway_chunk_cache_lookups_total",
    "Chunk cache lookups (one per document segment), by result: hit, miss, error (the backend "
    "failed or timed out) or skipped (the backend is marked down).",
    ["backend", "result"],
    registry=REGISTRY,
)
CACHE_HIT_RATIO = Gauge(
    "hevlayer_gateway_chunk_cache_hit_ratio",
    "Hits / lookups of the chunk cache since the gateway started (errors and skips count as misses).",
    ["backend"],
    registry=REGISTRY,
)
CACHE_FAILURES = Counter(
    "hevlayer_gateway_chunk_cache_failures_total",
    "Failed or timed-out chunk cache calls, by operation.",
    ["backend", "operation"],
    registry=REGISTRY,
)
CACHE_WRITES = Counter(
    "hevlayer_gateway_chunk_cache_writes_total",
    "Segments written to the chunk cache, by result: stored, dropped (too many writes pending) or failed.",
    ["backend", "result"],
    registry=REGISTRY,
)
CACHE_UP = Gauge(
    "hevlayer_gateway_chunk_cache_up",
    "1 while the chunk cache backend answers, 0 while it is skipped after failures.",
    ["backend"],
    registry=REGISTRY,
)

# -- vectors and queries (hevlayer.gateway.indexing) --------------------------------------------

WRITTEN_VECTORS = Counter(
    "hevlayer_gateway_written_vectors_total", "Vectors written to sinks by WriteVectors.", registry=REGISTRY
)
WRITTEN_DOCUMENTS = Counter(
    "hevlayer_gateway_written_documents_total",
    "Documents handled by WriteVectors, by outcome (indexed, stale_lease, rejected).",
    ["outcome"],
    registry=REGISTRY,
)
QUERIES = Counter(
    "hevlayer_gateway_queries_total", "Queries answered, by kind (text, vector).", ["kind"], registry=REGISTRY
)
SINK_OPERATIONS = ("open", "describe", "write", "delete", "query", "drop")
"""The ``operation`` label values of :data:`SINK_ERRORS` (each exported at 0 from the start)."""
SINK_ERRORS = Counter(
    "hevlayer_gateway_sink_errors_total",
    "Failed sink calls, by sink kind and operation (open, describe, write, delete, query, drop); sink "
    "refusals of invalid input (INVALID_ARGUMENT) are not counted.",
    ["sink", "operation"],
    registry=REGISTRY,
)

# -- rate limits (hevlayer.gateway.ratelimit) ---------------------------------------------------

RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Calls refused because their API token was over its rate limit (GATEWAY_RATE_LIMITS), by the "
    "token's role and the transport (grpc, rest).",
    ["role", "transport"],
    registry=REGISTRY,
)
