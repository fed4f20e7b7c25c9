"""Chunk budgets in the embedding model's own tokens (hypothesis where the input is free).

- The tokenizer shipped with hevlayer-ingest is the model's, byte for byte, and counts as the
  model's does; its token counts of slices cut between words add up.
- Every chunk's embedded text (context line and body, with [CLS] and [SEP]) fits the model's
  256-token window, counted by the model package's own tokenizer, for every kind: with the
  default budget, and with budgets whose window and body size vary (long context lines are
  shortened, bodies never); the splitter's own guarantees hold in the model's tokens.
- ``Budget(tokenizer="regex")`` keeps the ``TOKEN`` count and sets no window.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import assert_covers, assert_within_budget, chunk_spans, make_pdf
from support.sample_files import (
    code_cell,
    make_docx,
    make_mbox,
    make_message,
    make_notebook,
    make_pptx,
    markdown_cell,
)
from tokenizers import Tokenizer

from hevlayer.ingest.producers import DEFAULT_BUDGET, Budget, Chunk, Source, select_producer
from hevlayer.ingest.producers.base import MODEL_MAX_TOKENS, REGEX_BUDGET, TOKEN, TokenIndex, split_text
from hevlayer.ingest.tokenizer import MINILM, MINILM_TOKENIZER_FILE, MINILM_TOKENIZER_SHA256, REGEX
from hevlayer.triton import onnx_model

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def model_tokenizer() -> Tokenizer:
    """The tokenizer of the model package Triton serves (not hevlayer-ingest's copy)."""
    tokenizer = Tokenizer.from_file(str(onnx_model.minilm_files().tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def model_tokens(text: str) -> int:
    """What the model is given for ``text``: its tokens with [CLS] and [SEP], before truncation."""
    return len(model_tokenizer().encode(text).ids)


def check_window(chunks: list[Chunk], budget: Budget) -> None:
    limit = budget.text_limit
    assert limit, budget
    for chunk in chunks:
        assert model_tokens(chunk.text) <= limit, (chunk.id, model_tokens(chunk.text), chunk.text)
        assert chunk.text.endswith(chunk.body), "the body is never shortened"


def produce(kind: str, name: str, data: bytes, budget: Budget) -> list[Chunk]:
    producer = select_producer(kind)
    chunks = producer.produce(Source(f"/w/{name}", name, data), budget)
    assert [c.id for c in chunks] == [
        c.id for c in producer.produce(Source(f"/w/{name}", name, data), budget)
    ]
    return chunks


# -- the tokenizer ---------------------------------------------------------------------------------


def test_the_shipped_tokenizer_is_the_models() -> None:
    shipped = importlib.resources.files("hevlayer.ingest").joinpath(MINILM_TOKENIZER_FILE)
    assert shipped.is_file(), "tokenizer.json is package data of hevlayer.ingest"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert digest == MINILM_TOKENIZER_SHA256 == onnx_model.MINILM_TOKENIZER_SHA256
    assert hashlib.sha256(onnx_model.minilm_files().tokenizer_path.read_bytes()).hexdigest() == digest


# Words, subwords, punctuation, CJK, accents and marks, emoji, control characters, long words.
pieces = st.sampled_from(
    [
        "word", "longerwordthatgoesonandon", "unbelievably", "x", "42", ".", ",", "(", ")", "#", "-", "é",
        "e\u0301", "日本語", "ǅ", "\u0301", "🙂", " ", "  ", "\t", "\n", "\n\n", "\n \n", "\r\n", "\u00a0",
        "\x07", "_", "a_b_c", "def", ":", "'", '"', "self._cache_key", "İstanbul", "ﬁne", "a" * 120,
    ]
)  # fmt: skip
texts = st.lists(pieces, max_size=400).map("".join) | st.text(max_size=400)


@SETTINGS
@given(texts)
def test_counts_are_the_models_and_add_up_between_words(text: str) -> None:
    assert MINILM.count(text) == model_tokens(text) - 2
    index = TokenIndex(text, MINILM)
    assert len(index.starts) == MINILM.count(text)
    words = [*index.words, len(text)]
    for first, last in zip(words, words[3:], strict=False):
        assert index.count(first, last) == MINILM.count(text[first:last]), (first, last)


@SETTINGS
@given(texts, st.integers(0, 40))
def test_prefix_keeps_at_most_the_tokens_asked(text: str, tokens: int) -> None:
    for counter in (MINILM, REGEX):
        kept = counter.prefix(text, tokens)
        assert text.startswith(kept)
        assert counter.count(kept) <= tokens
        assert counter.count(kept) == min(tokens, counter.count(text))


# -- the window, per kind ----------------------------------------------------------------------------

budgets = st.just(DEFAULT_BUDGET) | st.builds(
    lambda window, max_tokens, overlap, chars, rows: Budget(
        max_tokens=max_tokens,
        overlap_tokens=min(overlap, max_tokens - 1),
        max_chars=chars,
        max_rows=rows,
        max_text_tokens=window,
    ),
    st.integers(204, MODEL_MAX_TOKENS),
    st.integers(100, 400),
    st.integers(0, 40),
    st.integers(400, 3000),
    st.integers(1, 20),
)
"""The default, and windows whose bodies still take any word whole (a word is at most 100
tokens and 100 characters, and a body may take at least half the window)."""

long_lines = st.lists(pieces, min_size=1, max_size=60).map("".join).map(" ".join)
"""Text for headings, titles and docstrings: long enough to take much of the window."""


def check_text_like(kind: str, name: str, text: str, budget: Budget, covered: str | None = None) -> None:
    chunks = produce(kind, name, text.encode("utf-8", errors="surrogatepass"), budget)
    check_window(chunks, budget)
    whole = (
        covered if covered is not None else text.encode("utf-8", errors="surrogatepass").decode("utf-8-sig")
    )
    spans = chunk_spans(whole, chunks)
    assert_covers(whole, spans)
    assert_within_budget(whole, spans, budget)


@SETTINGS
@given(texts, budgets)
def test_text_chunks_fit_the_window(text: str, budget: Budget) -> None:
    check_text_like("text", "notes/plain.txt", text, budget)


@SETTINGS
@given(st.lists(st.tuples(long_lines, texts), max_size=8), budgets)
def test_markdown_chunks_fit_the_window_under_long_headings(
    sections: list[tuple[str, str]], budget: Budget
) -> None:
    text = "\n\n".join(
        f"{'#' * (1 + n % 3)} {heading}\n\n{body}" for n, (heading, body) in enumerate(sections)
    )
    check_text_like("markdown", "docs/guide.md", text, budget)


@SETTINGS
@given(long_lines, st.lists(st.tuples(st.sampled_from(["def", "class"]), texts), max_size=6), budgets)
def test_python_chunks_fit_the_window_under_long_docstrings(
    docstring: str, definitions: list[tuple[str, str]], budget: Budget
) -> None:
    parts = [f'"""{docstring.replace(chr(92), "/").replace(chr(34), "")}"""']
    for number, (keyword, body) in enumerate(definitions):
        comment = "\n".join(f"    # {line}" for line in body.replace("\r", " ").splitlines() if line.strip())
        if keyword == "def":
            parts.append(f"def f{number}():\n{comment}\n    return {number}")
        else:
            parts.append(f"class C{number}:\n    size = 1\n\n    def m(self):\n{comment}\n        return 1")
    text = "\n\n".join(parts) + "\n"
    chunks = produce("code", "pkg/module.py", text.encode("utf-8", errors="surrogatepass"), budget)
    check_window(chunks, budget)
    assert_covers(text, chunk_spans(text, chunks))


@SETTINGS
@given(texts, budgets)
def test_code_that_does_not_parse_fits_the_window(text: str, budget: Budget) -> None:
    check_text_like("code", "src/any.c", text, budget)


@SETTINGS
@given(st.lists(st.tuples(long_lines, texts), max_size=6), long_lines, budgets)
def test_html_chunks_fit_the_window(sections: list[tuple[str, str]], title: str, budget: Budget) -> None:
    from html import escape

    markup = f"<title>{escape(title)}</title>" + "".join(
        f"<h2>{escape(heading)}</h2><p>{escape(body)}</p>" for heading, body in sections
    )
    chunks = produce("html", "site/page.html", markup.encode("utf-8", errors="surrogatepass"), budget)
    check_window(chunks, budget)


cell_values = st.text(st.characters(blacklist_categories=["Cs"]), max_size=60)


@SETTINGS
@given(st.lists(st.lists(cell_values, min_size=1, max_size=8), min_size=1, max_size=40), budgets)
def test_table_and_record_chunks_fit_the_window(rows: list[list[str]], budget: Budget) -> None:
    records = [{f"column_{i}_of_a_long_name": value for i, value in enumerate(row)} for row in rows]
    table = produce("table", "data/rows.json", json.dumps(records).encode(), budget)
    check_window(table, budget)
    lines = "\n".join(json.dumps(r) for r in records).encode()
    check_window(produce("record_collection", "data/rows.jsonl", lines, budget), budget)
    header = ",".join(f"column_{i}_of_a_long_name" for i in range(8))
    csv = header + "\n" + "\n".join(",".join(json.dumps(v) for v in row) for row in rows)
    check_window(
        produce("table", "data/rows.csv", csv.encode("utf-8", errors="surrogatepass"), budget), budget
    )


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), texts), max_size=8), budgets)
def test_notebook_chunks_fit_the_window(cells: list[tuple[bool, str]], budget: Budget) -> None:
    notebook: list[dict[str, Any]] = [
        markdown_cell(f"# {text}") if is_markdown else code_cell(text) for is_markdown, text in cells
    ]
    check_window(produce("notebook", "nb/analysis.ipynb", make_notebook(notebook), budget), budget)


