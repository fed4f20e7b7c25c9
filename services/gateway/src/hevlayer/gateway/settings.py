"""Settings of the gateway (environment variables)."""

from __future__ import annotations

from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting, split_address
from hevlayer.gateway.ratelimit import parse_rates

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50051",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:8080",
}

CACHE_BACKENDS = ("disk", "redis", "aerospike", "none")
PACK_COMPRESSIONS = ("zstd", "none")


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway needs beyond the common server settings."""

    claimer_address: str = setting(
        "CLAIMER_ADDRESS", "host:port of the claimer's gRPC server.", "127.0.0.1:50052"
    )
    forward_timeout_seconds: float = setting(
        "GATEWAY_FORWARD_TIMEOUT_SECONDS",
        "Deadline of a unary call forwarded to the claimer when the caller set none.",
        30.0,
    )
    embedder_address: str = setting(
        "EMBEDDER_ADDRESS",
        "host:port of the embedding service, used by Query with text. Empty: text queries fail "
        "FAILED_PRECONDITION; vector queries work.",
        "",
    )
    write_max_document_bytes: int = setting(
        "GATEWAY_WRITE_MAX_DOCUMENT_BYTES",
        "Most bytes of one document's WriteVectors messages the gateway holds (a document is "
        "written atomically, so it is held whole until its last message); a larger document is "
        "rejected (INVALID_ARGUMENT, reason DOCUMENT_TOO_LARGE) and nothing of it is written.",
        32 * 1024 * 1024,
    )
    write_buffer_bytes: int = setting(
        "GATEWAY_WRITE_BUFFER_BYTES",
        "Bytes of complete documents a WriteVectors stream gathers before they are written to "
        "the sink as one batch (at most 500 documents or 5000 vectors a batch in any case).",
        8 * 1024 * 1024,
    )
    auth: str = setting(
        "GATEWAY_AUTH",
        "on: every gRPC call and REST route (but health, /metrics, /v2/metrics, /v2/openapi.json) needs "
        "an API token (authorization: Bearer). off: anyone who reaches the gateway may do anything "
        "(unsafe; docs/security.md).",
        "on",
    )
    auth_cache_seconds: float = setting(
        "GATEWAY_AUTH_CACHE_SECONDS",
        "How long a verified (or unknown) token is remembered: a revoked token stops working within "
        "this time.",
        5.0,
    )
    rate_limits: str = setting(
        "GATEWAY_RATE_LIMITS",
        "Per-token rate limits by role, per gateway replica: comma-separated role=rate:burst (calls per "
        "second, calls at once; a stream counts once, at its start), e.g. reader=50:100. A role not "
        "named gets 10000:20000; rate 0: no limit. Over it: RESOURCE_EXHAUSTED (reason RATE_LIMITED, "
        "RetryInfo) / 429 with Retry-After. Only with GATEWAY_AUTH=on.",
        "",
    )
    internal_token: str = setting(
        "CLAIMER_INTERNAL_TOKEN",
        "Shared secret sent to the claimer on every call (the claimer's CLAIMER_INTERNAL_TOKEN).",
        "",
        secret=True,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.auth not in ("on", "off"):
            raise ConfigError(f"GATEWAY_AUTH: expected on or off, got {self.auth!r}")
        if not 0 <= self.auth_cache_seconds <= 300:
            raise ConfigError("GATEWAY_AUTH_CACHE_SECONDS: must be between 0 and 300")
        parse_rates(self.rate_limits)
        split_address(self.claimer_address, "CLAIMER_ADDRESS")
        if self.embedder_address:
            split_address(self.embedder_address, "EMBEDDER_ADDRESS")
        if self.forward_timeout_seconds <= 0:
            raise ConfigError("GATEWAY_FORWARD_TIMEOUT_SECONDS: must be > 0")
        if self.write_max_document_bytes < 4096:
            raise ConfigError("GATEWAY_WRITE_MAX_DOCUMENT_BYTES: must be >= 4096")
        if self.write_buffer_bytes < 4096:
            raise ConfigError("GATEWAY_WRITE_BUFFER_BYTES: must be >= 4096")


@dataclass(frozen=True)
class S3Settings:
    """Where the gateway stores chunk packs (the same variables the claimer reads)."""

    endpoint_url: str = setting(
        "S3_ENDPOINT_URL", "S3 endpoint, e.g. http://127.0.0.1:8333. Empty: AWS's default endpoint.", ""
    )
    access_key_id: str = setting(
        "S3_ACCESS_KEY_ID", "S3 access key. Empty: botocore's default credential chain.", ""
    )
    secret_access_key: str = setting("S3_SECRET_ACCESS_KEY", "S3 secret key.", "", secret=True)
    region: str = setting("S3_REGION", "S3 region.", "us-east-1")
    bucket: str = setting(
        "S3_BUCKET", "Bucket of chunk packs (and the claimer's queue manifests).", "hevlayer"
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if not self.bucket:
            raise ConfigError("S3_BUCKET: must not be empty")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError("S3_ENDPOINT_URL: expected an http:// or https:// URL")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError(
                "S3_SECRET_ACCESS_KEY: set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither"
            )


@dataclass(frozen=True)
class StagingSettings:
    """Limits and packing of staged documents."""

    max_chunk_text_bytes: int = setting(
        "GATEWAY_MAX_CHUNK_TEXT_BYTES", "Largest chunk text (UTF-8 bytes) StageDocuments accepts.", 65536
    )
    max_chunk_metadata_bytes: int = setting(
        "GATEWAY_MAX_CHUNK_METADATA_BYTES",
        "Largest chunk metadata (bytes once serialized as JSON); also bounds vector attributes.",
        16384,
    )
    max_chunk_id_bytes: int = setting("GATEWAY_MAX_CHUNK_ID_BYTES", "Longest chunk id (UTF-8 bytes).", 512)
    max_chunks_per_document: int = setting(
        "GATEWAY_MAX_CHUNKS_PER_DOCUMENT", "Most chunks (or vectors) one document may have.", 10000
    )
    pack_compression: str = setting(
        "GATEWAY_PACK_COMPRESSION",
        "Compression of each document's segment in a chunk pack: zstd or none (reads accept both).",
        "zstd",
    )
    pack_max_bytes: int = setting(
        "GATEWAY_PACK_MAX_BYTES",
        "A pack object is closed once it holds this many bytes (a larger document gets a pack alone).",
        16 * 1024 * 1024,
    )
    pack_max_documents: int = setting(
        "GATEWAY_PACK_MAX_DOCUMENTS", "Most documents in one pack object (and one RecordStaged call).", 1000
    )
    flushes_per_pipeline: int = setting(
        "GATEWAY_PACK_FLUSHES_PER_PIPELINE",
        "Pack writes in flight per pipeline; documents arriving meanwhile are grouped into the next pack.",
        4,
    )
    orphan_retry_seconds: float = setting(
        "GATEWAY_ORPHAN_RETRY_SECONDS",
        "Interval between checks of pack objects whose RecordStaged outcome was unknown "
        "(deleted once the claimer confirms no document points into them).",
        30.0,
    )
    pack_sweep_seconds: float = setting(
        "GATEWAY_PACK_SWEEP_SECONDS",
        "Interval of the sweep that deletes pack objects older than GATEWAY_PACK_ORPHAN_AGE_SECONDS that no "
        "live document points into (left by a gateway that died between writing a pack and recording it). "
        "0 disables it.",
        3600.0,
    )
    pack_orphan_age_seconds: float = setting(
        "GATEWAY_PACK_ORPHAN_AGE_SECONDS",
        "How old (by the time in its key) a pack must be before the sweep may delete it. Safety does not "
        "depend on it (the claimer refuses to record a pack the sweep condemned, and that staging is "
        "written again); longer than any staging call, it spares in-flight stagings that rewrite.",
        3600.0,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        for env, value in (
            ("GATEWAY_MAX_CHUNK_TEXT_BYTES", self.max_chunk_text_bytes),
            ("GATEWAY_MAX_CHUNK_METADATA_BYTES", self.max_chunk_metadata_bytes),
            ("GATEWAY_MAX_CHUNK_ID_BYTES", self.max_chunk_id_bytes),
            ("GATEWAY_MAX_CHUNKS_PER_DOCUMENT", self.max_chunks_per_document),
            ("GATEWAY_PACK_MAX_BYTES", self.pack_max_bytes),
            ("GATEWAY_PACK_MAX_DOCUMENTS", self.pack_max_documents),
            ("GATEWAY_PACK_FLUSHES_PER_PIPELINE", self.flushes_per_pipeline),
        ):
            if value < 1:
                raise ConfigError(f"{env}: must be >= 1")
        if self.pack_compression not in PACK_COMPRESSIONS:
            raise ConfigError(f"GATEWAY_PACK_COMPRESSION: expected one of {', '.join(PACK_COMPRESSIONS)}")
        if self.orphan_retry_seconds <= 0:
            raise ConfigError("GATEWAY_ORPHAN_RETRY_SECONDS: must be > 0")
        if self.pack_sweep_seconds < 0:
            raise ConfigError("GATEWAY_PACK_SWEEP_SECONDS: must be >= 0 (0 disables the sweep)")
        if self.pack_orphan_age_seconds < 0:
            raise ConfigError("GATEWAY_PACK_ORPHAN_AGE_SECONDS: must be >= 0")


@dataclass(frozen=True)
class CacheSettings:
    """The chunk cache in front of S3."""

    backend: str = setting("GATEWAY_CACHE_BACKEND", "Chunk cache: disk, redis, aerospike or none.", "disk")
    directory: str = setting(
        "GATEWAY_CACHE_DIR", "Directory of the disk cache. Empty: a temporary directory.", ""
    )
    max_bytes: int = setting(
        "GATEWAY_CACHE_MAX_BYTES",
        "Size cap of the disk cache (least recently used entries go first).",
        1 << 30,
    )
    ttl_seconds: int = setting(
        "GATEWAY_CACHE_TTL_SECONDS", "Lifetime of a cache entry in Redis and Aerospike.", 7 * 86400
    )
    timeout_seconds: float = setting(
        "GATEWAY_CACHE_TIMEOUT_SECONDS",
        "A cache call slower than this counts as a failure and the read goes to S3.",
        0.5,
    )
    redis_url: str = setting(
        "GATEWAY_REDIS_URL", "Redis URL of the redis backend.", "redis://127.0.0.1:6379/0"
    )
    aerospike_hosts: str = setting(
        "GATEWAY_AEROSPIKE_HOSTS",
        "Aerospike seed hosts of the aerospike backend: host:port[,host:port].",
        "127.0.0.1:3000",
    )
    aerospike_namespace: str = setting(
        "GATEWAY_AEROSPIKE_NAMESPACE",
        "Aerospike namespace of the aerospike backend (records go to set pipe_{target_namespace}).",
        "hevlayer",
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.backend not in CACHE_BACKENDS:
            raise ConfigError(f"GATEWAY_CACHE_BACKEND: expected one of {', '.join(CACHE_BACKENDS)}")
        if self.max_bytes < 1:
            raise ConfigError("GATEWAY_CACHE_MAX_BYTES: must be >= 1")
        if self.ttl_seconds < 1:
            raise ConfigError("GATEWAY_CACHE_TTL_SECONDS: must be >= 1")
        if self.timeout_seconds <= 0:
            raise ConfigError("GATEWAY_CACHE_TIMEOUT_SECONDS: must be > 0")
        if self.backend == "redis" and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("GATEWAY_REDIS_URL: expected a redis://, rediss:// or unix:// URL")
        if self.backend == "aerospike":
            for host in self.aerospike_hosts.split(","):
                split_address(host.strip(), "GATEWAY_AEROSPIKE_HOSTS")
            if not self.aerospike_namespace:
                raise ConfigError("GATEWAY_AEROSPIKE_NAMESPACE: must not be empty")
