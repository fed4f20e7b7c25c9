"""The CLI's transport-free parts: enumeration, the corpus and recall@k, progress lines, error text."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
from support.cli import CONTROL, sample_tree

from hevlayer.cli.corpus import (
    CorpusFile,
    LabelledQuery,
    choose_stdlib_corpus,
    load_queries,
    matches,
    materialize,
    module_of,
    recall_at_k,
    stdlib_files,
)
from hevlayer.cli.ingest import Progress, extract, outstanding
from hevlayer.cli.main import error_text
from hevlayer.cli.progress import PlainReporter, plain_line
from hevlayer.cli.stack import suite_services
from hevlayer.common.errors import InvalidArgument, Unavailable
from hevlayer.ingest.files import FileEntry, Root, Skipped, display_name, examine, walk
from hevlayer.ingest.producers import Budget

QUERIES = Path(__file__).with_name("queries.json")


# -- enumeration ---------------------------------------------------------------------------------------


def test_walk_finds_files_sorted_and_skips_hidden_and_caches(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", ".hidden.txt", "sub/c.md", ".git/config", "__pycache__/x.pyc", "skip.log"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    found = [p for p in walk([Root.of(tmp_path)], exclude=("*.log",)) if isinstance(p, Path)]
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.txt", "b.txt", "sub/c.md"]
    hidden = [p for p in walk([Root.of(tmp_path)], include_hidden=True) if isinstance(p, Path)]
    assert tmp_path / ".hidden.txt" in hidden
    assert tmp_path / ".git/config" not in hidden


def test_a_missing_root_is_reported_not_raised(tmp_path: Path) -> None:
    items = list(walk([Root.of(tmp_path / "nope")]))
    assert items == [Skipped(str(tmp_path / "nope"), "no such file or directory")]


def test_examine_reports_kind_hash_or_reason(tmp_path: Path) -> None:
    paths = sample_tree(tmp_path)
    roots = [Root.of(tmp_path)]
    entry = examine(paths["orbit.py"], roots)
    assert isinstance(entry, FileEntry)
    assert (entry.kind, entry.name) == ("code", "orbit.py")
    assert entry.content_hash.startswith("sha256:")
    assert entry.content_hash.endswith(";code/2")
    assert entry.document_id == paths["orbit.py"].as_posix()
    kinds = {name: getattr(examine(path, roots), "kind", None) for name, path in paths.items()}
    assert kinds == {
        "notes.txt": "text",
        "guide.md": "markdown",
        "orbit.py": "code",
        "page.html": "html",
        "birds.csv": "table",
        "config.json": "table",
        "glaciers.pdf": "pdf",
        "firmware.bin": None,
    }
    skipped = examine(paths["firmware.bin"], roots)
    assert isinstance(skipped, Skipped)
    assert skipped.reason.startswith("binary file (.bin)")
    too_big = examine(paths["notes.txt"], roots, max_bytes=10)
    assert isinstance(too_big, Skipped)
    assert "larger than 10 bytes" in too_big.reason


def test_an_unreadable_file_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    skipped = examine(path, [Root.of(tmp_path)])
    assert skipped == Skipped(str(path), "unreadable: Permission denied")


def test_display_names_are_relative_to_the_innermost_root(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    roots = [Root.of(tmp_path), Root.of(inner)]
    assert display_name(inner / "c.txt", roots) == "c.txt"
    assert display_name(tmp_path / "a" / "x.txt", roots) == "a/x.txt"
    assert display_name(Path("/elsewhere/dir/f.txt"), roots) == "dir/f.txt"
    assert Root.of(tmp_path).id_prefix == tmp_path.as_posix() + "/"


def test_extract_reads_chunks_or_says_why(tmp_path: Path) -> None:
    paths = sample_tree(tmp_path)
    roots = [Root.of(tmp_path)]
    good = extract(paths["guide.md"].as_posix(), roots, Budget())
    assert good.document is not None
    assert good.kind == "markdown"
    assert good.document.content_hash.endswith(";markdown/2")
    assert good.document.chunks[0].metadata["path"] == "guide.md"
    repeated = extract(paths["guide.md"].as_posix(), roots, Budget()).document
    assert repeated is not None
    assert [c.id for c in good.document.chunks] == [c.id for c in repeated.chunks]
    assert extract((tmp_path / "gone.txt").as_posix(), roots, Budget()).missing
    binary = extract(paths["firmware.bin"].as_posix(), roots, Budget())
    assert binary.document is None
    assert "binary" in binary.reason
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not really")
    assert extract(broken.as_posix(), roots, Budget()).reason.startswith("unreadable PDF")


# -- progress and errors -------------------------------------------------------------------------------


def test_plain_progress_lines_have_no_control_codes() -> None:
    stream = io.StringIO()
    now = [0.0]
    reporter = PlainReporter(stream, interval=1.0, clock=lambda: now[0])
    progress = Progress(files=3, total=3, counts={"extract": 3})
    reporter.progress(progress)
    progress.files, progress.files_done, progress.extracted = 5, True, 2
    reporter.progress(progress)  # within the interval: held back
    reporter.note("created pipeline 'x'")
    progress.extracted, progress.embedded, progress.indexed, progress.chunks = 5, 5, 5, 40
    now[0] = 2.0
    reporter.progress(progress)
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "enumerated 3 files+ | extracted 0/3 | embedded 0/3 | indexed 0/3 | chunks 0",
        "created pipeline 'x'",
        "enumerated 5 files | extracted 5/3 | embedded 5/3 | indexed 5/3 | chunks 40",
    ]
    assert not CONTROL.search(stream.getvalue())


def test_plain_line_mentions_failures() -> None:
    line = plain_line(Progress(files=1, files_done=True, total=1, indexed=1, failed=1))
    assert line.endswith("| failed 1")


def test_error_text_names_the_field() -> None:
    error = InvalidArgument.field("pipeline.id", "'Bad' is not a valid pipeline id")
    assert error_text(error) == (
        "error: INVALID_ARGUMENT: pipeline.id: 'Bad' is not a valid pipeline id\n"
        "  field pipeline.id: 'Bad' is not a valid pipeline id"
    )
    down = Unavailable("failed to connect to all addresses", retry_after=2)
    text = error_text(down, "127.0.0.1:1")
    assert text.splitlines()[0] == "error: UNAVAILABLE: failed to connect to all addresses"
    assert "retry after 2 s" in text
    assert "hevlayer up" in text
    assert down.code == grpc.StatusCode.UNAVAILABLE


def test_outstanding_counts_every_stage_but_the_terminal_ones() -> None:
    assert (
        outstanding({"extract": 2, "extracting": 1, "pending": 3, "embedding": 4, "indexed": 9, "failed": 1})
        == 10
    )


# -- the suite ------------------------------------------------------------------------------------------


def test_suite_services_wire_triton_embedder_and_gateway(tmp_path: Path) -> None:
    specs = {s.name: s for s in suite_services(tmp_path, worker=True, summarizer=True)}
    assert list(specs) == ["claimer", "triton", "embedder", "gateway", "embedder-worker", "summarizer"]
    assert specs["gateway"].depends_on == ("claimer", "embedder")
    assert specs["gateway"].grpc_port == 50051
    assert specs["gateway"].public
    assert specs["gateway"].env["GATEWAY_MILVUS_LITE_PATH"] == str(tmp_path.absolute() / "vectors.db")
    assert "EMBEDDER_TRITON_URL=TRITON_ADDRESS" in specs["embedder"].command
    bare = [s.name for s in suite_services(tmp_path, embedder=False, summarizer=False)]
    assert bare == ["claimer", "gateway"]
    assert "summarizer" in [s.name for s in suite_services(tmp_path)]  # installed: on by default


# -- corpus and recall ----------------------------------------------------------------------------------


def test_module_names_and_matching() -> None:
    assert module_of("json/decoder.py") == "json.decoder"
    assert module_of("json/__init__.py") == "json"
    assert module_of("argparse.py") == "argparse"
    assert matches("json/decoder.py", "json")
    assert matches("urllib/parse.py", "urllib.parse")
    assert not matches("jsonschema.py", "json")


def test_corpus_selection_keeps_labelled_modules_and_the_budget() -> None:
    files = [
        CorpusFile("argparse.py", 19_000),
        CorpusFile("tiny.py", 10),
        CorpusFile("small.py", 100),
        CorpusFile("huge.py", 50_000),
        CorpusFile("pkg/__init__.py", 50),
        CorpusFile("pkg/mod.py", 60),
    ]
    chosen = choose_stdlib_corpus(files, token_budget=19_220, must_include=["argparse"])
    assert [f.relative for f in chosen] == [
        "argparse.py",
        "pkg/__init__.py",
        "pkg/mod.py",
        "small.py",
        "tiny.py",
    ]
    tight = choose_stdlib_corpus(files, token_budget=19_100, must_include=["argparse"])
    assert [f.relative for f in tight] == ["argparse.py", "pkg/__init__.py", "tiny.py"]


def test_the_default_corpus_is_real_and_holds_every_labelled_module() -> None:
    queries = load_queries(QUERIES)
    assert len(queries) >= 15
    files = stdlib_files()
    chosen = choose_stdlib_corpus(files, must_include=[m for q in queries for m in q.relevant])
    assert 100 <= len(chosen) <= len(files)
    names = {module_of(f.relative) for f in chosen}
    for query in queries:
        assert any(m in names or m == "zlib" for m in query.relevant), query
    assert not any("test" in Path(f.relative).parts for f in chosen)


def test_materialize_copies_and_prunes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "a.py").write_text("a = 1\nb = 2\n")
    (source / "pkg" / "m.py").write_text("m = 1\n")
    target = tmp_path / "corpus"
    materialize([CorpusFile("a.py", 1), CorpusFile("pkg/m.py", 1)], source, target)
    assert (target / "pkg" / "m.py").read_text() == "m = 1\n"
    materialize([CorpusFile("a.py", 1)], source, target, max_lines=1)
    assert (target / "a.py").read_text() == "a = 1\n"
    assert not (target / "pkg").exists()


def test_recall_at_k() -> None:
    queries = [
        LabelledQuery("parse arguments", ("argparse", "getopt")),
        LabelledQuery("json", ("json",)),
        LabelledQuery("csv", ("csv",)),
    ]
    ranked = {
        "parse arguments": ["shlex.py", "getopt.py"],
        "json": ["a.py", "b.py", "c.py", "d.py", "e.py", "json/decoder.py"],
    }
    recall, missed = recall_at_k(queries, ranked, k=5)
    assert recall == pytest.approx(1 / 3)
    assert [q.query for q in missed] == ["json", "csv"]
    assert recall_at_k(queries, ranked, k=6)[0] == pytest.approx(2 / 3)
