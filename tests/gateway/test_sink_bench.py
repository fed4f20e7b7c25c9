"""bench/read_write.py runs end to end on a tiny workload (no timing is checked)."""

from __future__ import annotations

import read_write


def test_the_write_benchmark_runs() -> None:
    text = read_write.main(
        ["--docs", "12", "--chunks", "3", "--dim", "8", "--batch-docs", "5", "--rounds", "1"]
    )
    lines = text.splitlines()
    assert "36 vectors, dim 8" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 6
    assert {(row[0], row[-4]) for row in rows} >= {
        ("pymilvus", "new"),
        ("MilvusSink.replace_documents", "rewrite"),
    }
