"""HTML: the visible text (script, style and friends dropped), block elements as
paragraphs, one section per heading; the heading path is the title."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    Source,
    Span,
    build_chunks,
    decode_text,
    display_name,
    one_line,
    split_text,
)

_DROPPED = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "br", "dd", "details", "div", "dl", "dt",
        "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
        *_HEADINGS,
    }
)  # fmt: skip
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "wbr", "source", "area", "base", "col"})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class HtmlText:
    """The extracted text, its sections ``(start, end, heading path)`` and the page title."""

    text: str
    sections: list[tuple[int, int, tuple[str, ...]]]
    title: str


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, int]] = []  # (text, heading level or 0)
        self.current: list[str] = []
        self.dropped = 0
        self.pre = 0
        self.in_title = False
        self.title_parts: list[str] = []
        self.heading = 0

    def flush(self) -> None:
        raw = "".join(self.current)
        self.current = []
        text = raw.strip("\n") if self.pre else _SPACES.sub(" ", raw).strip()
        if text.strip():
            self.blocks.append((text, self.heading))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _DROPPED:
            if tag not in _VOID:
                self.dropped += 1
            return
        if tag in _BLOCKS:
            self.flush()
        if tag in _HEADINGS:
            self.heading = _HEADINGS[tag]
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _DROPPED:
            self.dropped = max(0, self.dropped - 1)
            return
        if tag in _BLOCKS:
            self.flush()
        if tag in _HEADINGS:
            self.heading = 0
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
            return
        if self.dropped:
            return
        self.current.append(data)


def extract(markup: str) -> HtmlText:
    """The visible text of an HTML document, blocks separated by blank lines."""
    parser = _Extractor()
    parser.feed(markup)
    parser.close()
    parser.flush()
    title = one_line("".join(parser.title_parts))
    parts: list[str] = []
    sections: list[tuple[int, int, tuple[str, ...]]] = []
    stack: list[tuple[int, str]] = []
    position = 0
    section_start = 0
    path: tuple[str, ...] = ()
    for text, level in parser.blocks:
        if level:
            if position > section_start:
                sections.append((section_start, position, path))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, one_line(text, 120)))
            path = tuple(t for _, t in stack)
            section_start = position
        parts.append(text)
        position += len(text) + 2
    body = "\n\n".join(parts)
    if len(body) > section_start or not sections:
        sections.append((section_start, len(body), path))
    return HtmlText(body, sections, title)


class HtmlProducer(Producer):
    """HTML pages."""

    kind = "html"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".html", ".htm", ".xhtml")

    def sniff(self, head: bytes) -> bool:
        start = head.lstrip()[:200].lower()
        return start.startswith((b"<!doctype html", b"<html")) or b"<html" in start

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        page = extract(decode_text(source.data))
        index = budget.index(page.text)
        context = display_name(source.name) + (f": {page.title}" if page.title else "")
        spans: list[Span] = []
        for start, end, path in page.sections:
            title = " > ".join(path)
            within = budget.for_head(context, title=title)
            spans.extend(Span(s, e, title) for s, e in split_text(page.text, within, start, end, index))
        return build_chunks(
            page.text,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            budget=budget,
            index=index,
        )
