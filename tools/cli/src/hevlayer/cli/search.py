"""``hevlayer search``: a text query, answered file by file (the best chunk of each file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from hevlayer.api.index.v1 import index_pb2
from hevlayer.client import Client
from hevlayer.ingest.producers.base import SNIPPET_CHARS, one_line

MAX_TOP_K = 1000
CHUNKS_PER_RESULT = 10
"""Chunks asked for per wanted file: several chunks of one file collapse into one result."""


@dataclass(frozen=True)
class Result:
    """One file of the answer, with its best chunk."""

    document_id: str
    path: str
    score: float
    snippet: str
    kind: str = ""
    line: int | None = None
    page: int | None = None
    title: str = ""
    chunk_id: str = ""

    @property
    def location(self) -> str:
        """``path:line`` or ``path (page N)``."""
        if self.line is not None:
            return f"{self.document_id}:{self.line}"
        if self.page is not None:
            return f"{self.document_id} (page {self.page})"
        return self.document_id


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _file_snippet(document_id: str, line: int | None) -> str:
    """A few lines of the file at ``line``, for results whose attributes carry no text."""
    if line is None:
        return ""
    try:
        with Path(document_id).open(encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    return one_line(" ".join(lines[max(0, line - 1) : line + 3]), SNIPPET_CHARS)


def to_result(hit: index_pb2.QueryHit) -> Result:
    attributes: Mapping[str, Any] = (
        json_format.MessageToDict(hit.attributes) if hit.HasField("attributes") else {}
    )
    line = _int(attributes.get("line"))
    snippet = str(attributes.get("snippet") or "") or one_line(
        str(attributes.get("text") or ""), SNIPPET_CHARS
    )
    return Result(
        document_id=hit.document_id,
        path=str(attributes.get("path") or hit.document_id),
        score=float(hit.score),
        snippet=snippet or _file_snippet(hit.document_id, line),
        kind=str(attributes.get("kind") or ""),
        line=line,
        page=_int(attributes.get("page")),
        title=str(attributes.get("title") or ""),
        chunk_id=hit.chunk_id,
    )


def best_per_document(hits: Sequence[index_pb2.QueryHit], k: int) -> list[Result]:
    """The first ``k`` documents of ``hits`` (best first), each with its best chunk."""
    results: list[Result] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.document_id in seen:
            continue
        seen.add(hit.document_id)
        results.append(to_result(hit))
        if len(results) == k:
            break
    return results


async def search(
    gateway: Client, pipeline_id: str, query: str, *, k: int = 5, kind: str | None = None
) -> list[Result]:
    """The ``k`` best files for ``query`` (optionally of one kind)."""
    hits = await gateway.index.query(
        pipeline_id,
        query,
        top_k=min(MAX_TOP_K, max(1, k) * CHUNKS_PER_RESULT),
        filter={"kind": kind} if kind else None,
    )
    return best_per_document(hits, k)
