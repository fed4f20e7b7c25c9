"""Jupyter notebooks (``.ipynb``, read as plain JSON; nbformat 4, and 3's worksheets).

Each markdown, code and raw cell is a unit packed up to the budget on its
own (a chunk never spans two cells). A code cell's text is its source, then
its outputs' text (``stream`` text and ``text/plain`` results, at most
``MAX_OUTPUT_CHARS`` per cell; images and HTML outputs are left out). Chunks
carry ``cell`` (the cell's 1-based position), ``cell_type`` and, as their
title, the heading path of the markdown above them.
"""

from __future__ import annotations

import json
from typing import Any

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    Span,
    build_chunks,
    decode_text,
    display_name,
    one_line,
    split_text,
)
from hevlayer.ingest.producers.markdown import sections

MAX_OUTPUT_CHARS = 2000
"""Most characters of one code cell's outputs kept."""


def _source(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(item) for item in value)
    return value if isinstance(value, str) else ""


def _outputs(outputs: Any) -> str:
    if not isinstance(outputs, list):
        return ""
    texts: list[str] = []
    for output in outputs:
        if not isinstance(output, dict):
            continue
        if output.get("output_type") == "stream" or "text" in output:
            texts.append(_source(output.get("text")))
        data = output.get("data")
        if isinstance(data, dict) and "text/plain" in data:
            texts.append(_source(data["text/plain"]))
        if output.get("output_type") == "error":
            texts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}")
    text = "\n".join(t.strip("\n") for t in texts if t.strip())
    return text if len(text) <= MAX_OUTPUT_CHARS else text[: MAX_OUTPUT_CHARS - 1].rstrip() + "…"


def notebook_cells(data: bytes) -> tuple[list[dict[str, Any]], str]:
    """The cells of a notebook and its language; ProducerError if it is not one."""
    try:
        document = json.loads(decode_text(data))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProducerError(f"invalid notebook JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProducerError("invalid notebook: the top level is not a JSON object")
    cells = document.get("cells")
    if cells is None and isinstance(document.get("worksheets"), list):  # nbformat 3
        cells = [
            c for sheet in document["worksheets"] if isinstance(sheet, dict) for c in sheet.get("cells", [])
        ]
    if not isinstance(cells, list):
        raise ProducerError("invalid notebook: no 'cells' list")
    found = document.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    language = ""
    for key in ("language_info", "kernelspec"):
        section = metadata.get(key)
        if isinstance(section, dict):
            language = str(section.get("name" if key == "language_info" else "language") or "")
            if language:
                break
    return [cell for cell in cells if isinstance(cell, dict)], language


class NotebookProducer(Producer):
    """Jupyter notebooks, cell by cell."""

    kind = "notebook"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".ipynb",)

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        cells, language = notebook_cells(source.data)
        pieces: list[str] = []
        ranges: list[tuple[int, int, int, str, str]] = []  # start, end, cell number, type, heading path
        position = 0
        heading: tuple[str, ...] = ()
        for number, cell in enumerate(cells, start=1):
            cell_type = str(cell.get("cell_type") or "raw")
            text = _source(cell.get("source", cell.get("input"))).strip("\n")
            if cell_type == "markdown":
                paths = [s.path for s in sections(text) if s.path]
                if paths:
                    heading = paths[-1]
            elif cell_type == "code":
                output = _outputs(cell.get("outputs"))
                if output:
                    text = f"{text}\n\nOutput:\n{output}" if text.strip() else f"Output:\n{output}"
            if not text.strip():
                continue
            if pieces:
                position += 2
            ranges.append((position, position + len(text), number, cell_type, " > ".join(heading)))
            pieces.append(text)
            position += len(text)
        body = "\n\n".join(pieces)
        index = budget.index(body)
        context = display_name(source.name) + (f" ({one_line(language, 40)} notebook)" if language else "")
        spans: list[Span] = []
        for start, end, number, cell_type, title in ranges:
            extra = (("cell", number), ("cell_type", cell_type))
            within = budget.for_head(context, title=title)
            spans.extend(
                Span(s, e, title, extra=extra) for s, e in split_text(body, within, start, end, index)
            )
        return build_chunks(
            body,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            metadata={"language": language} if language else None,
            budget=budget,
            index=index,
        )
