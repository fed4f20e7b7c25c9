"""PowerPoint presentations (``.pptx``, read with python-pptx).

Each slide is one unit packed up to the budget on its own: its title, the
text of its other shapes (text frames, tables row by row, grouped shapes) in
the slide's order, then its speaker notes. Chunks carry ``slide`` (1-based)
and the slide's title as their title. Legacy binary ``.ppt`` files are not
read.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    PACKAGE_ERRORS,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    Span,
    build_chunks,
    display_name,
    one_line,
    split_text,
)


def _shape_texts(shapes: Iterable[Any]) -> Iterator[str]:
    for shape in shapes:
        if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):  # a group
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_table", False):
            rows = [[" ".join(cell.text.split()) for cell in row.cells] for row in shape.table.rows]
            lines = [" | ".join(c for c in cells if c) for cells in rows if any(cells)]
            if lines:
                yield "\n".join(lines)
        elif getattr(shape, "has_text_frame", False):
            text = shape.text_frame.text.strip()
            if text:
                yield text


def slide_texts(data: bytes) -> tuple[list[tuple[str, str]], str]:
    """``(title, text)`` of every slide (title first in the text, notes last) and the deck's title."""
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    unreadable: tuple[type[Exception], ...] = (PackageNotFoundError, *PACKAGE_ERRORS)
    try:
        deck: Any = Presentation(io.BytesIO(data))
        deck_title = str(deck.core_properties.title or "")
        slides: list[tuple[str, str]] = []
        for slide in deck.slides:
            title_shape = slide.shapes.title
            title = title_shape.text_frame.text.strip() if title_shape is not None else ""
            others = [s for s in slide.shapes if title_shape is None or s.shape_id != title_shape.shape_id]
            parts = [title] if title else []
            parts.extend(_shape_texts(others))
            if slide.has_notes_slide:
                notes = slide.notes_slide.notes_text_frame
                if notes is not None and notes.text.strip():
                    parts.append("Notes: " + notes.text.strip())
            slides.append((title, "\n\n".join(parts)))
    except unreadable as exc:
        raise ProducerError.unreadable("PowerPoint file", exc) from None
    return slides, deck_title


class SlidesProducer(Producer):
    """PowerPoint presentations (Office Open XML), slide by slide."""

    kind = "pptx"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".pptx", ".pptm")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        slides, deck_title = slide_texts(source.data)
        pieces: list[str] = []
        ranges: list[tuple[int, int, int, str]] = []
        position = 0
        for number, (title, text) in enumerate(slides, start=1):
            if not text.strip():
                continue
            start = position + (2 if pieces else 0)
            ranges.append((start, start + len(text), number, title))
            pieces.append(text)
            position = start + len(text)
        body = "\n\n".join(pieces)
        index = budget.index(body)
        context = display_name(source.name) + (f": {one_line(deck_title, 160)}" if deck_title else "")
        spans = [
            Span(s, e, title, extra=(("slide", number),))
            for start, end, number, title in ranges
            for s, e in split_text(body, budget.for_head(context, title=title), start, end, index)
        ]
        return build_chunks(
            body, spans, kind=self.kind, name=source.name, context=context, budget=budget, index=index
        )
