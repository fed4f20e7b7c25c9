"""Properties of the chunkers, for any input (hypothesis).

- Coverage: every non-whitespace character of the text is in some chunk body;
  only whitespace between units is dropped.
- Budgets: no body has more tokens or characters than the budget allows, and
  consecutive bodies of one text share at most ``overlap_tokens`` tokens.
- Ids: unique within a document, and the same for the same input.
"""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import assert_covers, assert_within_budget, chunk_spans

from hevlayer.ingest.producers import Budget, Source, select_producer
from hevlayer.ingest.producers.base import split_text
from hevlayer.ingest.producers.html import extract
from hevlayer.ingest.producers.table import json_rows, render

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with words, long words, punctuation, unicode letters and marks, and every kind of whitespace.
pieces = st.sampled_from(
    [
        "word", "longerwordthatgoesonandon", "x", "42", ".", ",", "(", ")", "#", "-", "é", "日本語",
        "ǅ", "\u0301", "🙂", " ", "  ", "\t", "\n", "\n\n", "\n \n", "\r\n", "\u00a0", "\u2028", "\x0c",
        "_", "a_b_c", "def", ":", "'", '"',
    ]
)  # fmt: skip
texts = st.lists(pieces, max_size=300).map("".join) | st.text(max_size=400)
budgets = st.builds(
    lambda max_tokens, overlap, chars: Budget(
        max_tokens=max_tokens, overlap_tokens=min(overlap, max_tokens - 1), max_chars=chars
    ),
    st.integers(1, 80),
    st.integers(0, 20),
    st.integers(16, 600),
)


def check_spans(text: str, spans: list[tuple[int, int]], budget: Budget) -> None:
    assert_covers(text, spans)
    assert_within_budget(text, spans, budget)
    index = budget.index(text)
    for start, end in spans:
        assert start < end
        assert not text[start].isspace(), "bodies are trimmed"
        assert not text[end - 1].isspace(), "bodies are trimmed"
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert index.count(second_start, first_end) <= budget.overlap_tokens


@SETTINGS
@given(texts, budgets)
def test_split_text_covers_everything_within_budget(text: str, budget: Budget) -> None:
    spans = split_text(text, budget)
    check_spans(text, spans, budget)
    assert split_text(text, budget) == spans


def check_chunks(kind: str, name: str, data: bytes, text: str, budget: Budget) -> None:
    producer = select_producer(kind)
    chunks = producer.produce(Source(f"/p/{name}", name, data), budget)
    spans = chunk_spans(text, chunks)
    assert_covers(text, spans)
    assert_within_budget(text, spans, budget)
    ids = [c.id for c in chunks]
    assert len(set(ids)) == len(ids)
    assert ids == [c.id for c in producer.produce(Source(f"/p/{name}", name, data), budget)]


@SETTINGS
@given(texts, budgets)
def test_text_producer(text: str, budget: Budget) -> None:
    data = text.encode("utf-8", errors="surrogatepass")
    check_chunks("text", "t.txt", data, data.decode("utf-8-sig"), budget)


markdown_lines = st.lists(
    st.sampled_from(["# Top", "## Sub section", "### Deep", "Title", "=====", "-----", "```", "~~~"])
    | st.lists(pieces, max_size=20).map("".join),
    max_size=60,
).map("\n".join)


@SETTINGS
@given(markdown_lines, budgets)
def test_markdown_producer(text: str, budget: Budget) -> None:
    data = text.encode("utf-8", errors="surrogatepass")
    check_chunks("markdown", "m.md", data, data.decode("utf-8-sig"), budget)


identifiers = st.sampled_from(["alpha", "beta", "gamma_delta", "run", "Thing", "x1"])
statement = st.builds(lambda name, n: f"{name} = {n}", identifiers, st.integers(0, 10**6)) | st.sampled_from(
    ["import os", "# a comment", "", "print('hello')", "if True:\n    pass"]
)


@st.composite
def python_modules(draw: st.DrawFn) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts.append('"""Module docstring.\n\nWith a second paragraph."""')
    for _ in range(draw(st.integers(0, 8))):
        shape = draw(st.sampled_from(["statement", "function", "class", "decorated", "comment"]))
        name = draw(identifiers)
        body_lines = [
            f"    {draw(statement)}".replace("\n", "\n    ") for _ in range(draw(st.integers(1, 12)))
        ]
        body = "\n".join(body_lines)
        if shape == "statement":
            parts.append(draw(statement))
        elif shape == "function":
            parts.append(f'def {name}(a, b=1):\n    """Doc of {name}."""\n{body}')
        elif shape == "decorated":
            parts.append(f"@decorator\nasync def {name}():\n{body}")
        elif shape == "comment":
            parts.append(f"# about {name}\n# more about it\ndef {name}():\n{body}")
        else:
            methods = "\n\n".join(
                f"    def m{i}(self):\n        '''Method {i}.'''\n"
                + body.replace("\n", "\n    ").replace("    ", "        ", 1)
                for i in range(draw(st.integers(0, 6)))
            )
            parts.append(f'class {name.title()}:\n    """Class doc."""\n\n    size = 3\n\n{methods}'.rstrip())
    separator = draw(st.sampled_from(["\n\n", "\n\n\n", "\n"]))
    return separator.join(parts) + draw(st.sampled_from(["", "\n", "\n\n"]))


@SETTINGS
@given(python_modules(), budgets)
def test_python_code_producer(text: str, budget: Budget) -> None:
    check_chunks("code", "mod.py", text.encode(), text, budget)


@SETTINGS
@given(texts, budgets)
def test_code_producer_on_any_text(text: str, budget: Budget) -> None:
    """Anything with a code extension (parsing or not) is still covered."""
    data = text.encode("utf-8", errors="surrogatepass")
    decoded = data.decode("utf-8-sig")
    check_chunks("code", "any.py", data, decoded, budget)
    check_chunks("code", "any.c", data, decoded, budget)


html_fragments = st.lists(
    st.sampled_from(
        ["<h1>", "</h1>", "<h2>", "</h2>", "<p>", "</p>", "<script>", "</script>", "<br>", "<pre>", "</pre>",
         "<li>", "<div>", "</div>", "&amp;", "<title>", "</title>"]
    ) | pieces,
    max_size=120,
).map("".join)  # fmt: skip


@SETTINGS
@given(html_fragments, budgets)
def test_html_producer_covers_the_extracted_text(markup: str, budget: Budget) -> None:
    data = markup.encode("utf-8", errors="surrogatepass")
    page = extract(data.decode("utf-8-sig"))
    check_chunks("html", "p.html", data, page.text, budget)


cells = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)


@SETTINGS
@given(st.lists(st.lists(cells, min_size=1, max_size=5), min_size=1, max_size=40), budgets)
def test_table_rows_keep_every_value(rows: list[list[str]], budget: Budget) -> None:
    records = [{f"c{i}": value for i, value in enumerate(row)} for row in rows]
    data = json.dumps(records).encode()
    _, parsed = json_rows(data.decode(), lines=False)
    rendered = "\n".join(render(row) for row in parsed)
    for row in rows:
        for value in row:
            assert " ".join(value.split()) in rendered
    check_chunks("table", "t.json", data, rendered, budget)
