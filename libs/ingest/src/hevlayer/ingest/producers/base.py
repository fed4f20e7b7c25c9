"""What every producer shares: sources, chunks, budgets, chunk ids and the text splitter.

A producer turns one object (a file's bytes) into chunks. Everything here is
transport-free and deterministic: the same bytes, path and budget always give
the same chunks with the same ids.

Budgets count tokens of a :class:`~hevlayer.ingest.tokenizer.TokenCounter`:
by default the embedding model's own WordPiece tokens (all-MiniLM-L6-v2 reads
at most 256, ``[CLS]`` and ``[SEP]`` included, and drops the rest), so that
what is embedded is what the model sees; ``Budget(tokenizer="regex")`` counts
``TOKEN`` units instead and sets no limit on the embedded text.

Spans. Text-like producers cut a *text* (the decoded file, one PDF page, the
text extracted from HTML, the rendered rows of a table) into chunk *bodies*
that are slices ``text[start:end]``. The splitter guarantees:

- every non-whitespace character of the text lies in at least one body (only
  whitespace between units is dropped);
- each body has at most ``budget.max_tokens`` tokens (counted in the whole
  text's tokenization) and ``budget.max_chars`` characters, except a body
  whose tokens all lie in one character that alone has more tokens than
  ``max_tokens`` (the model's tokenizer may make two tokens of one character,
  a Hangul syllable for instance, and none of a control character next to it;
  nothing smaller than a character can be cut);
- two consecutive bodies share at most ``budget.overlap_tokens`` tokens.

It cuts between paragraphs, else between lines, else between words (what the
model tokenizes on its own), and only a word too long for the budget on its
own is cut between its tokens (or, past ``max_chars``, its characters).

The embedded ``Chunk.text`` is a short context line (file, heading, module
docstring) followed by the body, so that a chunk of ``argparse.py`` knows it
is about argparse even when its body never says so. With the model's
tokenizer the embedded text fits the model: producers split each text with
``budget.for_head(...)``, the budget left for bodies under their context line
(``max_text_tokens`` minus ``[CLS]``/``[SEP]`` and the line's tokens), and
:func:`build_chunks` counts every embedded text and, should one still be over
(a body cut inside a word can tokenize longer on its own; a context line
longer than half the window), shortens its context line, never its body. So
no chunk's embedded text has more than ``max_text_tokens`` model tokens unless
its body alone has (a word longer than ``max_chars`` cut between characters).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from hevlayer.ingest.tokenizer import COUNTERS, MINILM, REGEX, TokenCounter
from hevlayer.ingest.tokenizer import TOKEN as TOKEN

Scalar = str | int | float | bool
Metadata = dict[str, Scalar]

MODEL_MAX_TOKENS = 256
"""The embedding model's window: all-MiniLM-L6-v2 reads at most this many tokens, [CLS] and [SEP] included."""

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_MAX_CONTEXT_CHARS = 240
SNIPPET_CHARS = 240


class ProducerError(Exception):
    """The object cannot be turned into chunks; the message says why (shown to the user)."""

    @classmethod
    def unreadable(cls, what: str, exc: BaseException) -> ProducerError:
        """``unreadable <what>: <the parser's message on one line, or its type>``."""
        return cls(f"unreadable {what}: {one_line(str(exc), 200) or type(exc).__name__}")


PACKAGE_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # zipfile: an unsupported compression method or version
    EOFError,
    KeyError,  # a part the package's relationships name is missing
    ValueError,
    SyntaxError,  # lxml's XMLSyntaxError: a part that is not XML
    AttributeError,  # XML of an unexpected shape
    TypeError,
    IndexError,
    OSError,
)
"""What reading a damaged Office Open XML (zip + XML) package raises in python-docx/python-pptx."""


