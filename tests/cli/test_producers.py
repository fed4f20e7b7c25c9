"""Producers, kind by kind, on small examples; kind detection and the registry."""

from __future__ import annotations

import itertools
import json

import pytest
from support.cli import assert_covers, assert_within_budget, chunk_spans, make_pdf
from support.sample_files import make_docx, make_message, make_notebook, make_pptx, markdown_cell, text_png

from hevlayer.ingest import producers, vision
from hevlayer.ingest.producers import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    UnsupportedKind,
    content_hash,
    detect_kind,
    register,
    select_producer,
)
from hevlayer.ingest.producers.base import decode_text, split_text
from hevlayer.ingest.producers.html import extract
from hevlayer.ingest.producers.markdown import sections


def produce(kind: str, name: str, content: str | bytes, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
    data = content.encode() if isinstance(content, str) else content
    return select_producer(kind).produce(Source(f"/docs/{name}", name, data), budget)


# -- detection and registry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("notes.txt", b"hello", "text"),
        ("README", b"hello", "text"),
        ("guide.md", b"# Title", "markdown"),
        ("main.py", b"import os", "code"),
        ("lib.rs", b"fn main() {}", "code"),
        ("Makefile", b"all:\n\ttrue", "code"),
        ("CMakeLists.txt", b"project(x)", "code"),
        ("paper.pdf", b"%PDF-1.7", "pdf"),
        ("index.html", b"<html>", "html"),
        ("rows.csv", b"a,b", "table"),
        ("rows.JSONL", b"{}", "record_collection"),
        ("data.json", b"[]", "table"),
        ("no-extension", b"%PDF-1.4\n...", "pdf"),
        ("saved-page", b"<!DOCTYPE html><html>", "html"),
        ("run-me", b"#!/usr/bin/env python3\nprint(1)", "code"),
        ("notes.unknown", b"just words", "text"),
    ],
)
def test_kind_detection(name: str, head: bytes, kind: str) -> None:
    assert detect_kind(name, head) == kind


def test_binary_files_without_a_producer_have_no_kind() -> None:
    assert detect_kind("firmware.bin", b"\x7fELF\x02\x01\x01" + bytes(64)) is None
    assert detect_kind("blob", bytes(range(256))) is None
    assert detect_kind("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") == "image"


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(UnsupportedKind, match="no producer for kind 'video'"):
        select_producer("video")


def test_a_new_kind_is_one_producer_and_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producers, "_REGISTRY", dict(producers._REGISTRY))

    class ShoutProducer(Producer):
        kind = "shout"
        extensions = (".shout",)

        def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
            text = source.data.decode().upper()
            return [Chunk(id="0000-x", text=text, body=text, start=0, metadata={"kind": self.kind})]

    register(ShoutProducer())
    assert detect_kind("hello.shout", b"hi") == "shout"
    assert select_producer("shout").produce(Source("/a.shout", "a.shout", b"hi"))[0].text == "HI"
    with pytest.raises(ValueError, match="already registered"):
        register(ShoutProducer())


def test_content_hash_is_sha256_of_the_bytes_and_names_the_producer() -> None:
    value = content_hash(b"abc", select_producer("text"))
    assert value == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;text/2"
    assert content_hash(b"abc", select_producer("code")).endswith(";code/2")


def test_decoding_never_fails() -> None:
    assert decode_text("café".encode()) == "café"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text("café".encode("latin-1")) == "café"
    assert isinstance(decode_text(bytes(range(256))), str)


# -- text --------------------------------------------------------------------------------------------


def test_text_paragraphs_are_packed_within_the_budget() -> None:
    paragraphs = [f"Paragraph {n} " + "word " * 30 for n in range(12)]
    text = "\n\n".join(paragraphs) + "\n"
    budget = Budget(max_tokens=80, overlap_tokens=10)
    chunks = produce("text", "essay.txt", text, budget)
    assert len(chunks) > 1
    spans = chunk_spans(text, chunks)
    assert_covers(text, spans)
    assert_within_budget(text, spans, budget)
    assert chunks[0].metadata["line"] == 1
    assert chunks[0].metadata["kind"] == "text"
    assert chunks[0].metadata["path"] == "essay.txt"
    assert chunks[0].text.startswith("essay.txt\n")
    assert len({c.id for c in chunks}) == len(chunks)


def test_a_long_line_is_split_with_overlap() -> None:
    text = " ".join(f"w{n}" for n in range(400))
    budget = Budget(max_tokens=50, overlap_tokens=10)
    spans = split_text(text, budget)
    assert len(spans) > 8
    assert_covers(text, spans)
    assert_within_budget(text, spans, budget)
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start < first_end, "consecutive pieces of one line overlap"


def test_chunk_ids_are_deterministic() -> None:
    text = "alpha\n\nbeta\n\ngamma " * 50
    first = produce("text", "a.txt", text, Budget(max_tokens=40, overlap_tokens=5))
    again = produce("text", "a.txt", text, Budget(max_tokens=40, overlap_tokens=5))
    assert [c.id for c in first] == [c.id for c in again]
    assert all(c.id.startswith(f"{n:04d}-") for n, c in enumerate(first))