@SETTINGS
@given(st.lists(st.tuples(long_lines, texts), min_size=1, max_size=4), budgets)
def test_mail_chunks_fit_the_window(messages: list[tuple[str, str]], budget: Budget) -> None:
    mails = [
        make_message("ada@example.org", " ".join(subject.split())[:300] or "s", body.replace("\r", "") or ".")
        for subject, body in messages
    ]
    check_window(produce("message_stream", "mail/inbox.mbox", make_mbox(mails), budget), budget)


@pytest.mark.parametrize("budget", [DEFAULT_BUDGET, Budget(max_tokens=120, overlap_tokens=20)])
def test_pdf_word_and_slides_chunks_fit_the_window(budget: Budget) -> None:
    long_page = " ".join(f"glacier{n} retreats, measured in 2026 at station-{n}." for n in range(300))
    pdf = make_pdf([long_page[:3000], "a short page"], title="Glaciers " * 40)
    chunks = produce("pdf", "papers/glaciers.pdf", pdf, budget)
    assert len(chunks) > 2, "the long page is split"
    check_window(chunks, budget)
    check_window(produce("docx", "docs/report.docx", make_docx(), budget), budget)
    check_window(produce("pptx", "docs/deck.pptx", make_pptx(), budget), budget)


# -- budgets ---------------------------------------------------------------------------------------