@dataclass(frozen=True)
class Budget:
    """Size limits of one chunk, in the tokens of ``tokenizer``."""

    max_tokens: int = MODEL_MAX_TOKENS
    """Most tokens in one body (with the model's tokenizer, also what the window leaves: ``for_head``)."""
    overlap_tokens: int = 28
    """Most tokens two consecutive bodies of one text share."""
    max_chars: int = 2560
    """Most characters in one body."""
    max_rows: int = 20
    """Most table rows in one chunk."""
    tokenizer: str = MINILM.name
    """What counts tokens: ``minilm`` (the embedding model's WordPiece tokens) or ``regex``
    (``TOKEN`` units)."""
    max_text_tokens: int | None = None
    """Most model tokens in one embedded text, [CLS] and [SEP] included; None: the model's window
    (``MODEL_MAX_TOKENS``) with the model's tokenizer, no limit with ``regex``."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError("overlap_tokens must be at least 0 and below max_tokens")
        if self.max_chars < 16:
            raise ValueError("max_chars must be at least 16")
        if self.max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if self.tokenizer not in COUNTERS:
            raise ValueError(
                f"tokenizer must be one of {', '.join(sorted(COUNTERS))}, not {self.tokenizer!r}"
            )
        if self.max_text_tokens is not None:
            if self.counter.special_tokens == 0:
                raise ValueError(f"max_text_tokens needs the model's tokenizer ({MINILM.name!r})")
            if self.max_text_tokens > MODEL_MAX_TOKENS:
                raise ValueError(f"max_text_tokens must be at most {MODEL_MAX_TOKENS} (the model's window)")
            if self.max_text_tokens < 2 * (self.counter.special_tokens + 1):
                raise ValueError(f"max_text_tokens must be at least {2 * (self.counter.special_tokens + 1)}")

    @property
    def counter(self) -> TokenCounter:
        """The token counter named by ``tokenizer``."""
        return COUNTERS[self.tokenizer]

    @property
    def text_limit(self) -> int:
        """Most tokens of one embedded text, special tokens included; 0: no limit."""
        if self.max_text_tokens is not None:
            return self.max_text_tokens
        return MODEL_MAX_TOKENS if self.counter.special_tokens else 0

    @property
    def min_body_tokens(self) -> int:
        """The fewest tokens ``for_head`` leaves a body, whatever the context line."""
        limit = self.text_limit
        return min(self.max_tokens, (limit - self.counter.special_tokens) // 2) if limit else self.max_tokens

    def index(self, text: str) -> TokenIndex:
        """The token index of ``text`` in this budget's tokens."""
        return TokenIndex(text, self.counter)

    def for_head(self, context: str = "", span_context: str = "", title: str = "") -> Budget:
        """The budget of bodies embedded after this context line (as :func:`build_chunks` writes it).

        Without a text limit, this budget. With one, ``max_tokens`` is what the window leaves
        (the limit less the special tokens and the line's tokens), at most this budget's, and
        at least half the window (a longer line is shortened by ``build_chunks``); the overlap
        stays below it.
        """
        limit = self.text_limit
        if not limit:
            return self
        room = limit - self.counter.special_tokens
        head = head_line(context, span_context, title)
        body = min(self.max_tokens, max(room // 2, room - (self.counter.count(head) if head else 0)))
        if body == self.max_tokens:
            return self
        return replace(self, max_tokens=body, overlap_tokens=min(self.overlap_tokens, body - 1))


DEFAULT_BUDGET = Budget()
"""The model's WordPiece tokens: bodies as long as the window leaves, a 28-token overlap."""
REGEX_BUDGET = Budget(max_tokens=200, overlap_tokens=24, max_chars=2000, tokenizer=REGEX.name)
"""The budget before the model's tokens were counted: 200 ``TOKEN`` units, a 24-unit overlap,
no limit on the embedded text (for a caller that cannot load the tokenizer)."""


@dataclass(frozen=True)
class Source:
    """One object to chunk."""

    document_id: str
    """The document's id in the pipeline (the file's absolute path)."""
    name: str
    """The path shown to people and put in the context line (relative to the added root)."""
    data: bytes
    """The object's bytes."""


@dataclass(frozen=True)
class Chunk:
    """One chunk as a producer makes it."""

    id: str
    """Unique within the document; a function of the ordinal, locator and body only."""
    text: str
    """What is embedded: the context line(s), then the body."""
    body: str
    """The slice of the producer's text this chunk covers."""
    start: int
    """Offset of ``body`` in that text (the page's text for PDFs, the rendered rows for tables)."""
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """A body to be: ``text[start:end]`` with its title and line numbers."""

    start: int
    end: int
    title: str = ""
    context: str = ""
    """Put before the title in the embedded text (a class line, say)."""
    extra: tuple[tuple[str, Scalar], ...] = ()


class Producer(ABC):
    """Turns objects of one kind into chunks. Subclasses are registered in ``producers/__init__``."""

    kind: str
    """The kind this producer handles (``text``, ``code``, ``pdf``, ...)."""
    version: int = 1
    """Bumped when the producer's chunks change for the same input (re-stages unchanged files)."""
    extensions: tuple[str, ...] = ()
    """Lower-case file name suffixes, with the dot, recognized as this kind."""
    filenames: tuple[str, ...] = ()
    """Exact file names recognized as this kind (``Makefile``)."""
    extra_chunk_kinds: tuple[str, ...] = ()
    """Chunk kinds (metadata ``kind``) this producer writes besides its own (``table_schema``)."""

    def sniff(self, head: bytes) -> bool:
        """Whether the first bytes of a file with an unknown extension look like this kind."""
        return False

    @abstractmethod
    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        """The chunks of ``source``, in order. Raises ProducerError when it cannot be read."""


# -- ids, text, metadata ---------------------------------------------------------------------------


def chunk_id(ordinal: int, body: str, locator: str = "") -> str:
    """``NNNN-<16 hex>``: the ordinal (unique within the document) and a hash of locator and body."""
    digest = hashlib.blake2b(f"{locator}\x00{body}".encode(errors="surrogatepass"), digest_size=8)
    return f"{ordinal:04d}-{digest.hexdigest()}"


def content_hash(data: bytes, producer: Producer) -> str:
    """The document's content hash: the SHA-256 of the bytes and the producer that reads them.

    A new producer version changes the hash, so its files are re-staged once.
    """
    return f"sha256:{hashlib.sha256(data).hexdigest()};{producer.kind}/{producer.version}"


def decode_text(data: bytes) -> str:
    """The text of ``data``: UTF-8 (BOM stripped), else Windows-1252/Latin-1, never failing."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def looks_binary(head: bytes) -> bool:
    """NUL bytes, or many control characters, in the first bytes."""
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    return controls / len(head) > 0.1


def one_line(text: str, limit: int = _MAX_CONTEXT_CHARS) -> str:
    """``text`` with whitespace runs collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def first_paragraph(text: str) -> str:
    """The first paragraph of ``text`` (up to the first blank line)."""
    return _BLANK_LINE.split(text.strip(), maxsplit=1)[0] if text.strip() else ""


def display_name(path: str) -> str:
    """A path's last two components (``json/decoder.py``), for context lines."""
    parts = PurePosixPath(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


class LineIndex:
    """Offset → 1-based line number."""

    def __init__(self, text: str) -> None:
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1

    def offset(self, line: int) -> int:
        """Offset of the first character of 1-based ``line`` (past the end for lines beyond it)."""
        if line <= 1:
            return 0
        if line - 2 < len(self._newlines):
            return self._newlines[line - 2] + 1
        return -1


def head_line(context: str = "", span_context: str = "", title: str = "") -> str:
    """The context line(s) a chunk's embedded text starts with: the producer's context, the span's,
    its title (on one line), each on its own line."""
    return "\n".join(part for part in (context, span_context, one_line(title) if title else "") if part)


def build_chunks(
    text: str,
    spans: Iterable[Span],
    *,
    kind: str,
    name: str,
    context: str = "",
    lines: LineIndex | None = None,
    first_ordinal: int = 0,
    locator: str = "",
    metadata: Metadata | None = None,
    budget: Budget | None = None,
    index: TokenIndex | None = None,
) -> list[Chunk]:
    """Chunks of the given body spans of ``text``, with ids and metadata.

    ``context`` starts every chunk's text; a span's title is added after it.
    ``lines``, when given, adds ``line`` and ``end_line``. With a ``budget`` that limits the
    embedded text, a context line that would take it over the limit is shortened; ``index``, the
    budget's token index of ``text`` when the caller has it, spares tokenizing bodies again.
    """
    chunks: list[Chunk] = []
    for offset, span in enumerate(spans):
        ordinal = first_ordinal + offset
        body = text[span.start : span.end]
        meta: Metadata = {"path": name, "kind": kind}
        if metadata:
            meta.update(metadata)
        if span.title:
            meta["title"] = one_line(span.title)
        if lines is not None:
            meta["line"] = lines.line(span.start)
            meta["end_line"] = lines.line(max(span.start, span.end - 1))
        meta.update(span.extra)
        meta["snippet"] = one_line(body, SNIPPET_CHARS)
        head = head_line(context, span.context, span.title)
        embedded = f"{head}\n{body}" if head else body
        chunks.append(
            Chunk(
                id=chunk_id(ordinal, body, f"{locator}:{span.start}"),
                text=embedded,
                body=body,
                start=span.start,
                metadata=meta,
            )
        )
    if budget is not None and budget.text_limit and chunks:
        usable = (
            index if index is not None and index.counter is budget.counter and index.text == text else None
        )
        chunks = _fit_heads(chunks, budget, usable)
    return chunks


def _fit_heads(chunks: list[Chunk], budget: Budget, index: TokenIndex | None) -> list[Chunk]:
    """``chunks`` with each embedded text within ``budget.text_limit`` tokens: a context line that
    takes it over is cut to the tokens the body leaves (none if the body alone fills the window).

    An embedded text's tokens are its context line's plus its body's (they are apart by a newline,
    so the model tokenizes them apart); a body cut between words has the tokens ``index`` counts
    in the whole text, any other body is tokenized again.
    """
    counter = budget.counter
    room = budget.text_limit - counter.special_tokens
    heads = [c.text[: len(c.text) - len(c.body)].removesuffix("\n") for c in chunks]
    distinct = list(dict.fromkeys(heads))
    head_tokens = dict(zip(distinct, counter.counts(distinct), strict=True))
    bodies: list[int | None] = [
        index.count(c.start, c.start + len(c.body))
        if index is not None and index.between_words(c.start, c.start + len(c.body))
        else None
        for c in chunks
    ]
    again = [c.body for c, tokens in zip(chunks, bodies, strict=True) if tokens is None]
    recounted = iter(counter.counts(again))
    fitted: list[Chunk] = []
    for chunk, head, known in zip(chunks, heads, bodies, strict=True):
        body = known if known is not None else next(recounted)
        if not head or head_tokens[head] + body <= room:
            fitted.append(chunk)
            continue
        kept = counter.prefix(head, room - body)
        fitted.append(replace(chunk, text=f"{kept}\n{chunk.body}" if kept else chunk.body))
    return fitted


# -- the splitter ----------------------------------------------------------------------------------


class TokenIndex:
    """Token offsets of one text, to count the tokens of any slice in O(log n).

    The text is tokenized once, whole, by ``counter`` (``TOKEN`` units by default; a budget's
    index counts its tokenizer's: ``Budget.index``).
    """

    def __init__(self, text: str, counter: TokenCounter = REGEX) -> None:
        self.text = text
        self.counter = counter
        tokens = counter.tokens(text)
        self.starts: list[int] = tokens.starts
        self.ends: list[int] = tokens.ends
        self.words: list[int] = tokens.words
        """Offsets where words start (what the tokenizer tokenizes on its own)."""
        self._word_starts = frozenset(self.words)

    def between_words(self, start: int, end: int) -> bool:
        """Whether ``text[start:end]`` starts and ends between words, so that on its own it has the
        tokens ``count`` gives (trimmed slices: it starts a word and ends before a word or space)."""
        text = self.text
        return start in self._word_starts and (
            end == len(text) or end in self._word_starts or text[end].isspace()
        )

    def count(self, start: int, end: int) -> int:
        """Tokens lying wholly inside ``text[start:end]``."""
        first = bisect.bisect_left(self.starts, start)
        last = bisect.bisect_right(self.ends, end)
        return max(0, last - first)


def trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` without leading and trailing whitespace; None if only whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _pieces(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[tuple[int, int]]:
    """Trimmed, non-empty pieces of ``text[start:end]`` between matches of ``separator``."""
    pieces: list[tuple[int, int]] = []
    position = start
    for match in separator.finditer(text, start, end):
        piece = trim(text, position, match.start())
        if piece:
            pieces.append(piece)
        position = match.end()
    piece = trim(text, position, end)
    if piece:
        pieces.append(piece)
    return pieces


_NEWLINE = re.compile("\n")


def _cut(text: str, start: int, end: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """Trimmed, non-empty pieces of ``text[start:end]`` cut at the sorted offsets ``cuts``."""
    first = bisect.bisect_right(cuts, start)
    last = bisect.bisect_left(cuts, end)
    bounds = [start, *cuts[first:last], end]
    return [piece for s, e in itertools.pairwise(bounds) if (piece := trim(text, s, e))]


def _units(index: TokenIndex, start: int, end: int, budget: Budget) -> list[tuple[int, int]]:
    """Pieces that each fit the budget: paragraphs, else their lines, else their words, else a
    word's tokens, else (a token longer than ``max_chars``) its characters."""

    def fits(s: int, e: int) -> bool:
        return e - s <= budget.max_chars and index.count(s, e) <= budget.max_tokens

    text = index.text
    units: list[tuple[int, int]] = []
    for paragraph in _pieces(text, start, end, _BLANK_LINE):
        if fits(*paragraph):
            units.append(paragraph)
            continue
        for line in _pieces(text, paragraph[0], paragraph[1], _NEWLINE):
            if fits(*line):
                units.append(line)
                continue
            for word in _cut(text, *line, index.words):
                if fits(*word):
                    units.append(word)
                    continue
                for token in _cut(text, *word, index.starts):
                    if fits(*token):
                        units.append(token)
                        continue
                    cuts = range(token[0] + budget.max_chars, token[1], budget.max_chars)
                    units.extend(_cut(text, *token, cuts))
    return units


def group(index: TokenIndex, units: Sequence[tuple[int, int]], budget: Budget) -> list[tuple[int, int]]:
    """Consecutive units packed into bodies within the budget, overlapping by whole units.

    Each unit must fit the budget on its own.
    """

    def fits(s: int, e: int) -> bool:
        return e - s <= budget.max_chars and index.count(s, e) <= budget.max_tokens

    bodies: list[tuple[int, int]] = []
    i, n = 0, len(units)
    while i < n:
        j = i + 1
        while j < n and fits(units[i][0], units[j][1]):
            j += 1
        bodies.append((units[i][0], units[j - 1][1]))
        if j >= n:
            break
        k = j
        if budget.overlap_tokens:
            while k - 1 > i and index.count(units[k - 1][0], units[j - 1][1]) <= budget.overlap_tokens:
                k -= 1
        i = k
    return bodies


def split_text(
    text: str,
    budget: Budget = DEFAULT_BUDGET,
    start: int = 0,
    end: int | None = None,
    index: TokenIndex | None = None,
) -> list[tuple[int, int]]:
    """Bodies ``(start, end)`` of ``text[start:end]``: paragraphs packed up to the budget."""
    index = index if index is not None else budget.index(text)
    stop = len(text) if end is None else end
    return group(index, _units(index, start, stop, budget), budget)
