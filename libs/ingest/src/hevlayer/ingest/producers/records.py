"""Record collections: JSON Lines (``.jsonl``, ``.ndjson``), one JSON value per line.

Each record is rendered like a table row (``field: value; nested.field:
value``) and consecutive records are packed into one chunk while they fit
the budget (at most ``max_rows``). Chunks carry ``line`` and ``end_line``
(the file's 1-based line numbers of their first and last record) and the
field names seen. Blank lines are skipped; a line that is not JSON stops the
file with a ProducerError naming the line.
"""

from __future__ import annotations

import json

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    build_chunks,
    decode_text,
    display_name,
    one_line,
)
from hevlayer.ingest.producers.table import _flatten, render, row_spans

MAX_FIELDS = 64
"""Most field names listed in a chunk's ``fields``."""


def records(text: str) -> list[tuple[int, object]]:
    """``(line number, value)`` of every non-blank line; ProducerError naming the first bad line."""
    parsed: list[tuple[int, object]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise ProducerError(f"invalid JSON on line {number}: {detail}") from None
    return parsed


class RecordsProducer(Producer):
    """JSON Lines files, records packed into chunks."""

    kind = "record_collection"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".jsonl", ".ndjson")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        parsed = records(decode_text(source.data))
        fields: list[str] = []
        rendered: list[str] = []
        for _, value in parsed:
            pairs = list(_flatten(value))
            for key, _ in pairs:
                if key not in fields and len(fields) < MAX_FIELDS:
                    fields.append(key)
            rendered.append(render(pairs))
        body = "\n".join(rendered)
        index = budget.index(body)
        numbers = [number for number, _ in parsed]
        names = one_line(", ".join(fields), 400)
        context = display_name(source.name) + (f" (fields: {names})" if names else "")
        spans = row_spans(rendered, budget.for_head(context), index, numbers, ("line", "end_line"))
        return build_chunks(
            body,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            metadata={"fields": names} if names else None,
            budget=budget,
            index=index,
        )
