"""Image descriptions for the image producer (and anything else that needs one).

:func:`describe` is the single entry: it reads the image's facts with Pillow,
then asks the process's Transformation Cache (:mod:`hevlayer.ingest.transform`,
the one the summarizer's folds use too) for the description under the image's
content address (:func:`cache_key`: the provider's token, the description's
version and the SHA-256 of the bytes). On a miss the provider runs once,
inside the process-wide ``description_gate``, however many threads ask for the
same image at the same moment (single flight; with a directory backing, however
many processes); a cache hit takes no gate slot.

The process's provider, gate and cache come from :class:`VisionSettings`
(``HEVLAYER_VISION_*``, ``HEVLAYER_DESCRIPTION_CONCURRENCY``,
``HEVLAYER_TRANSFORM_CACHE*``: memory only, or also a directory or an
``s3://bucket/prefix`` shared by every process configured with it), loaded from
the environment on first use; :func:`configure` replaces them (at start-up, or
in tests).

Everything here blocks: call it from a worker thread (producers already run
in one); asyncio code uses ``await asyncio.to_thread(describe, data)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hevlayer.common.config import ConfigError, load_settings
from hevlayer.ingest.transform import CacheOutcome, TransformationCache, expand_location
from hevlayer.ingest.transform import cache_key as transformation_key
from hevlayer.ingest.vision.gate import Gate
from hevlayer.ingest.vision.providers import (
    Image,
    ImageInfo,
    OcrProvider,
    OpenAIVisionProvider,
    VisionError,
    VisionProvider,
    VisionUnavailable,
    read_image,
)
from hevlayer.ingest.vision.settings import VisionSettings

__all__ = [
    "CacheOutcome",
    "Description",
    "Gate",
    "Image",
    "ImageInfo",
    "OcrProvider",
    "OpenAIVisionProvider",
    "Vision",
    "VisionError",
    "VisionProvider",
    "VisionSettings",
    "VisionUnavailable",
    "cache_key",
    "configure",
    "describe",
    "description_gate",
    "provider_for",
    "read_image",
    "transformation_cache",
    "vision",
]


@dataclass(frozen=True)
class Vision:
    """The process's image describer: provider, ``description_gate`` and Transformation Cache."""

    provider: VisionProvider
    gate: Gate
    cache: TransformationCache
    owns_cache: bool = False
    """The cache was built here (closed when the describer is replaced)."""


@dataclass(frozen=True)
class Description:
    """An image's description and facts."""

    text: str
    """The provider's text (OCR: the words read, possibly empty)."""
    info: ImageInfo
    provider: str
    """The provider's token (``ocr:tesseract:eng``, ``openai:<model>:…``)."""
    outcome: CacheOutcome
    """Whether the provider ran for this call (MISS) or its memoized answer was reused."""


def provider_for(settings: VisionSettings) -> VisionProvider:
    """The provider ``settings`` name."""
    if settings.provider == "openai":
        return OpenAIVisionProvider(
            settings.url,
            settings.model,
            api_key=settings.api_key,
            prompt=settings.prompt,
            max_tokens=settings.max_tokens,
            timeout_seconds=settings.timeout_seconds,
            max_attempts=settings.max_attempts,
        )
    return OcrProvider(settings.tesseract, settings.ocr_languages, settings.timeout_seconds)


_lock = threading.Lock()
_vision: Vision | None = None


def _build(
    settings: VisionSettings | None,
    provider: VisionProvider | None,
    gate: Gate | None,
    cache: TransformationCache | None,
) -> Vision:
    if settings is None:
        try:
            settings = load_settings(VisionSettings)
        except ConfigError as exc:
            raise VisionUnavailable(f"configuration error: {exc}") from None
    provider = provider if provider is not None else provider_for(settings)
    owns_cache = cache is None
    if cache is None:
        try:
            cache = TransformationCache(
                settings.cache_entries, expand_location(settings.cache), settings.cache_bytes
            )
        except (OSError, ValueError) as exc:
            raise VisionUnavailable(f"HEVLAYER_TRANSFORM_CACHE {settings.cache!r}: {exc}") from None
    return Vision(
        provider=provider,
        gate=gate if gate is not None else Gate("description", settings.description_concurrency),
        cache=cache,
        owns_cache=owns_cache,
    )


def configure(
    settings: VisionSettings | None = None,
    *,
    provider: VisionProvider | None = None,
    gate: Gate | None = None,
    cache: TransformationCache | None = None,
) -> Vision:
    """Set the process's describer (from ``settings``, default: the environment); parts may be given."""
    global _vision
    built = _build(settings, provider, gate, cache)
    with _lock:
        replaced, _vision = _vision, built
    if replaced is not None and replaced.owns_cache and replaced.cache is not built.cache:
        replaced.cache.close()
    return built


def vision() -> Vision:
    """The process's describer, configured from the environment on first use (once, whichever
    thread gets here first: every thread shares one gate and one cache)."""
    global _vision
    with _lock:
        if _vision is None:
            _vision = _build(None, None, None, None)
        return _vision


def description_gate() -> Gate:
    """The process-wide ``description_gate``: image descriptions in flight at once."""
    return vision().gate


def transformation_cache() -> TransformationCache:
    """The process's Transformation Cache of image descriptions."""
    return vision().cache


DESCRIPTION_VERSION = "image-description/1"
"""The prompt version of a description's cache key (the provider's token names its prompt)."""


def cache_key(image: Image, provider: VisionProvider) -> str:
    """The content address of an image's description by ``provider``: the Transformation
    Cache's key of (provider token, :data:`DESCRIPTION_VERSION`, the image's SHA-256)."""
    return transformation_key(provider.token, DESCRIPTION_VERSION, [image.digest])


def describe(data: bytes) -> Description:
    """The description of the image ``data`` (memoized, single flight, gated). Raises VisionError."""
    image = read_image(data)
    current = vision()
    provider = current.provider

    def run() -> str:
        with current.gate:
            return provider.describe(image)

    text, outcome = current.cache.get_or_compute_sync(cache_key(image, provider), run)
    return Description(text=text, info=image.info, provider=provider.token, outcome=outcome)
