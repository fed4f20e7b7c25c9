"""Table rows and schema: CSV/TSV, JSON (an array of records, or an object) and Parquet.

Each row is rendered as ``column: value; column: value`` and consecutive rows
are packed into one chunk while they fit the budget (at most ``max_rows``); a
row too long for one chunk is split like text. Chunks carry the first and
last row numbers and the column names.

After the rows comes one more chunk of kind ``table_schema`` (metadata
``kind``; ``hevlayer search --kind table_schema`` finds them) for CSV, TSV and
Parquet: the header and each column's type, inferred from the values for
CSV/TSV (``integer``, ``number``, ``boolean``, ``date``, ``datetime``, ``text``,
``empty``), read from the file for Parquet (Arrow types, via pyarrow).
JSON Lines files are record collections (``records.py``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Metadata,
    Producer,
    ProducerError,
    Scalar,
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


_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_BOOLEANS = frozenset({"true", "false", "yes", "no"})


def infer_type(values: Sequence[str]) -> str:
    """The narrowest type every non-empty value fits: integer, number, boolean, date, datetime, text."""
    present = [v.replace(",", "") if _NUMBER.fullmatch(v.replace(",", "")) else v for v in values if v]
    if not present:
        return "empty"
    for name, test in (
        ("integer", _INTEGER.fullmatch),
        ("number", _NUMBER.fullmatch),
        ("date", _DATE.fullmatch),
        ("datetime", _DATETIME.fullmatch),
    ):
        if all(test(v) for v in present):
            return name
    if all(v.lower() in _BOOLEANS for v in present):
        return "boolean"
    return "text"


def csv_schema(columns: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
    """``column: type`` lines of a CSV's columns (with the count of empty cells when there are any)."""
    lines: list[str] = []
    for position, column in enumerate(columns):
        values = [row[position][1] if position < len(row) else "" for row in rows]
        empty = sum(1 for v in values if not v)
        kind = infer_type(values)
        lines.append(f"{column}: {kind}" + (f" ({empty} empty)" if empty and kind != "empty" else ""))
    return lines


def parquet_table(data: bytes) -> tuple[list[str], list[str], list[list[tuple[str, str]]]]:
    """Column names, ``column: type`` lines and rows of a Parquet file (pyarrow)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        schema = parquet.schema_arrow
        rows: list[list[tuple[str, str]]] = []
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                rows.append(list(_flatten(record)))
    except (pa.ArrowException, OSError, ValueError, OverflowError, IndexError, KeyError, TypeError) as exc:
        raise ProducerError.unreadable("Parquet", exc) from None
    columns = [field.name for field in schema]
    lines = [f"{f.name}: {f.type}" + ("" if f.nullable else " (not null)") for f in schema]
    return columns, lines, rows


def row_groups(rendered: Sequence[str], budget: Budget, index: TokenIndex) -> list[tuple[int, int, int]]:
    """``(first row, end row, end offset)``: consecutive rendered rows (joined by newlines in
    ``index.text``) packed while they fit the budget and ``max_rows``."""
    starts: list[int] = []
    position = 0
    for line in rendered:
        starts.append(position)
        position += len(line) + 1
    groups: list[tuple[int, int, int]] = []
    i = 0
    while i < len(rendered):
        j = i + 1
        while (
            j < len(rendered)
            and j - i < budget.max_rows
            and (starts[j] + len(rendered[j])) - starts[i] <= budget.max_chars
            and index.count(starts[i], starts[j] + len(rendered[j])) <= budget.max_tokens
        ):
            j += 1
        groups.append((i, j, starts[j - 1] + len(rendered[j - 1])))
        i = j
    return groups


def row_spans(
    rendered: Sequence[str],
    budget: Budget,
    index: TokenIndex,
    numbers: Sequence[int],
    names: tuple[str, str] = ("row", "end_row"),
) -> list[Span]:
    """Spans of packed rows, each with the first and last row's number (``numbers[i]`` of row i)."""
    spans: list[Span] = []
    position = 0
    starts: list[int] = []
    for line in rendered:
        starts.append(position)
        position += len(line) + 1
    for i, j, end in row_groups(rendered, budget, index):
        extra: tuple[tuple[str, Scalar], ...] = ((names[0], numbers[i]), (names[1], numbers[j - 1]))
        spans.extend(
            Span(s, e, extra=extra) for s, e in split_text(index.text, budget, starts[i], end, index)
        )
    return spans


class TableProducer(Producer):
    """Rows of CSV, TSV, JSON and Parquet files, and the schema of CSV, TSV and Parquet files."""

    kind = "table"
    version = 3  # 3: budgets in the embedding model's tokens
    extra_chunk_kinds = ("table_schema",)
    extensions = (".csv", ".tsv", ".tab", ".json", ".parquet")

    def sniff(self, head: bytes) -> bool:
        return head[:4] == b"PAR1"

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        suffix = PurePosixPath(source.name).suffix.lower()
        schema: list[str] = []
        if suffix == ".parquet" or source.data[:4] == b"PAR1":
            columns, schema, rows = parquet_table(source.data)
        elif suffix in (".json", ".jsonl", ".ndjson"):
            columns, rows = json_rows(decode_text(source.data), lines=suffix != ".json")
        else:
            text = decode_text(source.data)
            columns, rows = csv_rows(text, "\t" if suffix in (".tsv", ".tab") else None)
            schema = csv_schema(columns, rows)
        rendered = [render(row) for row in rows]
        body = "\n".join(rendered)
        index = budget.index(body)
        column_names = one_line(", ".join(columns), 400)
        name = display_name(source.name)
        context = name + (f" (columns: {column_names})" if column_names else "")
        spans = row_spans(rendered, budget.for_head(context), index, range(1, len(rows) + 1))
        chunks = build_chunks(
            body,
            spans,
            kind=self.kind,
            name=source.name,
            context=context,
            metadata={"columns": column_names} if column_names else None,
            budget=budget,
            index=index,
        )
        if schema:
            chunks.extend(
                self.schema_chunks(source.name, schema, len(rows), column_names, len(chunks), budget)
            )
        return chunks

    @staticmethod
    def schema_chunks(
        name: str, schema: list[str], row_count: int, column_names: str, ordinal: int, budget: Budget
    ) -> list[Chunk]:
        """The ``table_schema`` chunk(s): one ``column: type`` line per column."""
        text = "\n".join(schema)
        context = f"{display_name(name)}: table schema, {len(schema)} columns, {row_count} rows"
        spans = [Span(s, e) for s, e in split_text(text, budget.for_head(context))]
        metadata: Metadata = {"columns": column_names, "column_count": len(schema), "rows": row_count}
        return build_chunks(
            text,
            spans,
            kind=TableProducer.extra_chunk_kinds[0],
            name=name,
            context=context,
            first_ordinal=ordinal,
            locator="schema",
            metadata=metadata,
            budget=budget,
        )
