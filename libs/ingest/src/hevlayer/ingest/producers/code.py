"""Source code.

Python is split on top-level definitions with :mod:`ast`: each function or
class (decorators, docstring and the comment block right above it included)
is one unit; small neighbouring units share a chunk, a class too big for one
chunk is split into its header and its methods, a function too big into line
groups. Every chunk carries the module's docstring in its context line. A file
that does not parse, and every other language, is split into blank-line blocks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import PurePosixPath

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    LineIndex,
    Producer,
    Source,
    Span,
    TokenIndex,
    build_chunks,
    decode_text,
    display_name,
    first_paragraph,
    one_line,
    split_text,
    trim,
)

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".go": "go",
    ".rs": "rust",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".m": "objective-c",
    ".lua": "lua",
    ".pl": "perl",
    ".pm": "perl",
    ".r": "r",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".ps1": "powershell",
    ".sql": "sql",
    ".proto": "protobuf",
    ".css": "css",
    ".scss": "css",
    ".el": "elisp",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".clj": "clojure",
    ".dart": "dart",
    ".zig": "zig",
    ".nim": "nim",
    ".jl": "julia",
    ".vim": "vim",
    ".cmake": "cmake",
    ".mk": "make",
}
FILENAMES: dict[str, str] = {
    "Makefile": "make",
    "makefile": "make",
    "GNUmakefile": "make",
    "Dockerfile": "docker",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
}
_SHEBANGS = {
    b"python": "python",
    b"bash": "shell",
    b"/sh": "shell",
    b" sh": "shell",
    b"zsh": "shell",
    b"node": "javascript",
    b"perl": "perl",
    b"ruby": "ruby",
}


def language_of(name: str, head: bytes = b"") -> str:
    """The language of a file, by name, then by its ``#!`` line; ``""`` if unknown."""
    path = PurePosixPath(name)
    if path.name in FILENAMES:
        return FILENAMES[path.name]
    language = LANGUAGES.get(path.suffix.lower())
    if language:
        return language
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0]
        for marker, shebang_language in _SHEBANGS.items():
            if marker in first:
                return shebang_language
    return ""


@dataclass(frozen=True)
class Unit:
    """A budget-sized piece of a Python file: ``text[start:end]`` with its title."""

    start: int
    end: int
    title: str
    context: str = ""
    mergeable: bool = True


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _keyword(node: ast.stmt) -> str:
    if isinstance(node, ast.ClassDef):
        return "class"
    if isinstance(node, ast.AsyncFunctionDef):
        return "async def"
    return "def"


