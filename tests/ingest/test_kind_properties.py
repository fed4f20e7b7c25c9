"""Properties of the new parsers, for any input (hypothesis).

- JSON Lines: every record is in some chunk, within budget, with line numbers
  that cover exactly the non-blank lines; a bad line anywhere is named.
- mbox: what :mod:`mailbox` writes, the message producer reads back message by
  message (sender, subject, body), ``From `` lines in bodies included.
- Notebooks: one chunk group per non-empty cell, in order, covering its text.
- Damaged binary files (Word, PowerPoint, Parquet, mail, notebooks): chunks or a
  ProducerError, never another exception.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import assert_covers, assert_within_budget, chunk_spans
from support.sample_files import (
    code_cell,
    make_docx,
    make_mbox,
    make_message,
    make_notebook,
    make_parquet,
    make_pptx,
    markdown_cell,
)

from hevlayer.ingest.producers import Budget, ProducerError, Source, chunk_kinds, select_producer
from hevlayer.ingest.producers.table import _flatten, render

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

budgets = st.builds(
    lambda max_tokens, overlap, chars, rows: Budget(
        max_tokens=max_tokens, overlap_tokens=min(overlap, max_tokens - 1), max_chars=chars, max_rows=rows
    ),
    st.integers(1, 80),
    st.integers(0, 20),
    st.integers(16, 600),
    st.integers(1, 10),
)
keys = st.sampled_from(["id", "name", "tags", "user", "é", "a b", "count"])
scalars = st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(keys, values, max_size=5) | scalars


@SETTINGS
@given(st.lists(st.tuples(records, st.booleans()), max_size=25), budgets)
def test_json_lines_records_are_all_chunked_with_their_lines(
    items: list[tuple[Any, bool]], budget: Budget
) -> None:
    lines: list[str] = []
    record_lines: list[int] = []
    for record, blank_before in items:
        if blank_before:
            lines.append("")
        lines.append(json.dumps(record))
        record_lines.append(len(lines))
    data = "\n".join(lines).encode()
    chunks = select_producer("record_collection").produce(Source("/r/x.jsonl", "x.jsonl", data), budget)
    rendered = "\n".join(render(list(_flatten(record))) for record, _ in items)
    spans = chunk_spans(rendered, chunks)
    assert_covers(rendered, spans)
    assert_within_budget(rendered, spans, budget)
    lines_of_chunks = {
        line
        for chunk in chunks
        for line in record_lines
        if int(chunk.metadata["line"]) <= line <= int(chunk.metadata["end_line"])
    }
    nonempty = [
        line for (record, _), line in zip(items, record_lines, strict=True) if render(list(_flatten(record)))
    ]
    assert set(nonempty) <= lines_of_chunks
    assert all(int(c.metadata["line"]) in record_lines for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)


@SETTINGS
@given(st.lists(records, min_size=1, max_size=10), st.data())
def test_a_bad_json_line_is_named_wherever_it_is(items: list[Any], data: st.DataObject) -> None:
    lines = [json.dumps(record) for record in items]
    position = data.draw(st.integers(0, len(lines)))
    lines.insert(position, data.draw(st.sampled_from(["{", "nope", '{"a": }', "[1, 2", "'single'"])))
    with pytest.raises(ProducerError, match=f"invalid JSON on line {position + 1}:"):
        select_producer("record_collection").produce(
            Source("/r/x.jsonl", "x.jsonl", "\n".join(lines).encode())
        )


words = st.sampled_from(["tide", "moon", "From", "from", "orbit", "Grüße", "日本", "42", "x", "--", "."])
body_lines = st.lists(words, min_size=1, max_size=8).map(" ".join)
bodies = st.lists(body_lines, min_size=1, max_size=6).map("\n".join)
subjects = st.lists(words, min_size=1, max_size=6).map(" ".join)
senders = st.sampled_from(["ada@example.org", "Alan Turing <alan@example.org>", "grace@example.com"])


@SETTINGS
@given(st.lists(st.tuples(senders, subjects, bodies), min_size=1, max_size=5))
def test_an_mbox_written_by_mailbox_reads_back_message_by_message(
    messages: list[tuple[str, str, str]],
) -> None:
    data = make_mbox([make_message(sender, subject, body) for sender, subject, body in messages])
    budget = Budget(max_tokens=4000, overlap_tokens=0, max_chars=40000)
    chunks = select_producer("message_stream").produce(Source("/m/x.mbox", "x.mbox", data), budget)
    assert [c.metadata["message"] for c in chunks] == list(range(1, len(messages) + 1))
    for chunk, (sender, subject, body) in zip(chunks, messages, strict=True):
        assert chunk.metadata["sender"] == sender
        assert chunk.metadata["subject"] == subject
        assert chunk.body.endswith("\n\n" + body), (chunk.body, body)


cells = st.lists(
    st.tuples(st.sampled_from(["markdown", "code", "raw"]), st.lists(body_lines, max_size=4).map("\n".join)),
    max_size=12,
)


@SETTINGS
@given(cells, budgets)
def test_notebook_chunks_follow_the_cells(notebook: list[tuple[str, str]], budget: Budget) -> None:
    document = [
        {"cell_type": kind, "metadata": {}, "source": text, **({"outputs": []} if kind == "code" else {})}
        for kind, text in notebook
    ]
    chunks = select_producer("notebook").produce(
        Source("/n/x.ipynb", "x.ipynb", make_notebook(document)), budget
    )
    expected = [n for n, (_, text) in enumerate(notebook, start=1) if text.strip()]
    assert sorted({int(c.metadata["cell"]) for c in chunks}) == expected
    # The producer's text: the non-empty cells, blank-line separated; each chunk inside its cell.
    ranges: dict[int, tuple[int, int]] = {}
    pieces: list[str] = []
    position = 0
    for number in expected:
        text = notebook[number - 1][1].strip("\n")
        position += 2 if pieces else 0
        ranges[number] = (position, position + len(text))
        pieces.append(text)
        position += len(text)
    full = "\n\n".join(pieces)
    spans = chunk_spans(full, chunks)
    assert_covers(full, spans)
    assert_within_budget(full, spans, budget)
    for chunk, (start, end) in zip(chunks, spans, strict=True):
        first, last = ranges[int(chunk.metadata["cell"])]
        assert first <= start <= end <= last
        assert chunk.metadata["cell_type"] == notebook[int(chunk.metadata["cell"]) - 1][0]
    assert [int(c.metadata["cell"]) for c in chunks] == sorted(int(c.metadata["cell"]) for c in chunks)


DAMAGED = {
    "docx": ("a.docx", make_docx()),
    "pptx": ("a.pptx", make_pptx()),
    "table": ("a.parquet", make_parquet()),
    "message_stream": ("a.mbox", make_mbox([make_message("a@example.org", "s", "b", html="<p>h</p>")])),
    "notebook": ("a.ipynb", make_notebook([markdown_cell("# T"), code_cell("x", [{"text": "1"}])])),
}


@SETTINGS
@given(
    st.sampled_from(sorted(DAMAGED)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12),
    st.none() | st.floats(0, 1),
)
def test_a_damaged_file_gives_chunks_or_a_producer_error(
    kind: str, edits: list[tuple[float, int]], cut: float | None
) -> None:
    name, data = DAMAGED[kind]
    damaged = bytearray(data)
    for where, value in edits:
        damaged[int(where * len(damaged))] = value
    if cut is not None:
        damaged = damaged[: int(cut * len(damaged))]
    reason = ""
    try:
        chunks = select_producer(kind).produce(Source(f"/d/{name}", name, bytes(damaged)))
    except ProducerError as exc:
        reason = str(exc) or "(empty message)"
        chunks = []
    assert not reason.startswith("(empty"), "a ProducerError says why"
    assert all(c.body and c.metadata["kind"] in chunk_kinds() for c in chunks)