def test_a_long_context_line_is_shortened_never_the_body() -> None:
    heading = " ".join(f"heading{n}" for n in range(200))  # about 400 tokens on its own
    body = " ".join(f"sentence {n} of the section." for n in range(200))
    text = f"# {heading}\n\n{body}\n"
    chunks = produce("markdown", "guide.md", text.encode(), DEFAULT_BUDGET)
    check_window(chunks, DEFAULT_BUDGET)
    room = MODEL_MAX_TOKENS - 2
    for chunk in chunks:
        assert MINILM.count(chunk.body) <= room
        assert chunk.text.startswith("guide.md\n"), "the line is cut at its end"
    # Bodies take at least half the window, so the heading costs at most the other half.
    assert max(MINILM.count(c.body) for c in chunks) >= room // 2


def test_bodies_take_what_the_context_line_leaves() -> None:
    body = "\n".join(f"line {n}: the tide rises with the moon" for n in range(400))
    chunks = produce("text", "notes/tides.txt", body.encode(), DEFAULT_BUDGET)
    head = MINILM.count("notes/tides.txt")
    sizes = [MINILM.count(c.body) for c in chunks]
    assert max(sizes) <= MODEL_MAX_TOKENS - 2 - head
    assert sum(size >= MODEL_MAX_TOKENS - 2 - head - 12 for size in sizes[:-1]) == len(sizes) - 1, (
        "every chunk but the last is full to within one line (12 tokens)"
    )


@SETTINGS
@given(texts)
def test_the_regex_budget_counts_token_units_and_sets_no_window(text: str) -> None:
    assert REGEX_BUDGET.text_limit == 0
    assert REGEX_BUDGET.for_head("a very long context line " * 40) is REGEX_BUDGET
    spans = split_text(text, REGEX_BUDGET)
    assert_covers(text, spans)
    for start, end in spans:
        assert sum(1 for _ in TOKEN.finditer(text, start, end)) <= REGEX_BUDGET.max_tokens
        assert sum(1 for _ in TOKEN.finditer(text, start, end)) == TokenIndex(text).count(start, end)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tokenizer": "bpe"}, "tokenizer must be one of minilm, regex, not 'bpe'"),
        ({"tokenizer": "regex", "max_text_tokens": 256}, "max_text_tokens needs the model's tokenizer"),
        ({"max_text_tokens": 5}, "max_text_tokens must be at least 6"),
        ({"max_text_tokens": 512}, r"max_text_tokens must be at most 256 \(the model's window\)"),
    ],
)
def test_budget_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Budget(**fields)


def test_a_character_of_more_tokens_than_the_budget_is_a_body_of_its_own() -> None:
    """Found by hypothesis (a table cell of one Hangul syllable): the model's tokenizer makes two
    tokens of "게", both at the character's offsets. With a one-token budget the splitter cuts
    down to that character and no further, since nothing smaller can be cut; every other body
    stays within the budget and every character is covered."""
    text = "c0: 게"
    budget = Budget(max_tokens=1, overlap_tokens=0, max_chars=16)
    index = budget.index(text)
    assert index.count(4, 5) == 2
    spans = split_text(text, budget)
    assert_covers(text, spans)
    assert (4, 5) in spans
    assert all(index.count(s, e) <= 1 for s, e in spans if (s, e) != (4, 5))


def test_a_control_character_beside_such_a_character_stays_with_it() -> None:
    """Found by hypothesis (a JSON Lines value "레\x1b"): the tokenizer makes two tokens of "레" and
    none of the escape character after it, so the body "레\x1b" has two tokens, both in one
    character; it is not cut, and the property checks accept it as they accept "레" alone."""
    text = "value: 레\x1b"
    budget = Budget(max_tokens=1, overlap_tokens=0, max_chars=16)
    index = budget.index(text)
    assert index.count(7, 8) == 2
    assert index.count(8, 9) == 0
    spans = split_text(text, budget)
    assert_covers(text, spans)
    assert_within_budget(text, spans, budget)
    assert all(index.count(s, e) <= 1 for s, e in spans if s != 7)
