"""Producers: one per object kind, chosen by ``select_producer(kind)``.

Adding a kind is one module (a :class:`Producer` subclass with its ``kind``,
``extensions`` and ``produce``) and one ``register(...)`` line below. Kind
detection (:func:`detect_kind`) asks the registered producers in order: the
file name's extension or exact name first, then each producer's ``sniff`` of
the first bytes, the text producer last as the catch-all for anything that is
not binary.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    content_hash,
    looks_binary,
)
from hevlayer.ingest.producers.code import CodeProducer
from hevlayer.ingest.producers.html import HtmlProducer
from hevlayer.ingest.producers.image import ImageProducer
from hevlayer.ingest.producers.markdown import MarkdownProducer
from hevlayer.ingest.producers.message import MessageProducer
from hevlayer.ingest.producers.notebook import NotebookProducer
from hevlayer.ingest.producers.pdf import PdfProducer
from hevlayer.ingest.producers.records import RecordsProducer
from hevlayer.ingest.producers.slides import SlidesProducer
from hevlayer.ingest.producers.table import TableProducer
from hevlayer.ingest.producers.text import TextProducer
from hevlayer.ingest.producers.word import WordProducer

__all__ = [
    "DEFAULT_BUDGET",
    "Budget",
    "Chunk",
    "Producer",
    "ProducerError",
    "Source",
    "UnsupportedKind",
    "chunk_kinds",
    "content_hash",
    "detect_kind",
    "kinds",
    "register",
    "select_producer",
    "unsupported_reason",
]

_REGISTRY: dict[str, Producer] = {}


class UnsupportedKind(LookupError):
    """No producer is registered for the kind."""


def register(producer: Producer) -> Producer:
    """Add ``producer`` for its kind (a kind has one producer)."""
    if producer.kind in _REGISTRY:
        raise ValueError(f"a producer for kind {producer.kind!r} is already registered")
    _REGISTRY[producer.kind] = producer
    return producer


def select_producer(kind: str) -> Producer:
    """The producer of ``kind``; UnsupportedKind if there is none."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise UnsupportedKind(f"no producer for kind {kind!r}") from None


def kinds() -> list[str]:
    """The registered kinds, in detection order."""
    return list(_REGISTRY)


def chunk_kinds() -> list[str]:
    """Every chunk kind the producers write (metadata ``kind``): the kinds, then their extra ones."""
    extra = [k for p in _REGISTRY.values() for k in p.extra_chunk_kinds if k not in _REGISTRY]
    return [*_REGISTRY, *dict.fromkeys(extra)]


def detect_kind(name: str, head: bytes) -> str | None:
    """The kind of a file from its name and first bytes; None when no producer takes it."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    for producer in _REGISTRY.values():
        if path.name in producer.filenames:
            return producer.kind
    for producer in _REGISTRY.values():
        if suffix and suffix in producer.extensions:
            return producer.kind
    for producer in _REGISTRY.values():
        if producer.sniff(head):
            return producer.kind
    return None


def unsupported_reason(name: str, head: bytes) -> str:
    """Why ``detect_kind`` found no producer (for the report)."""
    if looks_binary(head):
        suffix = PurePosixPath(name).suffix
        return f"binary file{f' ({suffix})' if suffix else ''}; no producer for it"
    return "no producer recognizes this file"


# The registrations, in detection order. Binary kinds (PDF, images, Parquet
# tables) come first: their extension or magic bytes decide before any text
# sniffing. The text producer sniffs any non-binary content, so it stays last.
register(PdfProducer())
register(ImageProducer())
register(HtmlProducer())
register(MarkdownProducer())
register(TableProducer())
register(RecordsProducer())
register(NotebookProducer())
register(MessageProducer())
register(WordProducer())
register(SlidesProducer())
register(CodeProducer())
register(TextProducer())
