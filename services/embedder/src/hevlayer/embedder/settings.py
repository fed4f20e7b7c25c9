"""Settings of the embedder (environment variables)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting, split_address

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50053",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:9103",
}

MAX_REQUEST_TEXTS = 1024
"""Most texts one EmbedRequest may carry (the API's limit)."""


@dataclass(frozen=True)
class EmbedderSettings:
    """What the embedder needs beyond the common server settings."""

    triton_url: str = setting("EMBEDDER_TRITON_URL", "host:port of Triton's gRPC endpoint.", "127.0.0.1:8001")
    triton_tls: bool = setting(
        "EMBEDDER_TRITON_TLS",
        "Whether the channel to Triton uses TLS, with the HEVLAYER_CLIENT_TLS_* CA and client certificate "
        "(Triton: --grpc-use-ssl, or --grpc-use-ssl-mutual with --grpc-root-cert). False: plaintext, for a "
        "Triton on loopback or in the same pod.",
        False,
    )
    model_name: str = setting(
        "EMBEDDER_MODEL_NAME",
        "Triton model that embeds text (BYTES in, FP32 [batch, dimension] out).",
        "minilm",
    )
    model_version: str = setting(
        "EMBEDDER_MODEL_VERSION", "Version of the Triton model; empty: the version Triton picks.", ""
    )
    dimension: int = setting(
        "EMBEDDER_DIMENSION",
        "Dimension of the vectors; 0: read from the model's metadata. When set, it must match the model.",
        0,
    )
    max_batch_size: int = setting(
        "EMBEDDER_MAX_BATCH_SIZE",
        "Most texts per Triton request; 0: the model's max_batch_size (64 for a model without batching).",
        0,
    )
    max_in_flight: int = setting(
        "EMBEDDER_MAX_IN_FLIGHT",
        "Most Triton requests the embedder has in flight at once (Triton's dynamic batcher merges them).",
        4,
    )
    input_name: str = setting(
        "EMBEDDER_INPUT_NAME", "Name of the model's text input; empty: its only BYTES input.", ""
    )
    output_name: str = setting(
        "EMBEDDER_OUTPUT_NAME", "Name of the model's vector output; empty: its only FP32 output.", ""
    )
    normalized: bool = setting(
        "EMBEDDER_NORMALIZED",
        "Whether the model's vectors are L2-normalized (DescribeModel reports it).",
        True,
    )
    query_prefix: str = setting(
        "EMBEDDER_QUERY_PREFIX", "Text put before every query text, for models that want one.", ""
    )
    document_prefix: str = setting(
        "EMBEDDER_DOCUMENT_PREFIX", "Text put before every document text, for models that want one.", ""
    )
    max_request_texts: int = setting(
        "EMBEDDER_MAX_REQUEST_TEXTS", "Most texts one Embed request may carry (1 to 1024).", MAX_REQUEST_TEXTS
    )
    stream_window: int = setting(
        "EMBEDDER_STREAM_WINDOW",
        "Embed requests of one stream being embedded at once (answered in order).",
        4,
    )
    triton_timeout_seconds: float = setting(
        "EMBEDDER_TRITON_TIMEOUT_SECONDS",
        "Deadline of one Triton request, per request of this embedder in flight at Triton when it is sent "
        "(its own included): the requests ahead of it run first.",
        60.0,
    )
    retry_attempts: int = setting(
        "EMBEDDER_TRITON_RETRY_ATTEMPTS",
        "Attempts of a Triton call failing UNAVAILABLE before the embedder answers UNAVAILABLE.",
        5,
    )
    retry_initial_backoff_seconds: float = setting(
        "EMBEDDER_TRITON_RETRY_INITIAL_BACKOFF_SECONDS", "First delay between Triton attempts (doubles).", 0.1
    )
    retry_max_backoff_seconds: float = setting(
        "EMBEDDER_TRITON_RETRY_MAX_BACKOFF_SECONDS", "Longest delay between Triton attempts.", 2.0
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        split_address(self.triton_url, "EMBEDDER_TRITON_URL")
        if not self.model_name:
            raise ConfigError("EMBEDDER_MODEL_NAME: must not be empty")
        if self.dimension < 0:
            raise ConfigError("EMBEDDER_DIMENSION: must be >= 0")
        if self.max_batch_size < 0:
            raise ConfigError("EMBEDDER_MAX_BATCH_SIZE: must be >= 0")
        if self.max_in_flight < 1:
            raise ConfigError("EMBEDDER_MAX_IN_FLIGHT: must be >= 1")
        if not 1 <= self.max_request_texts <= MAX_REQUEST_TEXTS:
            raise ConfigError(f"EMBEDDER_MAX_REQUEST_TEXTS: must be between 1 and {MAX_REQUEST_TEXTS}")
        if self.stream_window < 1:
            raise ConfigError("EMBEDDER_STREAM_WINDOW: must be >= 1")
        if self.triton_timeout_seconds <= 0:
            raise ConfigError("EMBEDDER_TRITON_TIMEOUT_SECONDS: must be > 0")
        if self.retry_attempts < 1:
            raise ConfigError("EMBEDDER_TRITON_RETRY_ATTEMPTS: must be >= 1")
        if self.retry_initial_backoff_seconds < 0:
            raise ConfigError("EMBEDDER_TRITON_RETRY_INITIAL_BACKOFF_SECONDS: must be >= 0")
        if self.retry_max_backoff_seconds < self.retry_initial_backoff_seconds:
            raise ConfigError(
                "EMBEDDER_TRITON_RETRY_MAX_BACKOFF_SECONDS: must be >= "
                "EMBEDDER_TRITON_RETRY_INITIAL_BACKOFF_SECONDS"
            )


ALL_PIPELINES = "*"
"""``EMBEDDER_WORKER_PIPELINES`` value that works every pipeline (listed with ListPipelines)."""

MAX_WORKER_ID_BYTES = 256
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_RESERVED_STAGES = ("pending", "indexed", "failed")
_PIPELINE_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_PIPELINE_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,61}\*$")


@dataclass(frozen=True)
class WorkerSettings:
    """The worker loop: which pipelines the embedder claims documents from, and how it batches."""

    pipelines: tuple[str, ...] = setting(
        "EMBEDDER_WORKER_PIPELINES",
        "Pipelines whose documents this embedder embeds: comma-separated ids, or * for every pipeline "
        "(listed with ListPipelines, re-listed every EMBEDDER_WORKER_REFRESH_SECONDS). Empty: "
        "HEVLAYER_PIPELINE_ID if set, else no worker (the process only serves EmbeddingService).",
        (),
    )
    exclude_pipelines: tuple[str, ...] = setting(
        "EMBEDDER_WORKER_EXCLUDE_PIPELINES",
        "With EMBEDDER_WORKER_PIPELINES=*: pipelines this worker leaves to other workers (for example "
        "workers written in another language): comma-separated ids, or id prefixes ending in * "
        "(external-*). Ignored when EMBEDDER_WORKER_PIPELINES names pipelines.",
        (),
    )
    operator_pipeline_id: str = setting(
        "HEVLAYER_PIPELINE_ID",
        "The pipeline the operator's worker Deployment runs for; used when EMBEDDER_WORKER_PIPELINES "
        "is empty.",
        "",
    )
    gateway_address: str = setting(
        "EMBEDDER_GATEWAY_ADDRESS",
        "host:port of the gateway's gRPC server, the worker's only peer besides Triton. Empty: "
        "HEVLAYER_GATEWAY_ADDRESS (set by the operator). Required when the worker runs.",
        "",
    )
    operator_gateway_address: str = setting(
        "HEVLAYER_GATEWAY_ADDRESS",
        "The gateway address the operator gives its workers; used when EMBEDDER_GATEWAY_ADDRESS is empty.",
        "",
    )
    worker_id: str = setting(
        "EMBEDDER_WORKER_ID",
        "Worker id on leases (1 to 256 bytes). Empty: <hostname>-<pid>-<random>, new for every process.",
        "",
    )
    from_stage: str = setting("EMBEDDER_WORKER_FROM_STAGE", "Stage documents are claimed from.", "pending")
    claim_stage: str = setting(
        "EMBEDDER_WORKER_CLAIM_STAGE", "Stage documents are held in while they are embedded.", "embedding"
    )
    batch_size: int = setting(
        "EMBEDDER_WORKER_BATCH_SIZE",
        "Chunks per embedding flush, across documents. 0: the Triton request size (EMBEDDER_MAX_BATCH_SIZE, "
        "else the model's max_batch_size).",
        0,
    )
    flush_idle_seconds: float = setting(
        "EMBEDDER_WORKER_FLUSH_IDLE_SECONDS",
        "A partial batch is flushed once no chunk has arrived for this long.",
        0.05,
    )
    queue_batches: int = setting(
        "EMBEDDER_WORKER_QUEUE_BATCHES",
        "Size of the in-memory chunk queue in batches (maxsize = this x the batch size); readers block "
        "when it is full.",
        2,
    )
    max_documents: int = setting(
        "EMBEDDER_WORKER_MAX_DOCUMENTS",
        "Most documents held (leased) at once per pipeline: the cap on StreamLeases credits. 0: the chunk "
        "budget, batch size x (EMBEDDER_WORKER_QUEUE_BATCHES + EMBEDDER_MAX_IN_FLIGHT + 2), enough one-chunk "
        "documents to fill the queue and every flush. Below the cap the worker holds about the chunk budget "
        "in chunks (budget / mean chunks per document read so far), leaving the rest to other workers.",
        0,
    )
    read_concurrency: int = setting(
        "EMBEDDER_WORKER_READ_CONCURRENCY", "ReadChunks streams open at once per pipeline.", 2
    )
    read_documents: int = setting(
        "EMBEDDER_WORKER_READ_DOCUMENTS", "Most documents one ReadChunks call asks for.", 64
    )
    write_concurrency: int = setting(
        "EMBEDDER_WORKER_WRITE_CONCURRENCY", "WriteVectors calls in flight at once.", 2
    )
    lease_seconds: int = setting(
        "EMBEDDER_WORKER_LEASE_SECONDS",
        "Lease length asked for on claims and heartbeats (0: the pipeline's default_lease_seconds). "
        "Leases are heartbeated every third of their length.",
        0,
    )
    retry_attempts: int = setting(
        "EMBEDDER_WORKER_RETRY_ATTEMPTS",
        "Attempts of a flush whose embedding or write fails UNAVAILABLE (each after the Triton client's "
        "own retries) before its documents are released to pending.",
        3,
    )
    retry_max_backoff_seconds: float = setting(
        "EMBEDDER_WORKER_RETRY_MAX_BACKOFF_SECONDS",
        "Longest delay between flush attempts and between reconnections to the gateway (doubles from 0.5 s).",
        10.0,
    )
    max_text_bytes: int = setting(
        "EMBEDDER_WORKER_MAX_TEXT_BYTES",
        "The chunk text is stored in the vector's text attribute, cut to this many UTF-8 bytes (0: no "
        "text attribute).",
        16384,
    )
    drain_seconds: float = setting(
        "EMBEDDER_WORKER_DRAIN_SECONDS",
        "On SIGTERM: time held documents get to be finished; the rest are released to pending.",
        20.0,
    )
    refresh_seconds: float = setting(
        "EMBEDDER_WORKER_REFRESH_SECONDS",
        "With EMBEDDER_WORKER_PIPELINES=*: interval between ListPipelines calls (a new pipeline "
        "waits at most this long for its first claim).",
        2.0,
    )

    @property
    def enabled(self) -> bool:
        """Whether the process runs the worker loop."""
        return bool(self.pipeline_ids)

    @property
    def pipeline_ids(self) -> tuple[str, ...]:
        """The configured pipelines (``("*",)`` for all)."""
        if self.pipelines:
            return self.pipelines
        return (self.operator_pipeline_id,) if self.operator_pipeline_id else ()

    @property
    def all_pipelines(self) -> bool:
        return self.pipeline_ids == (ALL_PIPELINES,)

    def works(self, pipeline_id: str) -> bool:
        """With ``*``: whether ``pipeline_id`` is worked (not named by EMBEDDER_WORKER_EXCLUDE_PIPELINES)."""
        for pattern in self.exclude_pipelines:
            if pattern.endswith("*"):
                if pipeline_id.startswith(pattern[:-1]):
                    return False
            elif pipeline_id == pattern:
                return False
        return True

    @property
    def gateway(self) -> str:
        """The gateway address in effect."""
        return self.gateway_address or self.operator_gateway_address

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if ALL_PIPELINES in self.pipelines and len(self.pipelines) > 1:
            raise ConfigError("EMBEDDER_WORKER_PIPELINES: * cannot be combined with pipeline ids")
        for pipeline_id in self.pipelines:
            if pipeline_id != ALL_PIPELINES and not _PIPELINE_ID.match(pipeline_id):
                raise ConfigError(f"EMBEDDER_WORKER_PIPELINES: {pipeline_id!r} is not a valid pipeline id")
        for pattern in self.exclude_pipelines:
            if not (_PIPELINE_ID.match(pattern) or _PIPELINE_PREFIX.match(pattern)):
                raise ConfigError(
                    f"EMBEDDER_WORKER_EXCLUDE_PIPELINES: {pattern!r} is neither a pipeline id nor an id "
                    "prefix ending in * (such as external-*)"
                )
        if self.operator_pipeline_id and not _PIPELINE_ID.match(self.operator_pipeline_id):
            raise ConfigError(
                f"HEVLAYER_PIPELINE_ID: {self.operator_pipeline_id!r} is not a valid pipeline id"
            )
        if self.gateway_address:
            split_address(self.gateway_address, "EMBEDDER_GATEWAY_ADDRESS")
        if self.operator_gateway_address:
            split_address(self.operator_gateway_address, "HEVLAYER_GATEWAY_ADDRESS")
        if self.enabled and not self.gateway:
            raise ConfigError("EMBEDDER_GATEWAY_ADDRESS: required when EMBEDDER_WORKER_PIPELINES is set")
        if len(self.worker_id.encode()) > MAX_WORKER_ID_BYTES:
            raise ConfigError(f"EMBEDDER_WORKER_ID: at most {MAX_WORKER_ID_BYTES} bytes")
        if not _STAGE_NAME.match(self.from_stage) or self.from_stage in ("indexed", "failed"):
            raise ConfigError("EMBEDDER_WORKER_FROM_STAGE: expected a claimable stage name such as pending")
        if not _STAGE_NAME.match(self.claim_stage) or self.claim_stage in _RESERVED_STAGES:
            raise ConfigError(
                "EMBEDDER_WORKER_CLAIM_STAGE: expected a worker stage name such as embedding "
                "(not pending, indexed or failed)"
            )
        if self.claim_stage == self.from_stage:
            raise ConfigError("EMBEDDER_WORKER_CLAIM_STAGE: must differ from EMBEDDER_WORKER_FROM_STAGE")
        if not 0 <= self.batch_size <= MAX_REQUEST_TEXTS:
            raise ConfigError(f"EMBEDDER_WORKER_BATCH_SIZE: must be between 0 and {MAX_REQUEST_TEXTS}")
        if self.flush_idle_seconds <= 0:
            raise ConfigError("EMBEDDER_WORKER_FLUSH_IDLE_SECONDS: must be > 0")
        for env, value in (
            ("EMBEDDER_WORKER_QUEUE_BATCHES", self.queue_batches),
            ("EMBEDDER_WORKER_READ_CONCURRENCY", self.read_concurrency),
            ("EMBEDDER_WORKER_READ_DOCUMENTS", self.read_documents),
            ("EMBEDDER_WORKER_WRITE_CONCURRENCY", self.write_concurrency),
            ("EMBEDDER_WORKER_RETRY_ATTEMPTS", self.retry_attempts),
        ):
            if value < 1:
                raise ConfigError(f"{env}: must be >= 1")
        if not 0 <= self.max_documents <= 10_000:
            raise ConfigError("EMBEDDER_WORKER_MAX_DOCUMENTS: must be between 0 and 10000")
        if self.read_documents > 10_000:
            raise ConfigError("EMBEDDER_WORKER_READ_DOCUMENTS: must be <= 10000")
        if not 0 <= self.lease_seconds <= 86_400:
            raise ConfigError("EMBEDDER_WORKER_LEASE_SECONDS: must be between 0 and 86400")
        if self.retry_max_backoff_seconds < 0.5:
            raise ConfigError("EMBEDDER_WORKER_RETRY_MAX_BACKOFF_SECONDS: must be >= 0.5")
        if self.max_text_bytes < 0:
            raise ConfigError("EMBEDDER_WORKER_MAX_TEXT_BYTES: must be >= 0")
        if self.drain_seconds < 0:
            raise ConfigError("EMBEDDER_WORKER_DRAIN_SECONDS: must be >= 0")
        if self.refresh_seconds <= 0:
            raise ConfigError("EMBEDDER_WORKER_REFRESH_SECONDS: must be > 0")