def test_empty_and_blank_files_have_no_chunks() -> None:
    assert produce("text", "empty.txt", "") == []
    assert produce("text", "blank.txt", " \n\n\t\n") == []


# -- markdown ----------------------------------------------------------------------------------------

MARKDOWN = """Intro before any heading.

# Install

Get the package.

## Linux

```sh
# not a heading
apt-get install thing
```

Setext Title
============

Body under setext.
"""


def test_markdown_sections_follow_headings_not_code_fences() -> None:
    found = sections(MARKDOWN)
    assert [s.path for s in found] == [(), ("Install",), ("Install", "Linux"), ("Setext Title",)]
    assert found[0].start == 0
    assert found[-1].end == len(MARKDOWN)
    for a, b in itertools.pairwise(found):
        assert a.end == b.start


def test_markdown_chunks_carry_their_heading_path() -> None:
    chunks = produce("markdown", "guide.md", MARKDOWN)
    titles = [c.metadata.get("title") for c in chunks]
    assert "Install > Linux" in titles
    linux = next(c for c in chunks if c.metadata.get("title") == "Install > Linux")
    assert "apt-get install thing" in linux.body
    assert linux.text.startswith("guide.md\nInstall > Linux\n")
    assert_covers(MARKDOWN, chunk_spans(MARKDOWN, chunks))


# -- code --------------------------------------------------------------------------------------------

PYTHON = '''"""Geometry helpers.

More words about the module.
"""

import math

# The unit circle.
UNIT = 1.0


@staticmethod
def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


class Shape:
    """A shape."""

    sides = 0

    def perimeter(self):
        """The perimeter."""
        return 0
'''


def test_python_is_split_on_definitions_and_carries_the_module_docstring() -> None:
    chunks = produce("code", "geometry.py", PYTHON, Budget(max_tokens=40, overlap_tokens=4))
    spans = chunk_spans(PYTHON, chunks)
    assert_covers(PYTHON, spans)
    by_title = {c.metadata.get("title"): c for c in chunks}
    assert "area" in by_title
    area = by_title["area"]
    assert area.body.startswith("@staticmethod\ndef area(radius):")
    assert '"""Area of a circle."""' in area.body
    assert area.text.startswith("geometry.py: Geometry helpers.\n")
    assert area.metadata["language"] == "python"
    assert area.metadata["line"] == 12
    assert all(c.text.startswith("geometry.py: Geometry helpers.") for c in chunks)


def test_a_class_too_big_for_one_chunk_is_split_into_its_methods() -> None:
    methods = "\n".join(
        f"    def method_{n}(self):\n        '''Method {n} does thing {n}.'''\n        return {n}\n"
        for n in range(8)
    )
    source = f'class Big:\n    """A big class."""\n\n{methods}'
    chunks = produce("code", "big.py", source, Budget(max_tokens=40, overlap_tokens=0))
    titles = [c.metadata.get("title", "") for c in chunks]
    assert titles[0] == "class Big"
    assert any("Big.method_0" in str(t) for t in titles)
    method = next(c for c in chunks if "Big.method_7" in str(c.metadata.get("title")))
    assert "class Big: A big class." in method.text
    assert_covers(source, chunk_spans(source, chunks))


def test_small_neighbouring_definitions_share_a_chunk() -> None:
    source = "\n\n".join(f"def f{n}():\n    return {n}\n" for n in range(5))
    chunks = produce("code", "small.py", source)
    assert len(chunks) == 1
    assert chunks[0].metadata["title"] == "f0, f1, f2, f3, f4"


def test_python_that_does_not_parse_falls_back_to_blocks() -> None:
    source = "def broken(:\n    pass\n\nprint 'python 2'\n"
    chunks = produce("code", "old.py", source)
    assert chunks
    assert_covers(source, chunk_spans(source, chunks))


def test_other_languages_are_split_into_blank_line_blocks() -> None:
    source = "\n\n".join(f"function f{n}() {{\n  return {n};\n}}" for n in range(30))
    chunks = produce("code", "app.js", source, Budget(max_tokens=30, overlap_tokens=0))
    assert len(chunks) > 1
    assert all(c.metadata["language"] == "javascript" for c in chunks)
    assert_covers(source, chunk_spans(source, chunks))
    assert all(not c.body.startswith("\n") for c in chunks)


# -- PDF ---------------------------------------------------------------------------------------------


def test_pdf_pages_become_chunks_with_page_numbers() -> None:
    data = make_pdf(["Glaciers carve valleys.", "Deserts receive little rain."], title="Landforms")
    chunks = produce("pdf", "land.pdf", data)
    assert [c.metadata["page"] for c in chunks] == [1, 2]
    assert "Glaciers carve valleys." in chunks[0].body
    assert "Deserts receive little rain." in chunks[1].body
    assert chunks[0].text.startswith("land.pdf: Landforms\n")
    assert chunks[0].metadata["title"] == "Landforms"
    assert len({c.id for c in chunks}) == 2


def test_an_unreadable_pdf_is_a_producer_error() -> None:
    with pytest.raises(ProducerError, match="unreadable PDF"):
        produce("pdf", "bad.pdf", b"%PDF-1.4 this is not a pdf")


