"""Settings of image descriptions: the vision provider, ``description_gate`` and the Transformation Cache."""

from __future__ import annotations

from dataclasses import dataclass

from hevlayer.common.config import ConfigError, setting

PROVIDERS = ("ocr", "openai")

DEFAULT_PROMPT = (
    "Describe this image for a search index: what it shows, and any text in it, transcribed. "
    "Answer in plain prose, at most 150 words."
)


@dataclass(frozen=True)
class VisionSettings:
    """Image descriptions (the image producer): provider, description_gate, Transformation Cache."""

    provider: str = setting(
        "HEVLAYER_VISION_PROVIDER",
        "Who describes images: `ocr` (offline default: the text tesseract reads, plus size, format "
        "and EXIF metadata; no scene understanding) or `openai` (an OpenAI-compatible vision "
        "chat-completions endpoint: vLLM, NIM, Ollama).",
        "ocr",
    )
    url: str = setting(
        "HEVLAYER_VISION_URL",
        "Base URL of the OpenAI-compatible API, up to and including `/v1` (provider openai; "
        "`/chat/completions` is appended).",
        "",
    )
    model: str = setting("HEVLAYER_VISION_MODEL", "Vision model name sent in requests (provider openai).", "")
    api_key: str = setting(
        "HEVLAYER_VISION_API_KEY",
        "Bearer token of the vision endpoint (provider openai); empty sends no Authorization header.",
        "",
        secret=True,
    )
    prompt: str = setting(
        "HEVLAYER_VISION_PROMPT", "The instruction sent with each image (provider openai).", DEFAULT_PROMPT
    )
    max_tokens: int = setting(
        "HEVLAYER_VISION_MAX_TOKENS", "Most tokens of one description (provider openai).", 400
    )
    timeout_seconds: float = setting(
        "HEVLAYER_VISION_TIMEOUT_SECONDS",
        "Deadline of one provider call (an HTTP request, or one tesseract run).",
        60.0,
    )
    max_attempts: int = setting(
        "HEVLAYER_VISION_MAX_ATTEMPTS",
        "Attempts of one description while the endpoint answers 429 or 5xx or cannot be reached "
        "(provider openai).",
        3,
    )
    description_concurrency: int = setting(
        "HEVLAYER_DESCRIPTION_CONCURRENCY",
        "Process-wide description_gate: image descriptions (provider calls) in flight at once, "
        "over every producer call of the process.",
        4,
    )
    tesseract: str = setting(
        "HEVLAYER_TESSERACT",
        "The tesseract binary of provider ocr: a name looked up on PATH, or a path.",
        "tesseract",
    )
    ocr_languages: str = setting(
        "HEVLAYER_OCR_LANGUAGES",
        "Tesseract languages (its `-l`, e.g. `eng+deu`); each needs its traineddata installed.",
        "eng",
    )
    cache_entries: int = setting(
        "HEVLAYER_TRANSFORM_CACHE_ENTRIES",
        "Descriptions kept in memory by the Transformation Cache (least recently used go first).",
        4096,
    )
    cache: str = setting(
        "HEVLAYER_TRANSFORM_CACHE",
        "Where the Transformation Cache also keeps descriptions, for later runs and other "
        "processes: a directory (`~` is expanded) or `s3://bucket/prefix` (endpoint and "
        "credentials from the AWS environment: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...); "
        "empty: memory only. Every process given the same location shares the entries (the "
        "summarizer's `SUMMARIZER_TRANSFORM_CACHE` too).",
        "",
    )
    cache_bytes: int = setting(
        "HEVLAYER_TRANSFORM_CACHE_BYTES",
        "Size bound of HEVLAYER_TRANSFORM_CACHE's entries; least recently used go first.",
        1 << 30,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid variable."""
        if self.provider not in PROVIDERS:
            allowed = ", ".join(PROVIDERS)
            raise ConfigError(f"HEVLAYER_VISION_PROVIDER: expected one of {allowed}, got {self.provider!r}")
        if self.provider == "openai":
            if not self.url.startswith(("http://", "https://")):
                raise ConfigError(
                    "HEVLAYER_VISION_URL: expected an http:// or https:// URL (provider openai)"
                )
            if not self.model:
                raise ConfigError("HEVLAYER_VISION_MODEL: required when HEVLAYER_VISION_PROVIDER=openai")
        positive = {
            "HEVLAYER_VISION_MAX_TOKENS": self.max_tokens,
            "HEVLAYER_VISION_MAX_ATTEMPTS": self.max_attempts,
            "HEVLAYER_DESCRIPTION_CONCURRENCY": self.description_concurrency,
            "HEVLAYER_TRANSFORM_CACHE_ENTRIES": self.cache_entries,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        if self.timeout_seconds <= 0:
            raise ConfigError(f"HEVLAYER_VISION_TIMEOUT_SECONDS: must be > 0, got {self.timeout_seconds}")
        if self.cache_bytes < 0:
            raise ConfigError(f"HEVLAYER_TRANSFORM_CACHE_BYTES: must be >= 0, got {self.cache_bytes}")
        if self.cache.startswith("s3://") and not self.cache[len("s3://") :].split("/", 1)[0]:
            raise ConfigError(f"HEVLAYER_TRANSFORM_CACHE: no bucket in {self.cache!r}")
        if not self.ocr_languages.strip():
            raise ConfigError("HEVLAYER_OCR_LANGUAGES: must not be empty")
