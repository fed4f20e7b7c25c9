"""Summary providers: who turns a directory's children into a summary.

- :class:`ExtractiveProvider` (the default) is **not an LLM**: it is a
  deterministic, offline extractor that lists the children with a lead for
  each (a module docstring, a leading comment, a Markdown heading and first
  sentence, the first sentence of plain text, the gist of a sub-directory's
  summary) within a word budget. Same input, same output, no network.
- :class:`OpenAIChatProvider` calls an OpenAI-compatible chat-completions
  endpoint (``POST {SUMMARIZER_LLM_URL}/chat/completions``) with aiohttp,
  retrying 429, 5xx, timeouts and connection errors with exponential backoff.

A provider sees only the children (names, kinds, excerpts), never the
directory's path, so its output is a function of the inputs the cache key
is made of (:mod:`hevlayer.ingest.transform`). ``prompt_version`` names
everything else that shapes the output (prompt text, budgets).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from hevlayer.ingest.transform import digest
from hevlayer.summarizer import metrics

log = logging.getLogger("hevlayer.summarizer.providers")

DIRECTORY_KIND = "directory"
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0


class ProviderError(Exception):
    """A summary could not be written; the message says why."""


@dataclass(frozen=True)
class ChildInput:
    """One child of the directory being folded."""

    name: str  # "main.py", or "app/" for a sub-directory
    kind: str  # the object's kind, or "directory"
    text: str = ""  # the object's excerpt or the sub-directory's summary
    content_hash: str = ""  # the object's content hash, or the sub-directory summary's cache key
    failed: bool = False  # a sub-directory whose summary failed

    @property
    def is_directory(self) -> bool:
        """A sub-directory rather than an object."""
        return self.kind == DIRECTORY_KIND

    def digest(self) -> str:
        """This input's contribution to the cache key."""
        return digest(self.name, self.kind, self.content_hash, self.text, "failed" if self.failed else "")


class SummaryProvider(abc.ABC):
    """Writes one directory's summary from its children."""

    #: The model name recorded with each summary and part of the cache key.
    model: str

    @property
    @abc.abstractmethod
    def prompt_version(self) -> str:
        """Everything besides the model and the inputs that shapes the output."""

    @abc.abstractmethod
    async def summarize(self, children: Sequence[ChildInput]) -> str:
        """The summary of a directory with these children (sub-directories first)."""

    async def close(self) -> None:
        """Release connections."""
        return None


# -- extractive ---------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[`])")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s*(=+|-+)\s*$")
_DOCSTRING = re.compile(r'^[rRuU]?("""|\'\'\')(.*?)(\1|$)', re.DOTALL)
_MARKUP_EXTS = frozenset({"md", "markdown", "mdx", "rst", "txt", "adoc", "org"})
_PYTHON_EXTS = frozenset({"py", "pyi", "pyx"})
_COMMENT_PREFIXES = ("#", "//", "--", ";", "%", "*")
_BOILERPLATE = re.compile(r"(copyright|spdx-license|license|-\*-.*coding|^!|eslint|pylint|noqa)", re.I)


def _words(text: str) -> list[str]:
    return text.split()


