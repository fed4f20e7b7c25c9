"""The JSON-lines span file (``HEVLAYER_TRACES_EXPORTER=file:PATH``) is shared by every
process of a stack: lines written at the same time by several processes never interleave."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

PROCESSES = 4
SPANS = 150

WRITER = """
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from hevlayer.common.telemetry import JsonLinesSpanExporter

name, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
provider = TracerProvider(resource=Resource.create({"service.name": name}))
provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
tracer = provider.get_tracer("test")
sys.stdin.readline()  # start together
for i in range(count):
    # lines from about 200 bytes to well past a page and the 8 KiB I/O buffer
    with tracer.start_as_current_span(f"{name}-{i}", attributes={"payload": name[-1] * (i * 997 % 70_000)}):
        pass
provider.shutdown()
"""


def test_processes_appending_to_one_span_file_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"writer{i}", str(path), str(SPANS)],
            stdin=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        assert writer.wait(timeout=120) == 0, f"a writer failed with exit code {writer.returncode}"

    data = path.read_bytes()
    assert data.endswith(b"\n"), "the file should end with a complete line"
    counts: Counter[str] = Counter()
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            span = json.loads(line)
        except json.JSONDecodeError as error:
            raise AssertionError(
                f"line {number} is not one JSON object ({error}): {line[:200]!r}..."
            ) from None
        service = span["service"]
        payload = span["attributes"]["payload"]
        assert set(payload) <= {service[-1]}, f"line {number}: {service}'s payload holds another's bytes"
        assert span["name"].startswith(f"{service}-"), f"line {number}: span {span['name']} of {service}"
        counts[service] += 1
    assert counts == {f"writer{i}": SPANS for i in range(PROCESSES)}
