"""Settings of the claimer (environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50052",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:9102",
}

ALLOWED_CLIENTS = "gateway"
"""The client identity the claimer accepts under mutual TLS (unless HEVLAYER_TLS_ALLOWED_CLIENTS is set)."""


def server_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The claimer's defaults for the common server settings: loopback addresses and, once
    ``HEVLAYER_TLS_CLIENT_CA`` turns mutual TLS on, only the gateway's certificate accepted."""
    env = os.environ if environ is None else environ
    defaults = dict(GRPC_DEFAULTS)
    if env.get("HEVLAYER_TLS_CLIENT_CA"):
        defaults["HEVLAYER_TLS_ALLOWED_CLIENTS"] = ALLOWED_CLIENTS
    return defaults


QUEUE_BACKENDS = ("segment", "row")
SINKS = ("milvus_lite", "milvus", "turbopuffer")


@dataclass(frozen=True)
class ClaimerSettings:
    """What the claimer needs beyond the common server settings."""

    database_url: str = setting(
        "DATABASE_URL",
        "PostgreSQL DSN, e.g. postgres://hevlayer:hevlayer@localhost:5432/hevlayer.",
        secret=True,
    )
    pool_min_size: int = setting("CLAIMER_DB_POOL_MIN", "Minimum PostgreSQL connections.", 2)
    pool_max_size: int = setting("CLAIMER_DB_POOL_MAX", "Maximum PostgreSQL connections.", 16)
    db_timeout_seconds: float = setting(
        "CLAIMER_DB_TIMEOUT_SECONDS",
        "Timeout of one PostgreSQL connection attempt or statement; past it calls fail UNAVAILABLE.",
        10.0,
    )
    default_queue_backend: str = setting(
        "PIPELINE_QUEUE_BACKEND",
        "Queue of lightweight ids for new pipelines: segment (S3 manifests) or row.",
        "segment",
    )
    default_sink: str = setting(
        "PIPELINE_DEFAULT_SINK",
        "Index of new pipelines that name none: milvus_lite, milvus or turbopuffer.",
        "milvus_lite",
    )
    default_max_attempts: int = setting(
        "PIPELINE_DEFAULT_MAX_ATTEMPTS",
        "Lease expiries after which a document goes to failed, for pipelines that name none.",
        5,
    )
    default_lease_seconds: int = setting(
        "PIPELINE_DEFAULT_LEASE_SECONDS",
        "Lease length for pipelines that name none.",
        900,
    )

    segment_size: int = setting(
        "PIPELINE_SEGMENT_SIZE",
        "Lightweight ids per segment manifest of the segmented queue (1,000,000 ids = 100 rows at 10000).",
        10000,
    )
    manifest_cache_ids: int = setting(
        "CLAIMER_MANIFEST_CACHE_IDS",
        "Ids of decoded segment manifests kept in memory (manifests are immutable; 0 disables the cache).",
        1_000_000,
    )
    manifest_orphan_age_seconds: float = setting(
        "CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS",
        "Age after which a segment manifest no segment row references is deleted (what a claimer killed "
        "between writing a manifest and committing leaves). At least 300: a transaction that wrote a "
        "manifest more than 60 s earlier is retried instead of committed, and the claimer's and S3's "
        "clocks may differ.",
        900.0,
    )
    s3_endpoint_url: str = setting(
        "S3_ENDPOINT_URL", "S3 endpoint for segment manifests; empty means AWS's default endpoint.", ""
    )
    s3_access_key_id: str = setting(
        "S3_ACCESS_KEY_ID", "S3 access key id; empty uses the default AWS credential chain.", ""
    )
    s3_secret_access_key: str = setting("S3_SECRET_ACCESS_KEY", "S3 secret access key.", "", secret=True)
    s3_region: str = setting("S3_REGION", "S3 region.", "us-east-1")
    s3_bucket: str = setting(
        "S3_BUCKET",
        "Bucket of the segment manifests (key prefix pipelines/<id>/segments/). Without it, "
        "enqueueing into a segment-backend pipeline fails FAILED_PRECONDITION.",
        "",
    )
    internal_token: str = setting(
        "CLAIMER_INTERNAL_TOKEN",
        "Shared secret the claimer requires on every call (metadata x-hevlayer-internal-token): only "
        "the gateway, which sends the same CLAIMER_INTERNAL_TOKEN, may call it. Required unless mutual "
        "TLS identifies the gateway (HEVLAYER_TLS_CLIENT_CA) or CLAIMER_AUTH=off.",
        "",
        secret=True,
    )
    auth: str = setting(
        "CLAIMER_AUTH",
        "on: every call must carry CLAIMER_INTERNAL_TOKEN. off: the claimer answers anyone who reaches it "
        "(unsafe; only for a claimer no one but the gateway can reach).",
        "on",
    )
    change_retention_seconds: float = setting(
        "CLAIMER_CHANGE_RETENTION_SECONDS",
        "How long document changes stay in the change log behind WatchDocuments: a watcher that "
        "reconnects with an older cursor (or falls further behind) receives a snapshot again instead. "
        "Also how long after its last watch a pipeline's changes are still logged (an unwatched "
        "pipeline writes no change rows).",
        86400.0,
    )
    max_watches: int = setting(
        "CLAIMER_MAX_WATCHES",
        "Most WatchDocuments streams one claimer serves at once (RESOURCE_EXHAUSTED beyond). Each holds "
        "one batch of changes in memory, whatever its client's speed.",
        256,
    )
    bootstrap_tokens_file: str = setting(
        "CLAIMER_BOOTSTRAP_TOKENS_FILE",
        "JSON file of API tokens (hashes, roles, scopes; no secrets) inserted at startup when absent: how "
        "the first admin token comes to exist (hevlayer up writes it). Empty: none.",
        "",
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.auth not in ("on", "off"):
            raise ConfigError(f"CLAIMER_AUTH: expected on or off, got {self.auth!r}")
        if self.internal_token and len(self.internal_token) < 16:
            raise ConfigError("CLAIMER_INTERNAL_TOKEN: must be at least 16 characters")
        if not self.database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("DATABASE_URL: expected a postgres:// or postgresql:// URL")
        if not 1 <= self.pool_min_size <= self.pool_max_size:
            raise ConfigError("CLAIMER_DB_POOL_MIN: must be >= 1 and <= CLAIMER_DB_POOL_MAX")
        if self.default_queue_backend not in QUEUE_BACKENDS:
            raise ConfigError(f"PIPELINE_QUEUE_BACKEND: expected one of {', '.join(QUEUE_BACKENDS)}")
        if self.default_sink not in SINKS:
            raise ConfigError(f"PIPELINE_DEFAULT_SINK: expected one of {', '.join(SINKS)}")
        if self.default_max_attempts < 1:
            raise ConfigError("PIPELINE_DEFAULT_MAX_ATTEMPTS: must be >= 1")
        if not 1 <= self.default_lease_seconds <= 86400:
            raise ConfigError("PIPELINE_DEFAULT_LEASE_SECONDS: must be between 1 and 86400")
        if not 1 <= self.segment_size <= 1_000_000:
            raise ConfigError("PIPELINE_SEGMENT_SIZE: must be between 1 and 1000000")
        if self.manifest_cache_ids < 0:
            raise ConfigError("CLAIMER_MANIFEST_CACHE_IDS: must be >= 0")
        if self.manifest_orphan_age_seconds < 300:
            raise ConfigError("CLAIMER_MANIFEST_ORPHAN_AGE_SECONDS: must be >= 300")
        if self.change_retention_seconds < 1:
            raise ConfigError("CLAIMER_CHANGE_RETENTION_SECONDS: must be >= 1")
        if self.max_watches < 1:
            raise ConfigError("CLAIMER_MAX_WATCHES: must be >= 1")
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ConfigError("S3_ENDPOINT_URL: expected an http:// or https:// URL")


def check_caller_identity(settings: ClaimerSettings, mutual_tls: bool) -> None:
    """ConfigError unless the claimer can tell the gateway from other callers: by
    CLAIMER_INTERNAL_TOKEN, by mutual TLS (the gateway's certificate), or not at all because
    CLAIMER_AUTH=off says so."""
    if settings.auth == "on" and not settings.internal_token and not mutual_tls:
        raise ConfigError(
            "CLAIMER_INTERNAL_TOKEN: required (the gateway sends the same secret) unless mutual TLS "
            "identifies the gateway (HEVLAYER_TLS_CLIENT_CA); CLAIMER_AUTH=off runs without either (unsafe)"
        )
