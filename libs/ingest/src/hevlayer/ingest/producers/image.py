"""Images (PNG, JPEG, WebP, GIF, TIFF): the vision provider's description, and the image's facts.

The text comes from :func:`hevlayer.ingest.vision.describe`: the process's
vision provider under the process-wide ``description_gate``, memoized in the
Transformation Cache (single flight). With the offline default provider that
text is what tesseract OCR reads in the image, and nothing else; an image
without legible text is still one chunk, made of its facts (format, size,
EXIF date and camera). Every chunk carries those facts as metadata:
``width``, ``height``, ``format``, ``frames`` (when more than one),
``taken`` and ``camera`` (when the EXIF has them) and ``described_by``.
"""

from __future__ import annotations

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Metadata,
    Producer,
    ProducerError,
    Source,
    Span,
    build_chunks,
    display_name,
    split_text,
)
from hevlayer.ingest.vision import VisionError, describe

_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)


class ImageProducer(Producer):
    """Raster images, described by the process's vision provider."""

    kind = "image"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".tif", ".tiff")

    def sniff(self, head: bytes) -> bool:
        return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        try:
            description = describe(source.data)
        except VisionError as exc:
            raise ProducerError(str(exc)) from None
        info = description.info
        metadata: Metadata = {
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "described_by": description.provider,
        }
        if info.frames > 1:
            metadata["frames"] = info.frames
        if info.taken:
            metadata["taken"] = info.taken
        if info.camera:
            metadata["camera"] = info.camera
        summary = info.summary()
        text = description.text or summary
        context = (
            f"{display_name(source.name)} ({summary})" if description.text else display_name(source.name)
        )
        spans = [Span(s, e) for s, e in split_text(text, budget.for_head(context))]
        return build_chunks(
            text, spans, kind=self.kind, name=source.name, context=context, metadata=metadata, budget=budget
        )
