"""The spec's other kinds on files the tests generate: message streams (mbox, .eml), notebooks,
record collections (JSON Lines), table schemas (CSV, Parquet), Word and PowerPoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import assert_covers, chunk_spans
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

from hevlayer.ingest.files import FileEntry, Root, Skipped, examine
from hevlayer.ingest.producers import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    ProducerError,
    Source,
    chunk_kinds,
    detect_kind,
    kinds,
    select_producer,
)
from hevlayer.ingest.producers.message import split_mbox
from hevlayer.ingest.producers.notebook import MAX_OUTPUT_CHARS


def produce(kind: str, name: str, data: bytes, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
    return select_producer(kind).produce(Source(f"/corpus/{name}", name, data), budget)


def test_the_registry_holds_every_kind_of_the_spec_with_text_last() -> None:
    assert kinds() == [
        "pdf", "image", "html", "markdown", "table", "record_collection", "notebook",
        "message_stream", "docx", "pptx", "code", "text",
    ]  # fmt: skip
    for kind in kinds():
        assert select_producer(kind).version >= 1
    assert chunk_kinds() == [*kinds(), "table_schema"], "search --kind offers the schema chunks too"


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("inbox.mbox", b"From a@b Thu Dec  4 15:00:00 2026\n", "message_stream"),
        ("Inbox", b"From MAILER-DAEMON Thu Dec  4 15:00:00 2026\nFrom: a@b\n", "message_stream"),
        ("note.eml", b"From: a@b\n", "message_stream"),
        ("saved-mail", b"Return-Path: <a@b>\nFrom: a@b\nDate: x\nSubject: hi\n\nbody", "message_stream"),
        ("letter.txt", b"From the desk of the editor\nDear reader,", "text"),
        ("From me", b"From me to you: a poem\nroses", "text"),
        ("analysis.ipynb", b"{", "notebook"),
        ("events.jsonl", b"{}", "record_collection"),
        ("events.NDJSON", b"{}", "record_collection"),
        ("report.docx", b"PK\x03\x04", "docx"),
        ("deck.pptx", b"PK\x03\x04", "pptx"),
        ("stations.parquet", b"PAR1", "table"),
        ("no-extension", b"PAR1\x15\x04", "table"),
        ("firmware.bin", b"\x7fELF\x02\x01\x01" + bytes(64), None),
    ],
)
def test_detection_of_the_new_kinds(name: str, head: bytes, kind: str | None) -> None:
    assert detect_kind(name, head) == kind


def test_files_examine_picks_the_new_kinds(tmp_path: Path) -> None:
    samples = {
        "inbox.mbox": make_mbox([make_message("a@example.org", "hi", "hello")]),
        "book.ipynb": make_notebook([markdown_cell("# T")]),
        "log.jsonl": b'{"a": 1}\n',
        "guide.docx": make_docx(),
        "deck.pptx": make_pptx(),
        "stations.parquet": make_parquet(),
    }
    found: dict[str, str] = {}
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
        entry = examine(tmp_path / name, [Root.of(tmp_path)])
        assert isinstance(entry, FileEntry), entry
        found[name] = entry.kind
    assert found == {
        "inbox.mbox": "message_stream",
        "book.ipynb": "notebook",
        "log.jsonl": "record_collection",
        "guide.docx": "docx",
        "deck.pptx": "pptx",
        "stations.parquet": "table",
    }
    (tmp_path / "firmware.bin").write_bytes(b"\x7fELF" + bytes(64))
    skipped = examine(tmp_path / "firmware.bin", [Root.of(tmp_path)])
    assert isinstance(skipped, Skipped)
    assert skipped.reason == "binary file (.bin); no producer for it"


# -- message streams ---------------------------------------------------------------------------------


def test_an_mbox_of_three_messages_is_three_chunk_groups() -> None:
    data = make_mbox(
        [
            make_message(
                "Ada Lovelace <ada@example.org>",
                "Engine notes",
                "The analytical engine weaves algebraic patterns.\n\nFrom the notes of 1843.\n",
            ),
            make_message(
                "Alan Turing <alan@example.org>",
                "Computable numbers",
                "",
                html="<html><body><h1>Numbers</h1><p>A machine reads a <b>tape</b>.</p>"
                "<script>track()</script></body></html>",
                date="Fri, 05 Dec 2026 09:30:00 +0100",
            ),
            make_message(
                "Grace Hopper <grace@example.org>",
                "Compiler draft",
                "Attached: the first compiler draft.",
                attachment=("a0-compiler.pdf", b"%PDF-1.4 draft"),
            ),
        ]
    )
    assert data.count(b"\nFrom ") + data.startswith(b"From ") == 3, "the body's From line is escaped"
    chunks = produce("message_stream", "inbox.mbox", data)
    assert [c.metadata["message"] for c in chunks] == [1, 2, 3]
    assert [c.metadata["sender"] for c in chunks] == [
        "Ada Lovelace <ada@example.org>",
        "Alan Turing <alan@example.org>",
        "Grace Hopper <grace@example.org>",
    ]
    assert [c.metadata["subject"] for c in chunks] == ["Engine notes", "Computable numbers", "Compiler draft"]
    assert chunks[0].metadata["date"] == "2026-12-04T15:00:00+00:00"
    assert chunks[1].metadata["date"] == "2026-12-05T09:30:00+01:00"
    assert "From the notes of 1843." in chunks[0].body, "the mbox escaping is undone"
    assert chunks[0].text.startswith("inbox.mbox: Engine notes\nFrom: Ada Lovelace <ada@example.org>\n")
    assert "A machine reads a tape." in chunks[1].body, "an HTML-only body is stripped of markup"
    assert "track()" not in chunks[1].body
    assert chunks[2].metadata["attachments"] == "a0-compiler.pdf"
    assert "%PDF" not in chunks[2].body
    assert all(str(c.metadata["message_id"]).startswith("<") for c in chunks)
    assert all(c.metadata["kind"] == "message_stream" for c in chunks)
    assert len({c.id for c in chunks}) == 3


def test_a_long_message_is_split_and_every_part_keeps_its_message() -> None:
    body = "\n\n".join(f"Paragraph {n} about tides and moons and orbits." for n in range(40))
    data = make_mbox(
        [make_message("a@example.org", "short", "hi"), make_message("b@example.org", "long", body)]
    )
    chunks = produce("message_stream", "x.mbox", data, Budget(max_tokens=40, overlap_tokens=0))
    long_parts = [c for c in chunks if c.metadata["message"] == 2]
    assert len(long_parts) > 3
    assert all(c.metadata["subject"] == "long" and c.text.startswith("x.mbox: long\n") for c in long_parts)
    joined = " ".join(c.body for c in long_parts)
    assert all(f"Paragraph {n} " in joined for n in range(40))


def test_an_eml_is_one_message() -> None:
    message = make_message("Marie Curie <marie@example.org>", "Radium samples", "Keep the samples shielded.")
    chunks = produce("message_stream", "radium.eml", message.as_bytes())
    assert len(chunks) == 1
    assert chunks[0].metadata["message"] == 1
    assert chunks[0].metadata["subject"] == "Radium samples"
    assert chunks[0].body.endswith("Keep the samples shielded.")
    assert detect_kind("saved", message.as_bytes()[:8192]) == "message_stream"
    assert split_mbox(b"") == []
    assert produce("message_stream", "empty.mbox", b"") == []


# -- notebooks ---------------------------------------------------------------------------------------


def test_a_notebook_is_chunked_by_cell_with_outputs_bounded() -> None:
    long_output = "x" * (MAX_OUTPUT_CHARS * 2)
    data = make_notebook(
        [
            markdown_cell("# Tides\n\nThe moon pulls the oceans."),
            code_cell(
                "import math\nprint(math.pi)",
                [
                    {"output_type": "stream", "name": "stdout", "text": ["3.141592653589793\n"]},
                    {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}},
                ],
            ),
            code_cell("", []),
            markdown_cell("## Springs\n\nSpring tides follow the full moon."),
            code_cell(
                "spring_tide(2026)",
                [{"output_type": "execute_result", "data": {"text/plain": long_output}, "metadata": {}}],
            ),
            {"cell_type": "raw", "metadata": {}, "source": "raw notes"},
        ]
    )
    chunks = produce("notebook", "tides.ipynb", data, Budget(max_tokens=2000, max_chars=8000))
    assert [c.metadata["cell"] for c in chunks] == [1, 2, 4, 5, 6]
    assert [c.metadata["cell_type"] for c in chunks] == ["markdown", "code", "markdown", "code", "raw"]
    assert chunks[1].body == "import math\nprint(math.pi)\n\nOutput:\n3.141592653589793"
    assert "iVBOR" not in chunks[1].body
    assert chunks[1].metadata["title"] == "Tides"
    assert chunks[3].metadata["title"] == "Springs"
    assert len(chunks[3].body) < len("spring_tide(2026)\n\nOutput:\n") + MAX_OUTPUT_CHARS + 1
    assert chunks[0].text.startswith("tides.ipynb (python notebook)\n")
    assert all(c.metadata["language"] == "python" for c in chunks)
    text = "\n\n".join(
        [
            "# Tides\n\nThe moon pulls the oceans.",
            "import math\nprint(math.pi)\n\nOutput:\n3.141592653589793",
        ]
    )
    assert_covers(text, chunk_spans(text, chunks[:2]))


def test_a_broken_notebook_is_a_producer_error() -> None:
    with pytest.raises(ProducerError, match="invalid notebook JSON"):
        produce("notebook", "bad.ipynb", b'{"cells": [')
    with pytest.raises(ProducerError, match="no 'cells' list"):
        produce("notebook", "odd.ipynb", b'{"nbformat": 4}')
    old = {"nbformat": 3, "worksheets": [{"cells": [{"cell_type": "code", "input": "x = 1", "outputs": []}]}]}
    assert produce("notebook", "v3.ipynb", json.dumps(old).encode())[0].body == "x = 1"


# -- record collections ------------------------------------------------------------------------------


def test_json_lines_records_carry_their_line_numbers() -> None:
    lines = [json.dumps({"id": n, "event": f"login {n}", "user": {"name": f"u{n}"}}) for n in range(30)]
    lines.insert(10, "")  # a blank line is skipped but counted
    data = ("\n".join(lines) + "\n").encode()
    chunks = produce("record_collection", "events.jsonl", data, Budget(max_rows=7))
    assert chunks[0].body.splitlines()[0] == "id: 0; event: login 0; user.name: u0"
    assert chunks[0].metadata["line"] == 1
    assert chunks[0].metadata["fields"] == "id, event, user.name"
    assert "(fields: id, event, user.name)" in chunks[0].text
    covered = {n for c in chunks for n in range(int(c.metadata["line"]), int(c.metadata["end_line"]) + 1)}
    assert covered == set(range(1, 32))
    assert all(int(c.metadata["end_line"]) - int(c.metadata["line"]) < 8 for c in chunks)
    after_blank = next(c for c in chunks if "login 10" in c.body)
    assert int(after_blank.metadata["end_line"]) >= 12


def test_a_bad_json_line_is_named() -> None:
    data = b'{"ok": 1}\n{"ok": 2}\n{"ok": \n{"ok": 4}\n'
    with pytest.raises(ProducerError, match="invalid JSON on line 3: Expecting value"):
        produce("record_collection", "broken.jsonl", data)


# -- table schemas -----------------------------------------------------------------------------------


def test_a_csv_has_a_schema_chunk_with_inferred_types() -> None:
    csv = (
        "station,depth,active,installed,reading_at,note\n"
        "north,12,yes,2024-01-01,2024-01-01T10:00:00Z,calm\n"
        "south,7.5,no,2024-02-11,2024-02-11 08:30,\n"
        "east,,true,2024-03-05,2024-03-05T23:59:59+01:00,windy\n"
    )
    chunks = produce("table", "stations.csv", csv.encode())
    rows = [c for c in chunks if c.metadata["kind"] == "table"]
    [schema] = [c for c in chunks if c.metadata["kind"] == "table_schema"]
    assert chunks[-1] is schema, "the schema follows the rows"
    assert schema.body.splitlines() == [
        "station: text",
        "depth: number (1 empty)",
        "active: boolean",
        "installed: date",
        "reading_at: datetime",
        "note: text (1 empty)",
    ]
    assert schema.text.startswith("stations.csv: table schema, 6 columns, 3 rows\n")
    assert (schema.metadata["column_count"], schema.metadata["rows"]) == (6, 3)
    assert schema.metadata["columns"] == "station, depth, active, installed, reading_at, note"
    assert rows[0].body.startswith("station: north; depth: 12")
    assert select_producer("table").version == 3, "new chunks for the same input: a new version"
    integers = produce("table", "n.csv", b"n\n1\n-2\n3,000\n")[-1]
    assert integers.body == "n: integer"


def test_a_parquet_file_gives_its_rows_and_its_schema() -> None:
    chunks = produce("table", "stations.parquet", make_parquet())
    rows = [c for c in chunks if c.metadata["kind"] == "table"]
    [schema] = [c for c in chunks if c.metadata["kind"] == "table_schema"]
    assert schema.body.splitlines() == [
        "station: string (not null)",
        "depth_m: int64",
        "measured: timestamp[ms]",
    ]
    assert schema.metadata["rows"] == 3
    assert rows[0].body.splitlines() == [
        "station: north; depth_m: 12; measured: 2026-01-01 00:00:00",
        "station: south; measured: 2026-01-02 00:00:00",
        "station: east; depth_m: 40; measured: 2026-01-03 00:00:00",
    ]
    with pytest.raises(ProducerError, match="unreadable Parquet"):
        produce("table", "broken.parquet", b"PAR1 not really parquet PAR1")


# -- Word and PowerPoint -----------------------------------------------------------------------------


def test_a_word_document_is_chunked_by_heading() -> None:
    chunks = produce("docx", "guide.docx", make_docx(), Budget(max_tokens=30, overlap_tokens=0))
    titles = [c.metadata.get("title") for c in chunks]
    assert titles == ["Beekeeping", "Beekeeping > Harvest", "Beekeeping > Harvest > Tools"]
    assert chunks[0].body == "Beekeeping\n\nA hive holds one queen and many workers."
    assert "month | yield\n\nAugust | 12 kg" in chunks[1].body
    assert chunks[0].text.startswith("guide.docx: Field guide\nBeekeeping\n")
    with pytest.raises(ProducerError, match="unreadable Word document"):
        produce("docx", "fake.docx", b"not a zip file")


def test_a_presentation_is_chunked_by_slide() -> None:
    chunks = produce("pptx", "deck.pptx", make_pptx())
    assert [c.metadata["slide"] for c in chunks] == [1, 2]
    assert [c.metadata["title"] for c in chunks] == ["Eruption types", "Monitoring"]
    assert chunks[0].body == "Eruption types\n\nEffusive eruptions pour lava.\nExplosive eruptions throw ash."
    assert chunks[1].body == (
        "Monitoring\n\ninstrument | measures\nseismometer | ground tremors\n\nNotes: Mention the 2026 drill."
    )
    assert chunks[0].text.startswith("deck.pptx: Volcano briefing\nEruption types\n")
    with pytest.raises(ProducerError, match="unreadable PowerPoint file"):
        produce("pptx", "fake.pptx", b"PK\x03\x04 truncated")