# -- HTML --------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html><html><head><title>Volcanoes &amp; more</title>
<style>p { color: red }</style><script>var secret = 1;</script></head>
<body><h1>Volcanoes</h1><p>Magma   rises
through the crust.</p><noscript>enable js</noscript>
<h2>Types</h2><ul><li>Shield</li><li>Strato</li></ul><pre>  kept   spacing</pre></body></html>"""


def test_html_drops_scripts_and_styles_and_sections_by_heading() -> None:
    page = extract(HTML)
    assert page.title == "Volcanoes & more"
    assert "secret" not in page.text
    assert "color" not in page.text
    assert "enable js" not in page.text
    assert "Magma rises through the crust." in page.text
    assert "  kept   spacing" in page.text
    chunks = produce("html", "v.html", HTML)
    assert {c.metadata.get("title") for c in chunks} == {"Volcanoes", "Volcanoes > Types"}
    assert chunks[0].text.startswith("v.html: Volcanoes & more\n")
    assert_covers(page.text, chunk_spans(page.text, chunks))


# -- tables ------------------------------------------------------------------------------------------


def test_csv_rows_carry_column_names_and_row_numbers() -> None:
    rows = "\n".join(f"bird{n},habitat {n}" for n in range(50))
    produced = produce("table", "birds.csv", f"species,habitat\n{rows}\n", Budget(max_tokens=60, max_rows=5))
    chunks = [c for c in produced if c.metadata["kind"] == "table"]
    assert [c.metadata["kind"] for c in produced[len(chunks) :]] == ["table_schema"]
    assert chunks[0].body.startswith("species: bird0; habitat: habitat 0")
    assert chunks[0].metadata["row"] == 1
    assert chunks[0].metadata["columns"] == "species, habitat"
    assert "(columns: species, habitat)" in chunks[0].text
    assert all(int(c.metadata["end_row"]) - int(c.metadata["row"]) < 5 for c in chunks)
    rows_seen = {n for c in chunks for n in range(int(c.metadata["row"]), int(c.metadata["end_row"]) + 1)}
    assert rows_seen == set(range(1, 51))


def test_tsv_and_json_lines() -> None:
    tsv = produce("table", "t.tsv", "a\tb\n1\t2\n")
    assert tsv[0].body == "a: 1; b: 2"
    jsonl = produce("table", "t.jsonl", '{"x": 1, "y": {"z": "deep"}}\n{"x": 2}\n')
    assert jsonl[0].body == "x: 1; y.z: deep\nx: 2"


def test_json_arrays_objects_and_errors() -> None:
    records = json.dumps([{"name": "Ada", "langs": ["en", "fr"]}, {"name": "Alan"}])
    assert produce("table", "p.json", records)[0].body == 'name: Ada; langs: ["en", "fr"]\nname: Alan'
    wrapped = json.dumps({"people": [{"name": "Ada"}, {"name": "Alan"}]})
    assert produce("table", "w.json", wrapped)[0].body == "name: Ada\nname: Alan"
    config = json.dumps({"version": 3, "tool": {"name": "x"}})
    assert produce("table", "c.json", config)[0].body == "version: 3\ntool.name: x"
    with pytest.raises(ProducerError, match="invalid JSON"):
        produce("table", "bad.json", "{nope")


def test_every_example_file_kind_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registered kind produces deterministic, unique ids for a file of its kind."""

    class Fixed(vision.VisionProvider):
        @property
        def token(self) -> str:
            return "fixed:1"

        def describe(self, image: vision.Image) -> str:
            return "image text"

    monkeypatch.setattr(vision, "_vision", None)  # the process's describer is put back afterwards
    vision.configure(vision.VisionSettings(), provider=Fixed())
    examples = {
        "text": ("a.txt", b"some text"),
        "markdown": ("a.md", b"# T\n\nbody"),
        "code": ("a.py", b"def f():\n    return 1\n"),
        "pdf": ("a.pdf", make_pdf(["pdf text"])),
        "html": ("a.html", b"<p>html text</p>"),
        "table": ("a.csv", b"h\nv\n"),
        "image": ("a.png", text_png(["image"])),
        "message_stream": ("a.eml", make_message("a@example.org", "subject", "body").as_bytes()),
        "notebook": ("a.ipynb", make_notebook([markdown_cell("# Notebook")])),
        "record_collection": ("a.jsonl", b'{"record": 1}\n'),
        "docx": ("a.docx", make_docx()),
        "pptx": ("a.pptx", make_pptx()),
    }
    also = {"table": {"table_schema"}}  # kinds of extra chunks a producer adds
    assert set(examples) == set(producers.kinds())
    for kind, (name, data) in examples.items():
        assert detect_kind(name, data[:100]) == kind
        first = produce(kind, name, data)
        assert first, kind
        assert [c.id for c in first] == [c.id for c in produce(kind, name, data)]
        assert len({c.id for c in first}) == len(first)
        assert all(c.metadata["path"] == name for c in first)
        assert all(c.metadata["kind"] in {kind, *also.get(kind, ())} for c in first)
