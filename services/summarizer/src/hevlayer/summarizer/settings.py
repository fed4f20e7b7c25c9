"""Settings of the summarizer (environment variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hevlayer.common.config import ConfigError, setting, split_address
from hevlayer.ingest.transform import expand_location

GRPC_DEFAULTS = {
    "HEVLAYER_GRPC_ADDRESS": "127.0.0.1:50054",
    "HEVLAYER_HTTP_ADDRESS": "127.0.0.1:9104",
}

PROVIDERS = ("extractive", "openai")


@dataclass(frozen=True)
class SummarizerSettings:
    """What the summarizer needs beyond the common server settings."""

    provider: str = setting(
        "SUMMARIZER_PROVIDER",
        "Who writes directory summaries: extractive (deterministic, offline, picks leading "
        "sentences/docstrings/headings of the children; not an LLM) or openai (an "
        "OpenAI-compatible chat-completions endpoint, see SUMMARIZER_LLM_*).",
        "extractive",
    )
    llm_url: str = setting(
        "SUMMARIZER_LLM_URL",
        "Base URL of the OpenAI-compatible API (POST {url}/chat/completions), e.g. "
        "https://api.openai.com/v1. Required when SUMMARIZER_PROVIDER=openai.",
        "",
    )
    llm_model: str = setting(
        "SUMMARIZER_LLM_MODEL", "Model name sent to the chat-completions endpoint (openai provider).", ""
    )
    llm_api_key: str = setting(
        "SUMMARIZER_LLM_API_KEY",
        "Bearer token for the chat-completions endpoint; empty sends no Authorization header.",
        "",
        secret=True,
    )
    llm_timeout_seconds: float = setting(
        "SUMMARIZER_LLM_TIMEOUT_SECONDS", "Timeout of one chat-completions request.", 60.0
    )
    llm_max_attempts: int = setting(
        "SUMMARIZER_LLM_MAX_ATTEMPTS",
        "Attempts per summary on 429, 5xx, timeouts and connection errors (exponential backoff, "
        "Retry-After honoured up to 30 s); then the directory fails.",
        4,
    )
    llm_max_tokens: int = setting(
        "SUMMARIZER_LLM_MAX_TOKENS", "max_tokens of one chat-completions request.", 400
    )
    summary_max_words: int = setting(
        "SUMMARIZER_SUMMARY_MAX_WORDS",
        "Length budget of one directory summary in words (the extractive provider's budget; the "
        "LLM is asked to stay under it).",
        200,
    )
    max_child_chars: int = setting(
        "SUMMARIZER_MAX_CHILD_CHARS",
        "Characters of one child's text (object excerpt or sub-directory summary) given to the provider.",
        1200,
    )
    max_prompt_chars: int = setting(
        "SUMMARIZER_MAX_PROMPT_CHARS",
        "Characters of children's text given to the provider for one directory; children past it "
        "are listed by name only.",
        24000,
    )
    max_object_text_bytes: int = setting(
        "SUMMARIZER_MAX_OBJECT_TEXT_BYTES",
        "Largest JobObject.text accepted by SubmitJob (INVALID_ARGUMENT past it).",
        16384,
    )
    max_job_objects: int = setting(
        "SUMMARIZER_MAX_JOB_OBJECTS",
        "Largest number of objects in one job (INVALID_ARGUMENT past it).",
        1000000,
    )
    summary_concurrency: int = setting(
        "SUMMARIZER_SUMMARY_CONCURRENCY",
        "Process-wide summary_gate: summary provider calls in flight at once, over all jobs.",
        4,
    )
    workers: int = setting(
        "SUMMARIZER_WORKERS",
        "Directories folded at once (cache look-ups and staging included; provider calls are "
        "further bounded by SUMMARIZER_SUMMARY_CONCURRENCY).",
        8,
    )
    cache_dir: str = setting(
        "SUMMARIZER_CACHE_DIR",
        "The summarizer's state directory: the job journals (`jobs/`) and, unless "
        "SUMMARIZER_TRANSFORM_CACHE says otherwise, the Transformation Cache (`transformations/`); "
        "~ is expanded.",
        "~/.cache/hevlayer/summarizer",
    )
    transform_cache: str = setting(
        "SUMMARIZER_TRANSFORM_CACHE",
        "Where the Transformation Cache keeps summaries (beyond its memory): a directory (~ is "
        "expanded) or `s3://bucket/prefix` (endpoint and credentials from the AWS environment: "
        "`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...). Empty: `transformations/` under "
        "SUMMARIZER_CACHE_DIR. Give several summarizers, extract workers and `hevlayer add` "
        "(`HEVLAYER_TRANSFORM_CACHE`) the same location to share one cache.",
        "",
    )
    cache_max_bytes: int = setting(
        "SUMMARIZER_CACHE_MAX_BYTES",
        "Size bound of the Transformation Cache's stored entries; least recently used go first.",
        268435456,
    )
    gateway_address: str = setting(
        "SUMMARIZER_GATEWAY_ADDRESS",
        "host:port of the gateway, whose StagingService receives the summaries as chunks. Empty "
        "disables staging: summaries are only kept in memory and served by GetSummary.",
        "127.0.0.1:50051",
    )
    stage_timeout_seconds: float = setting(
        "SUMMARIZER_STAGE_TIMEOUT_SECONDS", "Deadline of one StageDocuments call to the gateway.", 30.0
    )
    stage_max_attempts: int = setting(
        "SUMMARIZER_STAGE_MAX_ATTEMPTS",
        "Attempts to stage one summary while the gateway answers UNAVAILABLE or DEADLINE_EXCEEDED "
        "(after the channel's own retries); then the directory fails.",
        5,
    )
    job_retention_seconds: float = setting(
        "SUMMARIZER_JOB_RETENTION_SECONDS",
        "How long an ended job stays answerable (WatchJob, GetSummary) before it is forgotten; an "
        "enumerating job that receives nothing for this long is cancelled.",
        3600.0,
    )

    index_poll_seconds: float = setting(
        "SUMMARIZER_INDEX_POLL_SECONDS",
        "How soon the completion tracker watches its summaries' documents again (WatchDocuments "
        "through the gateway, resumed from its cursor) after the stream was lost, doubling up to 30 s "
        "while it keeps failing; also how often it looks for pipelines to watch.",
        1.0,
    )

    @property
    def cache_path(self) -> Path:
        """SUMMARIZER_CACHE_DIR with ~ expanded."""
        return Path(os.path.expanduser(self.cache_dir))

    @property
    def transform_location(self) -> str:
        """Where the Transformation Cache stores entries: SUMMARIZER_TRANSFORM_CACHE (~ expanded),
        else ``transformations/`` under SUMMARIZER_CACHE_DIR."""
        if not self.transform_cache:
            return str(self.cache_path / "transformations")
        return expand_location(self.transform_cache)

    @property
    def journal_path(self) -> Path:
        """Where the job journals live: ``jobs/`` under SUMMARIZER_CACHE_DIR."""
        return self.cache_path / "jobs"

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.provider not in PROVIDERS:
            allowed = ", ".join(PROVIDERS)
            raise ConfigError(f"SUMMARIZER_PROVIDER: expected one of {allowed}, got {self.provider!r}")
        if self.provider == "openai":
            if not self.llm_url.startswith(("http://", "https://")):
                raise ConfigError("SUMMARIZER_LLM_URL: expected an http:// or https:// URL (provider openai)")
            if not self.llm_model:
                raise ConfigError("SUMMARIZER_LLM_MODEL: required when SUMMARIZER_PROVIDER=openai")
        positive_ints = {
            "SUMMARIZER_LLM_MAX_ATTEMPTS": self.llm_max_attempts,
            "SUMMARIZER_LLM_MAX_TOKENS": self.llm_max_tokens,
            "SUMMARIZER_SUMMARY_MAX_WORDS": self.summary_max_words,
            "SUMMARIZER_MAX_CHILD_CHARS": self.max_child_chars,
            "SUMMARIZER_MAX_PROMPT_CHARS": self.max_prompt_chars,
            "SUMMARIZER_MAX_OBJECT_TEXT_BYTES": self.max_object_text_bytes,
            "SUMMARIZER_MAX_JOB_OBJECTS": self.max_job_objects,
            "SUMMARIZER_SUMMARY_CONCURRENCY": self.summary_concurrency,
            "SUMMARIZER_WORKERS": self.workers,
            "SUMMARIZER_CACHE_MAX_BYTES": self.cache_max_bytes,
            "SUMMARIZER_STAGE_MAX_ATTEMPTS": self.stage_max_attempts,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        positive_floats: dict[str, float] = {
            "SUMMARIZER_LLM_TIMEOUT_SECONDS": self.llm_timeout_seconds,
            "SUMMARIZER_STAGE_TIMEOUT_SECONDS": self.stage_timeout_seconds,
            "SUMMARIZER_JOB_RETENTION_SECONDS": self.job_retention_seconds,
            "SUMMARIZER_INDEX_POLL_SECONDS": self.index_poll_seconds,
        }
        for name, seconds in positive_floats.items():
            if not seconds > 0:
                raise ConfigError(f"{name}: must be > 0, got {seconds}")
        if not self.cache_dir:
            raise ConfigError("SUMMARIZER_CACHE_DIR: must not be empty")
        if self.transform_cache.startswith("s3://") and not self.transform_cache[5:].split("/", 1)[0]:
            raise ConfigError(f"SUMMARIZER_TRANSFORM_CACHE: no bucket in {self.transform_cache!r}")
        if self.gateway_address:
            split_address(self.gateway_address, "SUMMARIZER_GATEWAY_ADDRESS")
