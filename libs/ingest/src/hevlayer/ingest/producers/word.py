"""Word documents (``.docx``, read with python-docx).

The body's paragraphs and tables are read in document order; a table becomes
one line per row (``cell | cell``). Paragraphs styled ``Title`` or
``Heading N`` start sections, and the heading path is the chunks' title, as
for Markdown. The core properties' title, when set, joins the context line.
Legacy binary ``.doc`` files are not read.
"""

from __future__ import annotations

import io
import re
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

_HEADING = re.compile(r"(?:Heading|heading)\s*(\d)")


def _level(style_name: str) -> int:
    """The nesting level of a heading style (Title 1, Heading N N + 1), 0 for other paragraphs."""
    if style_name == "Title":
        return 1
    match = _HEADING.match(style_name)
    return int(match.group(1)) + 1 if match else 0


def blocks(data: bytes) -> tuple[list[tuple[str, int]], str]:
    """``(text, heading level or 0)`` of every paragraph and table row, and the document's title."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    unreadable: tuple[type[Exception], ...] = (PackageNotFoundError, *PACKAGE_ERRORS)
    try:
        document: Any = docx.Document(io.BytesIO(data))
        title = str(document.core_properties.title or "")
        result: list[tuple[str, int]] = []
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                style = item.style.name if item.style is not None else ""
                result.append((item.text, _level(str(style or ""))))
            elif isinstance(item, Table):
                for row in item.rows:
                    cells: list[str] = []
                    for cell in row.cells:
                        text = " ".join(cell.text.split())
                        if text and (not cells or cells[-1] != text):  # merged cells repeat
                            cells.append(text)
                    if cells:
                        result.append((" | ".join(cells), 0))
    except unreadable as exc:
        raise ProducerError.unreadable("Word document", exc) from None
    return result, title


class WordProducer(Producer):
    """Word documents (Office Open XML)."""

    kind = "docx"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".docx", ".docm")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        items, title = blocks(source.data)
        pieces: list[str] = []
        sections: list[tuple[int, int, str]] = []  # start, end, heading path
        stack: list[tuple[int, str]] = []
        position = 0
        section_start = 0
        for text, level in items:
            text = text.strip()
            if not text:
                continue
            start = position + (2 if pieces else 0)
            if level:
                if start > section_start:
                    sections.append((section_start, position, " > ".join(t for _, t in stack)))
                section_start = start
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, one_line(text, 120)))
            pieces.append(text)
            position = start + len(text)
        body = "\n\n".join(pieces)
        if position > section_start:
            sections.append((section_start, position, " > ".join(t for _, t in stack)))
        index = budget.index(body)
        context = display_name(source.name) + (f": {one_line(title, 160)}" if title else "")
        spans = [
            Span(s, e, path)
            for start, end, path in sections
            for s, e in split_text(body, budget.for_head(context, title=path), start, end, index)
        ]
        return build_chunks(
            body, spans, kind=self.kind, name=source.name, context=context, budget=budget, index=index
        )
