"""Plain text: paragraphs packed up to the budget, with overlap when a paragraph is split."""

from __future__ import annotations

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    LineIndex,
    Producer,
    Source,
    Span,
    build_chunks,
    decode_text,
    display_name,
    looks_binary,
    split_text,
)


class TextProducer(Producer):
    """Any readable text (the fallback for unknown extensions that are not binary)."""

    kind = "text"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".txt", ".text", ".rst", ".log", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".tex")
    filenames = ("README", "LICENSE", "COPYING", "NEWS", "CHANGES", "AUTHORS")

    def sniff(self, head: bytes) -> bool:
        return not looks_binary(head)

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        text = decode_text(source.data)
        context = display_name(source.name)
        index = budget.index(text)
        spans = [Span(s, e) for s, e in split_text(text, budget.for_head(context), index=index)]
        return build_chunks(
            text,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            lines=LineIndex(text),
            budget=budget,
            index=index,
        )
