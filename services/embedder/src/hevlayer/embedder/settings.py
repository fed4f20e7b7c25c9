"""Settings of the embedder (environment variables)."""

from __future__ import annotations

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
        "EMBEDDER_TRITON_TIMEOUT_SECONDS", "Deadline of one Triton request.", 60.0
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
