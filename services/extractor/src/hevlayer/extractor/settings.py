"""Settings of the extract worker (environment variables)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting, split_address
from hevlayer.ingest.producers import Budget
from hevlayer.ingest.s3 import S3Connection, split_s3_uri

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50055",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:9105",
}

ALL_PIPELINES = "*"
MAX_WORKER_ID_BYTES = 200
_PIPELINE_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_PIPELINE_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,61}\*$")


@dataclass(frozen=True)
class ExtractorSettings:
    """What the extract worker needs beyond the common server settings."""

    gateway_address: str = setting(
        "EXTRACTOR_GATEWAY_ADDRESS",
        "host:port of the gateway's gRPC server, the worker's only hevlayer peer. Empty: "
        "HEVLAYER_GATEWAY_ADDRESS (set by the operator). Required.",
        "",
    )
    operator_gateway_address: str = setting(
        "HEVLAYER_GATEWAY_ADDRESS",
        "The gateway address the operator gives its workers; used when EXTRACTOR_GATEWAY_ADDRESS is empty.",
        "",
    )
    pipelines: tuple[str, ...] = setting(
        "EXTRACTOR_PIPELINES",
        "Pipelines whose extract stage this worker works: comma-separated ids, or * for every pipeline "
        "(listed with ListPipelines every EXTRACTOR_REFRESH_SECONDS). Empty: HEVLAYER_PIPELINE_ID if set, "
        "else *.",
        (),
    )
    operator_pipeline_id: str = setting(
        "HEVLAYER_PIPELINE_ID",
        "The pipeline the operator's extract Deployment runs for; used when EXTRACTOR_PIPELINES is empty.",
        "",
    )
    exclude_pipelines: tuple[str, ...] = setting(
        "EXTRACTOR_EXCLUDE_PIPELINES",
        "With EXTRACTOR_PIPELINES=*: pipelines left to other workers: comma-separated ids, or id prefixes "
        "ending in * (local-*).",
        (),
    )
    concurrency: int = setting(
        "EXTRACTOR_CONCURRENCY",
        "Extract workers (claim → read → convert → stage loops) per pipeline; producers run in threads.",
        4,
    )
    claim_limit: int = setting("EXTRACTOR_CLAIM_LIMIT", "Documents one ClaimDocuments call takes.", 16)
    lease_seconds: int = setting(
        "EXTRACTOR_LEASE_SECONDS",
        "Lease of a claimed document, heartbeated every third of it while it is extracted. A killed "
        "worker's documents return to extract when their leases expire.",
        300,
    )
    poll_seconds: float = setting(
        "EXTRACTOR_POLL_SECONDS",
        "Longest pause of an idle worker between claims (from a quarter of it, doubling).",
        0.5,
    )
    refresh_seconds: float = setting(
        "EXTRACTOR_REFRESH_SECONDS",
        "With EXTRACTOR_PIPELINES=*: interval between ListPipelines calls; also how soon a pipeline whose "
        "workers stopped on an error is worked again.",
        5.0,
    )
    worker_id: str = setting(
        "EXTRACTOR_WORKER_ID",
        "Prefix of the worker ids on leases (<prefix>-<pipeline>-<n>). Empty: "
        "extractor-<hostname>-<pid>, new for every process.",
        "",
    )
    max_object_bytes: int = setting(
        "EXTRACTOR_MAX_OBJECT_BYTES",
        "Largest object read from a source; a larger one is failed with its size, unread.",
        64 * 1024 * 1024,
    )
    chunk_max_tokens: int = setting(
        "EXTRACTOR_CHUNK_MAX_TOKENS",
        "Most embedding-model tokens in one chunk body (hevlayer add --max-tokens); the model's 256-token"
        " window, less the chunk's context line, caps it.",
        256,
    )
    chunk_overlap_tokens: int = setting(
        "EXTRACTOR_CHUNK_OVERLAP_TOKENS",
        "Most embedding-model tokens two consecutive chunk bodies share (hevlayer add --overlap).",
        28,
    )
    http_timeout_seconds: float = setting(
        "EXTRACTOR_HTTP_TIMEOUT_SECONDS", "Deadline of one GET of an http(s):// object.", 60.0
    )
    artifact_cache: str = setting(
        "EXTRACTOR_ARTIFACT_CACHE",
        "Where the Artifact Cache keeps conversions: s3://bucket/prefix (the EXTRACTOR_S3_* endpoint) or a "
        "local directory. Empty: no cache (every object is converted).",
        "",
    )
    artifact_cache_bytes: int = setting(
        "EXTRACTOR_ARTIFACT_CACHE_BYTES",
        "Byte budget of the Artifact Cache; least recently used entries are evicted beyond it.",
        1024**3,
    )
    drain_seconds: float = setting(
        "EXTRACTOR_DRAIN_SECONDS",
        "On SIGTERM: time claimed documents get to be staged; the rest are handed back to extract.",
        20.0,
    )

    @property
    def gateway(self) -> str:
        """The gateway address in effect."""
        return self.gateway_address or self.operator_gateway_address

    @property
    def pipeline_ids(self) -> tuple[str, ...]:
        """The pipelines in effect (``("*",)`` for all)."""
        if self.pipelines:
            return self.pipelines
        return (self.operator_pipeline_id,) if self.operator_pipeline_id else (ALL_PIPELINES,)

    @property
    def all_pipelines(self) -> bool:
        return self.pipeline_ids == (ALL_PIPELINES,)

    def works(self, pipeline_id: str) -> bool:
        """With ``*``: whether ``pipeline_id`` is not named by EXTRACTOR_EXCLUDE_PIPELINES."""
        for pattern in self.exclude_pipelines:
            if pattern.endswith("*") and pipeline_id.startswith(pattern[:-1]):
                return False
            if pipeline_id == pattern:
                return False
        return True

    def budget(self) -> Budget:
        """The chunk budget (as ``hevlayer add`` makes it from --max-tokens and --overlap)."""
        return Budget(
            max_tokens=self.chunk_max_tokens,
            overlap_tokens=self.chunk_overlap_tokens,
            max_chars=max(16, self.chunk_max_tokens * 10),
        )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if not self.gateway:
            raise ConfigError("EXTRACTOR_GATEWAY_ADDRESS: required (or HEVLAYER_GATEWAY_ADDRESS)")
        if self.gateway_address:
            split_address(self.gateway_address, "EXTRACTOR_GATEWAY_ADDRESS")
        if self.operator_gateway_address:
            split_address(self.operator_gateway_address, "HEVLAYER_GATEWAY_ADDRESS")
        if self.operator_pipeline_id and not _PIPELINE_ID.match(self.operator_pipeline_id):
            raise ConfigError(
                f"HEVLAYER_PIPELINE_ID: {self.operator_pipeline_id!r} is not a valid pipeline id"
            )
        if ALL_PIPELINES in self.pipelines and len(self.pipelines) > 1:
            raise ConfigError("EXTRACTOR_PIPELINES: * cannot be combined with pipeline ids")
        for pipeline_id in self.pipelines:
            if pipeline_id != ALL_PIPELINES and not _PIPELINE_ID.match(pipeline_id):
                raise ConfigError(f"EXTRACTOR_PIPELINES: {pipeline_id!r} is not a valid pipeline id")
        for pattern in self.exclude_pipelines:
            if not (_PIPELINE_ID.match(pattern) or _PIPELINE_PREFIX.match(pattern)):
                raise ConfigError(
                    f"EXTRACTOR_EXCLUDE_PIPELINES: {pattern!r} is neither a pipeline id nor an id prefix "
                    "ending in *"
                )
        for env, value in (
            ("EXTRACTOR_CONCURRENCY", self.concurrency),
            ("EXTRACTOR_CLAIM_LIMIT", self.claim_limit),
            ("EXTRACTOR_MAX_OBJECT_BYTES", self.max_object_bytes),
        ):
            if value < 1:
                raise ConfigError(f"{env}: must be >= 1")
        if self.concurrency > 256:
            raise ConfigError("EXTRACTOR_CONCURRENCY: must be <= 256")
        if self.claim_limit > 1000:
            raise ConfigError("EXTRACTOR_CLAIM_LIMIT: must be <= 1000")
        if not 1 <= self.lease_seconds <= 86_400:
            raise ConfigError("EXTRACTOR_LEASE_SECONDS: must be between 1 and 86400")
        for env, number in (
            ("EXTRACTOR_POLL_SECONDS", self.poll_seconds),
            ("EXTRACTOR_REFRESH_SECONDS", self.refresh_seconds),
            ("EXTRACTOR_HTTP_TIMEOUT_SECONDS", self.http_timeout_seconds),
        ):
            if number <= 0:
                raise ConfigError(f"{env}: must be > 0")
        if self.drain_seconds < 0:
            raise ConfigError("EXTRACTOR_DRAIN_SECONDS: must be >= 0")
        if len(self.worker_id.encode()) > MAX_WORKER_ID_BYTES:
            raise ConfigError(f"EXTRACTOR_WORKER_ID: at most {MAX_WORKER_ID_BYTES} bytes")
        if not 16 <= self.chunk_max_tokens <= 2000:
            raise ConfigError("EXTRACTOR_CHUNK_MAX_TOKENS: must be between 16 and 2000")
        if not 0 <= self.chunk_overlap_tokens < self.chunk_max_tokens:
            raise ConfigError(
                "EXTRACTOR_CHUNK_OVERLAP_TOKENS: must be >= 0 and below EXTRACTOR_CHUNK_MAX_TOKENS"
            )
        if self.artifact_cache.startswith("s3://"):
            try:
                split_s3_uri(self.artifact_cache)
            except ValueError as exc:
                raise ConfigError(f"EXTRACTOR_ARTIFACT_CACHE: {exc}") from None
        if self.artifact_cache_bytes < 0:
            raise ConfigError("EXTRACTOR_ARTIFACT_CACHE_BYTES: must be >= 0")


@dataclass(frozen=True)
class ExtractorS3Settings:
    """The S3 endpoint of s3:// objects and of an s3:// Artifact Cache."""

    endpoint_url: str = setting(
        "EXTRACTOR_S3_ENDPOINT_URL",
        "S3 endpoint of s3:// document ids and an s3:// EXTRACTOR_ARTIFACT_CACHE, e.g. "
        "http://127.0.0.1:8333. Empty: AWS's default endpoint.",
        "",
    )
    access_key_id: str = setting(
        "EXTRACTOR_S3_ACCESS_KEY_ID", "S3 access key. Empty: botocore's default credential chain.", ""
    )
    secret_access_key: str = setting("EXTRACTOR_S3_SECRET_ACCESS_KEY", "S3 secret key.", "", secret=True)
    region: str = setting("EXTRACTOR_S3_REGION", "S3 region.", "us-east-1")

    def connection(self) -> S3Connection:
        return S3Connection(self.endpoint_url, self.access_key_id, self.secret_access_key, self.region)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError("EXTRACTOR_S3_ENDPOINT_URL: expected an http:// or https:// URL")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError(
                "EXTRACTOR_S3_SECRET_ACCESS_KEY: set both EXTRACTOR_S3_ACCESS_KEY_ID and "
                "EXTRACTOR_S3_SECRET_ACCESS_KEY, or neither"
            )
