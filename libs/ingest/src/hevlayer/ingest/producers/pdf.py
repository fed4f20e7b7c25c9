"""PDF: the text of each page (pypdf), packed up to the budget; chunks carry their page."""

from __future__ import annotations

import io
import logging

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
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


def page_texts(data: bytes) -> tuple[list[str], str]:
    """The text of every page and the document's title (``""`` if none)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception as exc:
                raise ProducerError(f"encrypted PDF: {exc}") from None
        title = ""
        try:
            info = reader.metadata
            if info is not None and info.title:
                title = str(info.title)
        except Exception:  # metadata is optional; a broken info dictionary does not stop the text
            title = ""
        pages = [page.extract_text() or "" for page in reader.pages]
    except ProducerError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise ProducerError.unreadable("PDF", exc) from None
    return pages, title


class PdfProducer(Producer):
    """PDF documents, page by page."""

    kind = "pdf"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".pdf",)

    def sniff(self, head: bytes) -> bool:
        return head.lstrip()[:5] == b"%PDF-"

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        pages, title = page_texts(source.data)
        context = display_name(source.name) + (f": {one_line(title, 160)}" if title else "")
        chunks: list[Chunk] = []
        within = budget.for_head(context)
        for number, text in enumerate(pages, start=1):
            spans = [Span(s, e, extra=(("page", number),)) for s, e in split_text(text, within)]
            chunks.extend(
                build_chunks(
                    text,
                    spans,
                    kind=self.kind,
                    name=source.name,
                    context=context,
                    first_ordinal=len(chunks),
                    locator=f"page{number}",
                    metadata={"title": one_line(title)} if title else None,
                    budget=budget,
                )
            )
        return chunks