class _PythonSplitter:
    def __init__(self, text: str, budget: Budget, head: str, index: TokenIndex | None = None) -> None:
        self.text = text
        self.budget = budget
        self.head = head
        self.index = index if index is not None else budget.index(text)
        self.lines = LineIndex(text)
        self.source_lines = text.split("\n")
        self._within: dict[tuple[str, str], Budget] = {}

    def within(self, context: str, title: str) -> Budget:
        """The budget of a body embedded after the file's line, ``context`` and ``title``."""
        key = (context, title)
        if key not in self._within:
            self._within[key] = self.budget.for_head(self.head, context, title)
        return self._within[key]

    def offset(self, line: int) -> int:
        """Offset of 1-based ``line``; the text's end past the last line."""
        value = self.lines.offset(line)
        return len(self.text) if value < 0 else value

    def fits_any_head(self, start: int, end: int) -> bool:
        """Whether ``text[start:end]`` fits as a body whatever its context line (no line to count)."""
        return (
            end - start <= self.budget.max_chars
            and self.index.count(start, end) <= self.budget.min_body_tokens
        )

    def fits(self, start: int, end: int, within: Budget) -> bool:
        return end - start <= within.max_chars and self.index.count(start, end) <= within.max_tokens

    def start_line(self, node: ast.stmt, floor: int) -> int:
        """First line of a statement: its decorators and the comment block right above it."""
        line = node.lineno
        if isinstance(node, _DEFINITIONS):
            line = min([line, *(d.lineno for d in node.decorator_list)])
            while line - 1 > floor and self.source_lines[line - 2].lstrip().startswith("#"):
                line -= 1
        return line

    def units(
        self, body: list[ast.stmt], first_line: int, last_line: int, prefix: str, context: str
    ) -> list[Unit]:
        """Units of the lines ``first_line..last_line`` holding ``body``; they cover those lines."""
        groups: list[tuple[int, ast.stmt | None]] = []  # (start line, definition or None)
        floor = first_line - 1
        for statement in body:
            is_definition = isinstance(statement, _DEFINITIONS)
            if is_definition or not groups or groups[-1][1] is not None:
                start = self.start_line(statement, floor)
                groups.append((max(start, first_line), statement if is_definition else None))
            floor = statement.end_lineno or statement.lineno
        if not groups:
            return self.plain(first_line, last_line, prefix.rstrip("."), context)
        groups[0] = (first_line, groups[0][1])
        units: list[Unit] = []
        for position, (start, node) in enumerate(groups):
            end = groups[position + 1][0] - 1 if position + 1 < len(groups) else last_line
            if end < start:
                continue
            if node is None:
                units.extend(self.plain(start, end, prefix.rstrip("."), context))
            else:
                units.extend(self.definition(node, start, end, prefix, context))
        return units

    def plain(self, first_line: int, last_line: int, title: str, context: str) -> list[Unit]:
        start, end = self.offset(first_line), self.offset(last_line + 1)
        bodies = split_text(self.text, self.within(context, title), start, end, self.index)
        return [Unit(s, e, title, context, mergeable=len(bodies) == 1) for s, e in bodies]

    def definition(
        self, node: ast.stmt, first_line: int, last_line: int, prefix: str, context: str
    ) -> list[Unit]:
        assert isinstance(node, _DEFINITIONS)
        span = trim(self.text, self.offset(first_line), self.offset(last_line + 1))
        if span is None:
            return []
        name = f"{prefix}{node.name}"
        if self.fits_any_head(*span) or self.fits(*span, self.within(context, name)):
            return [Unit(span[0], span[1], name, context)]
        if isinstance(node, ast.ClassDef) and any(isinstance(n, _DEFINITIONS) for n in node.body):
            doc = ast.get_docstring(node, clean=True) or ""
            class_line = f"class {name}" + (f": {one_line(first_paragraph(doc), 160)}" if doc else "")
            inner = " / ".join(part for part in (context, class_line) if part)
            members = [n for n in node.body if isinstance(n, _DEFINITIONS)]
            first_member = self.start_line(members[0], node.lineno)
            header_end = max(first_line, first_member - 1)
            units = self.plain(first_line, header_end, f"class {name}", context)
            units.extend(self.units(node.body, header_end + 1, last_line, f"{name}.", inner))
            return units
        title = f"{_keyword(node)} {name}"
        bodies = split_text(self.text, self.within(context, title), span[0], span[1], self.index)
        return [Unit(s, e, title, context, mergeable=False) for s, e in bodies]

    def merge(self, units: list[Unit]) -> list[Span]:
        """Neighbouring small units packed into one span while they fit (never across contexts)."""
        spans: list[Span] = []
        i = 0
        while i < len(units):
            j = i + 1
            titles = [units[i].title] if units[i].title else []
            if units[i].mergeable:
                while j < len(units) and units[j].mergeable and units[j].context == units[i].context:
                    joined = (
                        titles
                        if units[j].title in titles or not units[j].title
                        else [*titles, units[j].title]
                    )
                    if not self.fits_any_head(units[i].start, units[j].end) and not self.fits(
                        units[i].start, units[j].end, self.within(units[i].context, ", ".join(joined))
                    ):
                        break
                    titles = joined
                    j += 1
            spans.append(Span(units[i].start, units[j - 1].end, ", ".join(titles), units[i].context))
            i = j
        return spans


def python_spans(
    text: str, budget: Budget, label: str = "", index: TokenIndex | None = None
) -> tuple[list[Span], str] | None:
    """Spans of a Python text and the file's context line (``label``, with the first paragraph of
    the module docstring if any); None if it does not parse. ``index``: the budget's of ``text``."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    docstring = ast.get_docstring(tree, clean=True) or ""
    head = f"{label}: {one_line(first_paragraph(docstring), 200)}" if docstring else label
    splitter = _PythonSplitter(text, budget, head, index)
    last_line = text.count("\n") + 1
    units = splitter.units(tree.body, 1, last_line, "", "")
    return splitter.merge(units), head


class CodeProducer(Producer):
    """Source files of programming languages."""

    kind = "code"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = tuple(LANGUAGES)
    filenames = tuple(FILENAMES)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(b"#!") and language_of("", head) != ""

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        text = decode_text(source.data)
        language = language_of(source.name, source.data[:256]) or "text"
        label = display_name(source.name)
        index = budget.index(text)
        parsed = python_spans(text, budget, label, index) if language == "python" else None
        if parsed is not None:
            spans, context = parsed
        else:
            context = label
            spans = [Span(s, e) for s, e in split_text(text, budget.for_head(context), index=index)]
        return build_chunks(
            text,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            lines=LineIndex(text),
            metadata={"language": language},
            budget=budget,
            index=index,
        )
