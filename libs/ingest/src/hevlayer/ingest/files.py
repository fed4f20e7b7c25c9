"""Enumerating the files under the added paths: kind, content hash, or why a file is skipped."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hevlayer.ingest.producers import content_hash, detect_kind, select_producer, unsupported_reason

MAX_DOCUMENT_ID_BYTES = 512
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
SKIPPED_DIRECTORIES = frozenset({"__pycache__", "node_modules", ".git", ".hg", ".svn", ".venv", ".tox"})
_HEAD_BYTES = 8192


@dataclass(frozen=True)
class Root:
    """One path given to ``add``: a directory or a file, absolute."""

    path: Path
    is_dir: bool

    @classmethod
    def of(cls, value: str | os.PathLike[str]) -> Root:
        path = Path(os.path.abspath(value))
        return cls(path, path.is_dir())

    @property
    def id_prefix(self) -> str:
        """The prefix of the document ids of the files under this root."""
        return self.path.as_posix().rstrip("/") + "/" if self.is_dir else self.path.as_posix()


@dataclass(frozen=True)
class FileEntry:
    """A file that a producer takes."""

    path: Path
    name: str
    """The path shown to people: relative to its root (a file root: its name)."""
    kind: str
    content_hash: str
    size: int

    @property
    def document_id(self) -> str:
        return document_id(self.path)


@dataclass(frozen=True)
class Skipped:
    """A file that is not added, and why."""

    path: str
    reason: str


def document_id(path: Path) -> str:
    """The document id of a file: its absolute POSIX path."""
    return path.as_posix()


def display_name(path: Path, roots: Sequence[Root]) -> str:
    """``path`` relative to the innermost root holding it, else its parent and name."""
    best: Root | None = None
    for root in roots:
        innermost = best is None or len(root.path.parts) > len(best.path.parts)
        if root.is_dir and path.is_relative_to(root.path) and innermost:
            best = root
    if best is not None:
        return path.relative_to(best.path).as_posix()
    if any(not root.is_dir and root.path == path for root in roots):
        return path.name
    return "/".join(path.parts[-2:])


def walk(
    roots: Sequence[Root], *, include_hidden: bool = False, exclude: Sequence[str] = ()
) -> Iterator[Path | Skipped]:
    """Every file under ``roots`` (directories recursively, sorted; symlinked
    directories are not followed), or a Skipped for a root that cannot be read."""
    seen: set[Path] = set()

    def excluded(path: Path) -> bool:
        return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(path.as_posix(), p) for p in exclude)

    for root in roots:
        if not root.path.exists():
            yield Skipped(str(root.path), "no such file or directory")
            continue
        if not root.is_dir:
            if root.path not in seen:
                seen.add(root.path)
                yield root.path
            continue
        errors: list[OSError] = []
        for directory, subdirectories, files in os.walk(root.path, onerror=errors.append):
            base = Path(directory)
            subdirectories[:] = sorted(
                d
                for d in subdirectories
                if d not in SKIPPED_DIRECTORIES
                and (include_hidden or not d.startswith("."))
                and not excluded(base / d)
            )
            for name in sorted(files):
                path = base / name
                if (not include_hidden and name.startswith(".")) or excluded(path) or path in seen:
                    continue
                seen.add(path)
                yield path
            while errors:
                error = errors.pop(0)
                yield Skipped(str(error.filename or directory), f"cannot list directory: {error.strerror}")


def examine(
    path: Path, roots: Sequence[Root], *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> FileEntry | Skipped:
    """Read a file: its kind and content hash, or why it is skipped."""
    doc_id = document_id(path)
    if len(doc_id.encode(errors="surrogateescape")) > MAX_DOCUMENT_ID_BYTES:
        return Skipped(str(path), f"path longer than {MAX_DOCUMENT_ID_BYTES} bytes (the document id limit)")
    try:
        if not path.is_file():
            return Skipped(str(path), "not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            return Skipped(str(path), f"larger than {max_bytes} bytes ({size})")
        data = path.read_bytes()
    except OSError as exc:
        return Skipped(str(path), f"unreadable: {exc.strerror or exc}")
    try:
        doc_id.encode()
    except UnicodeEncodeError:
        return Skipped(str(path), "file name is not valid UTF-8")
    name = display_name(path, roots)
    kind = detect_kind(name, data[:_HEAD_BYTES])
    if kind is None:
        return Skipped(str(path), unsupported_reason(name, data[:_HEAD_BYTES]))
    return FileEntry(path, name, kind, content_hash(data, select_producer(kind)), len(data))
