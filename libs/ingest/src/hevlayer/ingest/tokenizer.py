"""Token counters for chunk budgets: the embedding model's WordPiece tokens, or a regex.

A chunk budget counts tokens. The embedding model (all-MiniLM-L6-v2) reads at
most 256 of its own WordPiece tokens, ``[CLS]`` and ``[SEP]`` included, and
drops the rest, so the budget counts those: :data:`MINILM` tokenizes with the
model's own ``tokenizer.json`` (a copy shipped in this package, byte for byte
the model's: its SHA-256 is ``hevlayer.triton.onnx_model.MINILM_TOKENIZER_SHA256``,
checked by the tests), without special tokens, truncation or padding.
:data:`REGEX` counts :data:`TOKEN` units instead (no tokenizer needed, but
no bound on the model's count: 200 units were over 256 model tokens in 31 %
of the chunks of ``make run``'s corpus).

Both give, for a text, the offsets of its tokens and where its *words* start.
A word is what the model tokenizes on its own (the BERT pre-tokenizer's runs
of letters and digits, and single punctuation characters): cutting a text
only between words keeps every piece's tokens the same as in the whole text,
so token counts of slices add up.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKEN = re.compile(r"\w{1,10}|[^\w\s]")
"""A token-ish unit: a run of at most 10 word characters, or one other
non-whitespace character. It bounds a token's length, so a budget in these
units bounds characters."""

MINILM_TOKENIZER_FILE = "tokenizer.json"
"""all-MiniLM-L6-v2's tokenizer, package data of ``hevlayer.ingest``."""
MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
"""SHA-256 of that file (the model package's ``tokenizer.json``)."""


@dataclass(frozen=True)
class Tokens:
    """A text's tokens: ``starts[i]:ends[i]`` is token i; ``words`` are the offsets where words start."""

    starts: list[int]
    ends: list[int]
    words: list[int]


class TokenCounter(Protocol):
    """Tokenizes texts for budgets."""

    name: str
    special_tokens: int
    """Tokens the model adds to every text (``[CLS]`` and ``[SEP]``): 0 for a counter of no model."""

    def tokens(self, text: str) -> Tokens:
        """The tokens of ``text`` and its word starts, in order."""
        ...

    def count(self, text: str) -> int:
        """How many tokens ``text`` has on its own (special tokens not included)."""
        ...

    def counts(self, texts: Sequence[str]) -> list[int]:
        """``count`` of each text."""
        ...

    def prefix(self, text: str, tokens: int) -> str:
        """The longest start of ``text`` with at most ``tokens`` tokens, cut after a token."""
        ...


class RegexCounter:
    """:data:`TOKEN` units; every unit is a word."""

    name = "regex"
    special_tokens = 0

    def tokens(self, text: str) -> Tokens:
        starts: list[int] = []
        ends: list[int] = []
        for match in TOKEN.finditer(text):
            starts.append(match.start())
            ends.append(match.end())
        return Tokens(starts, ends, starts)

    def count(self, text: str) -> int:
        return sum(1 for _ in TOKEN.finditer(text))

    def counts(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]

    def prefix(self, text: str, tokens: int) -> str:
        if tokens <= 0:
            return ""
        end = 0
        for number, match in enumerate(TOKEN.finditer(text), start=1):
            end = match.end()
            if number == tokens:
                break
        return text[:end]


@functools.cache
def _minilm() -> Tokenizer:
    from tokenizers import Tokenizer

    data = importlib.resources.files("hevlayer.ingest").joinpath(MINILM_TOKENIZER_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != MINILM_TOKENIZER_SHA256:
        raise RuntimeError(f"{MINILM_TOKENIZER_FILE} of hevlayer.ingest is not all-MiniLM-L6-v2's tokenizer")
    tokenizer = Tokenizer.from_str(data.decode())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class WordPieceCounter:
    """all-MiniLM-L6-v2's WordPiece tokens (bert-base-uncased's vocabulary), as the model counts them."""

    name = "minilm"
    special_tokens = 2

    def tokens(self, text: str) -> Tokens:
        encoding = _minilm().encode(text, add_special_tokens=False)
        kept = [
            (start, end, word)
            for (start, end), word in zip(encoding.offsets, encoding.word_ids, strict=True)
            if end > start
        ]
        starts = [start for start, _, _ in kept]
        ends = [end for _, end, _ in kept]
        words = [
            start
            for (start, _, word), previous in zip(kept, [None, *(w for _, _, w in kept)], strict=False)
            if word != previous
        ]
        return Tokens(starts, ends, words)

    def count(self, text: str) -> int:
        return len(_minilm().encode(text, add_special_tokens=False).ids)

    def counts(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in _minilm().encode_batch(list(texts), add_special_tokens=False)]

    def prefix(self, text: str, tokens: int) -> str:
        if tokens <= 0:
            return ""
        offsets = _minilm().encode(text, add_special_tokens=False).offsets
        return text if tokens >= len(offsets) else text[: offsets[tokens - 1][1]]


REGEX = RegexCounter()
MINILM = WordPieceCounter()
COUNTERS: dict[str, TokenCounter] = {REGEX.name: REGEX, MINILM.name: MINILM}
"""The counters by name (``Budget.tokenizer``)."""