def _truncate_words(text: str, limit: int) -> str:
    words = _words(text)
    if len(words) <= limit:
        return " ".join(words)
    return " ".join(words[:limit]).rstrip(",;:") + " …"


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` with whitespace collapsed."""
    flat = " ".join(text.split())
    if not flat:
        return ""
    return _SENTENCE_END.split(flat, maxsplit=1)[0]


def _first_paragraph(lines: Sequence[str]) -> str:
    paragraph: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    return " ".join(paragraph)


def _python_lead(text: str) -> str:
    lines = text.splitlines()
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].lstrip().startswith("#")):
        start += 1
    match = _DOCSTRING.match("\n".join(lines[start:]).lstrip())
    if match and match.group(2).strip():
        return first_sentence(_first_paragraph(match.group(2).splitlines()))
    return _comment_lead(text)


def _comment_lead(text: str) -> str:
    """The first sentence of the leading comment block, boilerplate skipped."""
    body: list[str] = []
    in_block = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if body:
                break
            continue
        if line.startswith("/*"):
            in_block = True
            line = line[2:].lstrip("*")
        if in_block:
            end = line.find("*/")
            if end >= 0:
                line = line[:end]
                in_block = False
            line = line.lstrip("* ").strip()
        elif line.startswith(_COMMENT_PREFIXES):
            line = line.lstrip("#/-;%*! ").strip()
        else:
            break
        if not line or _BOILERPLATE.search(line):
            if body and not in_block:
                break
            continue
        body.append(line)
    return first_sentence(" ".join(body))


def _markup_lead(text: str) -> str:
    lines = text.splitlines()
    heading = ""
    rest_start = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        match = _MD_HEADING.match(line)
        if match:
            heading, rest_start = match.group(1).strip(), i + 1
        elif i + 1 < len(lines) and _SETEXT.match(lines[i + 1]) and len(line.strip()) > 1:
            heading, rest_start = line.strip(), i + 2
        break
    body_lines = [
        line
        for line in lines[rest_start:]
        if not _MD_HEADING.match(line) and not line.lstrip().startswith(("```", "[!", "![", "<", "|"))
    ]
    sentence = first_sentence(_first_paragraph(body_lines))
    if heading and sentence:
        return f"{heading} — {sentence}"
    return heading or sentence


def _directory_lead(summary: str) -> str:
    """The gist of a sub-directory's summary: its entries, header line dropped."""
    lines = [line.strip() for line in summary.splitlines() if line.strip()]
    entries = [line[2:] for line in lines if line.startswith("- ")]
    if entries:
        return "; ".join(entries)
    return first_sentence(summary)


def lead(child: ChildInput) -> str:
    """What the extractive provider says about one child."""
    if child.failed:
        return "(summary unavailable)"
    text = child.text.strip()
    if not text:
        return ""
    if child.is_directory:
        return _directory_lead(text)
    extension = child.name.rsplit(".", 1)[-1].lower() if "." in child.name else ""
    if extension in _PYTHON_EXTS:
        return _python_lead(text) or first_sentence(text)
    if extension in _MARKUP_EXTS or child.kind in ("markdown", "document"):
        return _markup_lead(text)
    if child.kind == "code" or text.lstrip().startswith(("/*", "//", "#", "--")):
        return _comment_lead(text) or first_sentence(text.splitlines()[0])
    return first_sentence(text)


def _header(children: Sequence[ChildInput]) -> str:
    files = [c for c in children if not c.is_directory]
    dirs = [c for c in children if c.is_directory]
    if not children:
        return "Empty directory."
    parts = []
    if files:
        kinds: dict[str, int] = {}
        for c in files:
            kinds[c.kind or "other"] = kinds.get(c.kind or "other", 0) + 1
        breakdown = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        parts.append(f"{len(files)} file{'s' if len(files) != 1 else ''} ({breakdown})")
    if dirs:
        parts.append(f"{len(dirs)} sub-director{'ies' if len(dirs) != 1 else 'y'}")
    return "Directory of " + " and ".join(parts) + "."


class ExtractiveProvider(SummaryProvider):
    """Deterministic, offline, extractive (not an LLM): the children and a lead
    for each, within ``max_words``."""

    model = "extractive-v1"

    def __init__(self, max_words: int = 200, max_child_chars: int = 1200) -> None:
        self.max_words = max_words
        self.max_child_chars = max_child_chars

    @property
    def prompt_version(self) -> str:
        return f"extractive-1:w{self.max_words}:c{self.max_child_chars}"

    async def summarize(self, children: Sequence[ChildInput]) -> str:
        header = _header(children)
        lines = [header]
        remaining = self.max_words - len(_words(header))
        per_child = max(6, min(40, remaining // max(1, len(children))))
        listed = 0
        for child in children:
            gist = _truncate_words(lead(_clip(child, self.max_child_chars)), per_child)
            line = f"- {child.name}: {gist}" if gist else f"- {child.name}"
            cost = len(_words(line))
            if cost > remaining and listed > 0:
                break
            lines.append(line)
            remaining -= cost
            listed += 1
        rest = children[listed:]
        if rest:
            names = ", ".join(c.name for c in rest)
            lines.append(_truncate_words(f"- … and {len(rest)} more: {names}", max(8, remaining)))
        return "\n".join(lines)


def _clip(child: ChildInput, limit: int) -> ChildInput:
    if len(child.text) <= limit:
        return child
    return ChildInput(child.name, child.kind, child.text[:limit], child.content_hash, child.failed)


# -- OpenAI-compatible chat completions ---------------------------------------------

SYSTEM_PROMPT = (
    "You summarize one directory of a file tree for a search index. You are given the "
    "directory's children: sub-directories (names ending in '/', with their own summaries) "
    "and files (with their kind and an excerpt). Say what the directory contains and what it "
    "is for, based only on what is given. Plain prose, no preamble, no lists, at most "
    "{max_words} words."
)


def build_prompt(children: Sequence[ChildInput], max_child_chars: int, max_prompt_chars: int) -> str:
    """The user message: each child with its kind and clipped text; children past
    ``max_prompt_chars`` are listed by name only."""
    if not children:
        return "The directory is empty."
    blocks: list[str] = []
    used = 0
    names_only: list[str] = []
    for child in children:
        kind = child.kind or "unknown"
        if child.failed:
            body = "(its summary is unavailable)"
        else:
            body = child.text.strip()[:max_child_chars] or "(no excerpt)"
        block = f"### {child.name} ({kind})\n{body}"
        if used + len(block) > max_prompt_chars and blocks:
            names_only.append(child.name)
            continue
        blocks.append(block)
        used += len(block)
    prompt = "Children of the directory:\n\n" + "\n\n".join(blocks)
    if names_only:
        prompt += "\n\nOther children (names only): " + ", ".join(names_only)
    return prompt


class OpenAIChatProvider(SummaryProvider):
    """An OpenAI-compatible ``/chat/completions`` endpoint over aiohttp."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        timeout: float = 60.0,
        max_attempts: int = 4,
        max_tokens: int = 400,
        max_words: int = 200,
        max_child_chars: int = 1200,
        max_prompt_chars: int = 24000,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.max_words = max_words
        self.max_child_chars = max_child_chars
        self.max_prompt_chars = max_prompt_chars
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None

    @property
    def prompt_version(self) -> str:
        system = digest(SYSTEM_PROMPT)[:12]
        return (
            f"chat-1:{system}:w{self.max_words}:t{self.max_tokens}"
            f":c{self.max_child_chars}:p{self.max_prompt_chars}"
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    def request_body(self, children: Sequence[ChildInput]) -> dict[str, Any]:
        """The JSON body of the chat-completions request for ``children``."""
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT.format(max_words=self.max_words)},
                {
                    "role": "user",
                    "content": build_prompt(children, self.max_child_chars, self.max_prompt_chars),
                },
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    async def summarize(self, children: Sequence[ChildInput]) -> str:
        body = self.request_body(children)
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                async with self._client().post(self.endpoint, json=body) as response:
                    if response.status == 200:
                        try:
                            text = _completion_text(await response.json(content_type=None))
                        except (ProviderError, ValueError) as exc:
                            metrics.PROVIDER_CALLS.labels(self.model, "error").inc()
                            raise ProviderError(f"{self.endpoint}: {exc}") from None
                        metrics.PROVIDER_CALLS.labels(self.model, "ok").inc()
                        return text
                    detail = (await response.text())[:300]
                    last_error = f"HTTP {response.status} from {self.endpoint}: {detail}"
                    if response.status not in _RETRY_STATUSES:
                        metrics.PROVIDER_CALLS.labels(self.model, "error").inc()
                        raise ProviderError(last_error)
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__} calling {self.endpoint}: {exc}"
            metrics.PROVIDER_CALLS.labels(self.model, "error").inc()
            if attempt == self.max_attempts:
                break
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
            delay = retry_after if retry_after is not None else delay * (0.5 + random.random() / 2)
            log.warning(
                "summary provider call failed; retrying",
                extra={"attempt": attempt, "error": last_error, "retry_in_s": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        raise ProviderError(f"{last_error} (after {self.max_attempts} attempts)")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(_MAX_RETRY_AFTER, float(value)))
    except ValueError:
        return None


def _completion_text(payload: Any) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("malformed chat-completions response: no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise ProviderError("the model returned an empty summary")
    return content.strip()
