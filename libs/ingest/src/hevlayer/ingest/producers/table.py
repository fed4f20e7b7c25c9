"""Table rows: CSV/TSV and JSON (an array of records, JSON Lines, or an object).

Each row is rendered as ``column: value; column: value`` and consecutive rows
are packed into one chunk while they fit the budget (at most ``max_rows``); a
row too long for one chunk is split like text. Chunks carry the first and
last row numbers and the column names.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Producer,
    ProducerError,
    Source,
    Span,
    TokenIndex,
    build_chunks,
    decode_text,
    display_name,
    one_line,
    split_text,
)

_MAX_CELL_CHARS = 2000


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    return " ".join(text.split())[:_MAX_CELL_CHARS]


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, value)`` pairs of a JSON value; lists of scalars stay one value."""
    if isinstance(value, dict):
        if not value and prefix:
            yield prefix, "{}"
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        for position, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{position}]")
    else:
        yield prefix or "value", _cell(value)


def render(pairs: list[tuple[str, str]]) -> str:
    """``column: value; column: value`` (empty values left out)."""
    return "; ".join(f"{key}: {value}" if key else value for key, value in pairs if value != "")


def csv_rows(text: str, delimiter: str | None) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Column names and rows of a CSV text; the first row is the header."""
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise ProducerError(f"unreadable CSV: {exc}") from None
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        return [], []
    header = [cell.strip() or f"column {n + 1}" for n, cell in enumerate(records[0])]
    rows: list[list[tuple[str, str]]] = []
    for record in records[1:]:
        pairs = []
        for n, cell in enumerate(record):
            column = header[n] if n < len(header) else f"column {n + 1}"
            pairs.append((column, _cell(cell.strip())))
        rows.append(pairs)
    return header, rows


def json_rows(text: str, lines: bool) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Column names and rows of a JSON (or JSON Lines) text."""
    try:
        if lines:
            values = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            document = json.loads(text)
            if isinstance(document, list):
                values = document
            elif isinstance(document, dict):
                tables = [v for v in document.values() if isinstance(v, list) and v and
                          all(isinstance(i, dict) for i in v)]  # fmt: skip
                if len(document) == 1 and tables:
                    values = tables[0]
                else:
                    values = [{key: value} for key, value in document.items()]
            else:
                values = [document]
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProducerError(f"invalid JSON: {exc}") from None
    columns: list[str] = []
    rows: list[list[tuple[str, str]]] = []
    for value in values:
        pairs = list(_flatten(value))
        for key, _ in pairs:
            if key not in columns and len(columns) < 64:
                columns.append(key)
        rows.append(pairs)
    return columns, rows


class TableProducer(Producer):
    """Rows of CSV, TSV, JSON and JSON Lines files."""

    kind = "table"
    extensions = (".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson")

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        text = decode_text(source.data)
        suffix = PurePosixPath(source.name).suffix.lower()
        if suffix in (".json", ".jsonl", ".ndjson"):
            columns, rows = json_rows(text, lines=suffix != ".json")
        else:
            columns, rows = csv_rows(text, "\t" if suffix in (".tsv", ".tab") else None)
        rendered = [render(row) for row in rows]
        body = "\n".join(rendered)
        starts: list[int] = []
        position = 0
        for line in rendered:
            starts.append(position)
            position += len(line) + 1
        index = TokenIndex(body)
        column_names = one_line(", ".join(columns), 400)
        spans: list[Span] = []
        i = 0
        while i < len(rows):
            j = i + 1
            while (
                j < len(rows)
                and j - i < budget.max_rows
                and (starts[j] + len(rendered[j])) - starts[i] <= budget.max_chars
                and index.count(starts[i], starts[j] + len(rendered[j])) <= budget.max_tokens
            ):
                j += 1
            end = starts[j - 1] + len(rendered[j - 1])
            extra = (("row", i + 1), ("end_row", j))
            pieces = split_text(body, budget, starts[i], end, index)
            spans.extend(Span(s, e, extra=extra) for s, e in pieces)
            i = j
        context = display_name(source.name) + (f" (columns: {column_names})" if column_names else "")
        return build_chunks(
            body,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            metadata={"columns": column_names} if column_names else None,
        )
