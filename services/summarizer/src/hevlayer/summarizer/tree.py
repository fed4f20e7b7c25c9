"""A job's directory tree (the seed's ``DirTreeBuilder``), built from SubmitJob objects.

Objects are files; their directories are implied by their paths (the root is
``""``). Readiness follows the Job Lane's rule: a directory is ready to fold
once enumeration is complete and every one of its sub-directories is done
(summarized or failed). **Files do not gate a directory**: a summary folds
its children's source excerpts, not their embeddings, so a directory's
``pending`` counts only its unfinished sub-directories, and at enumeration
end every leaf directory is ready at once.

Everything here is plain in-memory state, transport free and synchronous;
:mod:`hevlayer.summarizer.jobs` drives it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

ROOT = ""
MAX_PATH_BYTES = 1024


class TreeError(ValueError):
    """An object that cannot join the tree; ``index`` is its position in the batch."""

    def __init__(self, index: int, attribute: str, description: str) -> None:
        super().__init__(description)
        self.index = index
        self.attribute = attribute
        self.description = description


class DirState(enum.Enum):
    """Where a directory is in its fold."""

    WAITING = "waiting"  # enumeration running, or sub-directories not done yet
    READY = "ready"  # handed to the queue, not folded yet
    SUMMARIZED = "summarized"
    FAILED = "failed"


@dataclass(frozen=True)
class ObjectSpec:
    """One object (a file) of a job, as SubmitJob sent it."""

    path: str
    document_id: str = ""
    content_hash: str = ""
    kind: str = ""
    text: str = ""

    @property
    def name(self) -> str:
        """The last path segment."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        """The directory holding the object."""
        return parent_of(self.path) or ROOT


@dataclass(frozen=True)
class SummaryRecord:
    """What a summarized directory holds."""

    text: str
    cache_key: str
    model: str
    child_count: int
    document_id: str


@dataclass
class DirNode:
    """One directory of the tree."""

    path: str
    depth: int
    subdirs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    pending: int = 0
    state: DirState = DirState.WAITING
    summary: SummaryRecord | None = None
    error: str = ""

    @property
    def name(self) -> str:
        """The last path segment ("" for the root)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def done(self) -> bool:
        """Summarized or failed."""
        return self.state in (DirState.SUMMARIZED, DirState.FAILED)


def check_path(path: str) -> str | None:
    """Why ``path`` is not a valid object path, or None if it is.

    Valid: slash-separated, relative, no empty, ``.`` or ``..`` segments, no
    NUL, at most MAX_PATH_BYTES bytes of UTF-8.
    """
    if not path:
        return "is required"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return f"{path!r} must be relative to the job's root (no leading '/')"
    for segment in path.split("/"):
        if segment == "":
            return f"{path!r} has an empty segment (leading, trailing or doubled '/')"
        if segment in (".", ".."):
            return f"{path!r} contains a {segment!r} segment"
    return None


def check_directory_path(path: str) -> str | None:
    """Like :func:`check_path`, but ``""`` (the root) is valid."""
    return None if path == ROOT else check_path(path)


def parent_of(path: str) -> str | None:
    """The parent directory of ``path`` (None for the root)."""
    if path == ROOT:
        return None
    head, sep, _ = path.rpartition("/")
    return head if sep else ROOT


def depth_of(path: str) -> int:
    """0 for the root, 1 for a top-level directory, ..."""
    return 0 if path == ROOT else path.count("/") + 1


def ancestors(path: str) -> Iterable[str]:
    """The directories above ``path``, nearest first, ending with the root."""
    current = parent_of(path)
    while current is not None:
        yield current
        current = parent_of(current)


class DirTree:
    """The directory tree of one job and its fold state."""

    def __init__(self) -> None:
        self.dirs: dict[str, DirNode] = {ROOT: DirNode(ROOT, 0)}
        self.files: dict[str, ObjectSpec] = {}
        self.complete = False
        self.summarized = 0
        self.failed = 0

    # -- enumeration --------------------------------------------------------------

    def add(self, objects: Sequence[ObjectSpec]) -> None:
        """Add a batch of objects, all or none (TreeError names the first bad one).

        An object whose path is already in the tree replaces it (a resent batch
        is idempotent). A path that is both a file and a directory is refused.
        """
        if self.complete:
            raise RuntimeError("enumeration is complete")
        batch_files: set[str] = set()
        batch_dirs: set[str] = set()
        for index, obj in enumerate(objects):
            problem = check_path(obj.path)
            if problem is not None:
                raise TreeError(index, "path", problem)
            if obj.path in self.dirs or obj.path in batch_dirs:
                raise TreeError(index, "path", f"{obj.path!r} is a directory of the job")
            for directory in ancestors(obj.path):
                if directory in self.files or directory in batch_files:
                    raise TreeError(index, "path", f"{directory!r} is a file of the job, not a directory")
                if directory in self.dirs or directory in batch_dirs:
                    break
                batch_dirs.add(directory)
            batch_files.add(obj.path)
        for obj in objects:
            self.files[obj.path] = obj
            child = obj.path
            is_file = True
            for directory in ancestors(obj.path):
                node = self.dirs.get(directory)
                created = node is None
                if node is None:
                    node = self.dirs[directory] = DirNode(directory, depth_of(directory))
                if is_file:
                    node.files.add(child)
                else:
                    node.subdirs.add(child)
                if not created:
                    break  # an existing directory is already linked to its parent
                child = directory
                is_file = False

    def complete_enumeration(self) -> list[DirNode]:
        """Close the tree: count each directory's pending sub-directories and
        return the directories ready now (the leaves; the root alone for a flat tree)."""
        if self.complete:
            return []
        self.complete = True
        ready = []
        for node in self.dirs.values():
            node.pending = len(node.subdirs)
            if node.pending == 0:
                node.state = DirState.READY
                ready.append(node)
        return ready

    # -- folding ------------------------------------------------------------------

    def children(self, path: str) -> tuple[list[DirNode], list[ObjectSpec]]:
        """The sub-directories and files directly in ``path``, each sorted by path."""
        node = self.dirs[path]
        return (
            [self.dirs[p] for p in sorted(node.subdirs)],
            [self.files[p] for p in sorted(node.files)],
        )

    def mark_summarized(self, path: str, summary: SummaryRecord) -> DirNode | None:
        """Record ``path``'s summary; return its parent if that became ready."""
        node = self._finish(path)
        node.state = DirState.SUMMARIZED
        node.summary = summary
        self.summarized += 1
        return self._release_parent(node)

    def mark_failed(self, path: str, error: str) -> DirNode | None:
        """Record that ``path`` failed; its parent still folds (without it)."""
        node = self._finish(path)
        node.state = DirState.FAILED
        node.error = error
        self.failed += 1
        return self._release_parent(node)

    @property
    def finished(self) -> bool:
        """Every directory is summarized or failed."""
        return self.complete and self.summarized + self.failed == len(self.dirs)

    def _finish(self, path: str) -> DirNode:
        node = self.dirs[path]
        if node.state is not DirState.READY:
            raise RuntimeError(f"directory {path!r} is {node.state.value}, not ready")
        return node

    def _release_parent(self, node: DirNode) -> DirNode | None:
        parent_path = parent_of(node.path)
        if parent_path is None:
            return None
        parent = self.dirs[parent_path]
        parent.pending -= 1
        if parent.pending == 0:
            parent.state = DirState.READY
            return parent
        return None
