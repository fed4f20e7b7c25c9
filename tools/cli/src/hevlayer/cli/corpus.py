"""The ``make run`` corpus (the running Python's standard library) and recall@k.

Embedding is the slow step: all-MiniLM-L6-v2 on two shared CPU cores embeds
on the order of 2,000 tokens a second through Triton, so the whole standard
library (about 1.8 million tokens without its tests) would take far longer
than the 10 minutes ``make run`` may take. :func:`choose_stdlib_corpus`
therefore picks files under a token budget: the modules that the labelled
queries are about (so recall is measurable), then the other top-level modules
and packages, smallest first, then package submodules, until the budget is
spent. The files are copied into one directory (``DATA_DIR/corpus``) keeping
their relative paths, so document names read ``json/decoder.py``.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hevlayer.ingest.producers.base import TokenIndex, decode_text

DEFAULT_CORPUS_TOKENS = 600_000
"""Token budget of the default corpus: about 3,500 chunks, within 10 minutes on 2 cores."""
MAX_FILE_TOKENS = 20_000
"""Files larger than this are left out unless a labelled query needs them."""
EXCLUDED_PARTS = frozenset(
    {
        "test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
        "ensurepip", "pydoc_data", "tkinter", "__phello__", "encodings", "__pycache__",
    }
)  # fmt: skip


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus: its path relative to the standard library, and its size in tokens."""

    relative: str
    tokens: int


@dataclass(frozen=True)
class LabelledQuery:
    """A query and the modules that answer it (any of them counts)."""

    query: str
    relevant: tuple[str, ...]


def stdlib_dir() -> Path:
    """The running Python's standard library directory."""
    return Path(sysconfig.get_path("stdlib"))


def module_of(path: str) -> str:
    """The module of a file: ``json/decoder.py`` → ``json.decoder``, ``json/__init__.py`` → ``json``."""
    pure = PurePosixPath(path)
    parts = list(pure.parts)
    if not parts:
        return ""
    last = PurePosixPath(parts[-1]).stem
    parts = parts[:-1] if last == "__init__" else [*parts[:-1], last]
    return ".".join(parts)


def matches(path: str, module: str) -> bool:
    """Whether the file at ``path`` is ``module`` or inside it."""
    name = module_of(path)
    return name == module or name.startswith(module + ".")


def stdlib_files(root: Path | None = None) -> list[CorpusFile]:
    """The standard library's ``.py`` files (tests, IDLE, Tk and friends left out), with token counts."""
    base = root or stdlib_dir()
    files: list[CorpusFile] = []
    for path in sorted(base.rglob("*.py")):
        relative = path.relative_to(base)
        if EXCLUDED_PARTS & set(relative.parts[:-1]) or not path.is_file():
            continue
        try:
            text = decode_text(path.read_bytes())
        except OSError:
            continue
        files.append(CorpusFile(relative.as_posix(), len(TokenIndex(text).starts)))
    return files


def choose_stdlib_corpus(
    files: Sequence[CorpusFile],
    *,
    token_budget: int = DEFAULT_CORPUS_TOKENS,
    must_include: Iterable[str] = (),
    max_file_tokens: int = MAX_FILE_TOKENS,
) -> list[CorpusFile]:
    """Files within ``token_budget``: the files of ``must_include`` modules, then top-level
    modules and package ``__init__`` files, then the rest, each group smallest first."""
    wanted = list(must_include)
    chosen: list[CorpusFile] = []
    taken: set[str] = set()
    spent = 0
    for module in wanted:
        for candidate in files:
            if candidate.relative not in taken and module_of(candidate.relative) == module:
                chosen.append(candidate)
                taken.add(candidate.relative)
                spent += candidate.tokens

    def tier(candidate: CorpusFile) -> int:
        parts = PurePosixPath(candidate.relative).parts
        return 0 if len(parts) == 1 or (len(parts) == 2 and parts[1] == "__init__.py") else 1

    rest = sorted(
        (f for f in files if f.relative not in taken and f.tokens <= max_file_tokens),
        key=lambda f: (tier(f), f.tokens, f.relative),
    )
    for candidate in rest:
        if spent + candidate.tokens > token_budget:
            if tier(candidate) == 0:
                continue
            break
        chosen.append(candidate)
        spent += candidate.tokens
    return sorted(chosen, key=lambda f: f.relative)


def materialize(
    files: Sequence[CorpusFile], source: Path, target: Path, *, max_lines: int | None = None
) -> Path:
    """Copy ``files`` from ``source`` into ``target`` (relative paths kept); remove files no longer chosen.

    Unchanged files are not rewritten. ``max_lines`` keeps only each file's first lines
    (its module docstring and first definitions: a small corpus for tests).
    """
    target.mkdir(parents=True, exist_ok=True)
    keep = {f.relative for f in files}
    for file in files:
        destination = target / file.relative
        origin = source / file.relative
        data = origin.read_bytes()
        if max_lines is not None:
            data = b"".join(data.splitlines(keepends=True)[:max_lines])
        if destination.exists() and destination.read_bytes() == data:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
    for existing in sorted(target.rglob("*"), reverse=True):
        relative = existing.relative_to(target).as_posix()
        if existing.is_file() and relative not in keep:
            existing.unlink()
        elif existing.is_dir() and not any(existing.iterdir()):
            existing.rmdir()
    return target


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """A labelled query file: ``[{"query": "...", "relevant": ["argparse", ...]}, ...]``."""
    raw = json.loads(Path(path).read_text())
    return [LabelledQuery(str(item["query"]), tuple(str(m) for m in item["relevant"])) for item in raw]


def recall_at_k(
    queries: Sequence[LabelledQuery], ranked: Mapping[str, Sequence[str]], k: int = 5
) -> tuple[float, list[LabelledQuery]]:
    """The share of queries with a relevant file among their first ``k`` results, and the missed ones.

    ``ranked`` maps each query to its result paths (relative to the corpus), best first.
    """
    if not queries:
        return 0.0, []
    missed = [
        q
        for q in queries
        if not any(matches(path, module) for path in ranked.get(q.query, ())[:k] for module in q.relevant)
    ]
    return (len(queries) - len(missed)) / len(queries), missed
