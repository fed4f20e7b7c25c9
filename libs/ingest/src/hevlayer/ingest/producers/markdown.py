"""Markdown: one section per heading (ATX ``#`` and setext underlines, not inside
fenced code), each section packed up to the budget; the heading path is the title."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    split_text,
)

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class Section:
    """A heading's section: ``text[start:end]`` (heading line included) and its heading path."""

    start: int
    end: int
    path: tuple[str, ...]


def sections(text: str) -> list[Section]:
    """The sections of a Markdown text, in order; they partition the text."""
    lines = text.split("\n")
    offsets: list[int] = []
    position = 0
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    headings: list[tuple[int, int, str]] = []  # (line number, level, title)
    fence: str | None = None
    for number, line in enumerate(lines):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        atx = _ATX.match(line)
        if atx:
            headings.append((number, len(atx.group(1)), (atx.group(2) or "").strip()))
            continue
        setext = _SETEXT.match(line)
        if setext and number > 0 and lines[number - 1].strip() and not _ATX.match(lines[number - 1]):
            if headings and headings[-1][0] == number - 1:
                continue
            level = 1 if setext.group(1)[0] == "=" else 2
            headings.append((number - 1, level, lines[number - 1].strip()))
    result: list[Section] = []
    stack: list[tuple[int, str]] = []
    first = headings[0][0] if headings else len(lines)
    if first > 0:
        result.append(Section(0, offsets[first] if first < len(lines) else len(text), ()))
    for position_in_list, (number, level, title) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        following = headings[position_in_list + 1][0] if position_in_list + 1 < len(headings) else None
        end = offsets[following] if following is not None else len(text)
        result.append(Section(offsets[number], end, tuple(t for _, t in stack if t)))
    return result


class MarkdownProducer(Producer):
    """Markdown files."""

    kind = "markdown"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".md", ".markdown", ".mdown", ".mkd")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        text = decode_text(source.data)
        index = budget.index(text)
        context = display_name(source.name)
        spans: list[Span] = []
        for section in sections(text):
            title = " > ".join(section.path)
            within = budget.for_head(context, title=title)
            spans.extend(
                Span(s, e, title) for s, e in split_text(text, within, section.start, section.end, index)
            )
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
