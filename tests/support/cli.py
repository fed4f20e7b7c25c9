"""Helpers of the CLI and ingest tests: tiny PDFs, checks on producers' chunks (coverage,
budget, spans), and running the ``hevlayer`` command as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hevlayer.ingest.producers import Budget, Chunk

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters other than tab and newline (ANSI escapes start with \\x1b)."""


def make_pdf(pages: Sequence[str], title: str | None = None) -> bytes:
    """A minimal PDF 1.4 with one Helvetica text line per page (written by hand, offsets exact)."""
    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_number, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        content_id = page_ids[page_number] + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_id = None
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
        info_id = len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    info = f" /Info {info_id} 0 R" if info_id else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def assert_covers(text: str, spans: Sequence[tuple[int, int]]) -> None:
    """Every non-whitespace character of ``text`` lies in some span."""
    marks = [False] * len(text)
    for start, end in spans:
        for i in range(start, end):
            marks[i] = True
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not marks[i]]
    assert not missing, f"uncovered characters at {missing[:10]}: {[text[i] for i in missing[:10]]}"


def assert_within_budget(text: str, spans: Sequence[tuple[int, int]], budget: Budget) -> None:
    """No span has more characters or tokens (the budget's, counted in the whole text) than allowed,
    but a span whose tokens all lie in one character, which cannot be cut (the model's tokenizer
    may make two tokens of one character, and none of a control character beside it:
    ``test_a_character_of_more_tokens_than_the_budget_is_a_body_of_its_own``)."""
    index = budget.index(text)
    for start, end in spans:
        assert end - start <= budget.max_chars, (start, end)
        tokens = index.count(start, end)
        assert tokens <= budget.max_tokens or any(
            index.count(i, i + 1) == tokens for i in range(start, end)
        ), (start, end, tokens)


def chunk_spans(text: str, chunks: Sequence[Chunk]) -> list[tuple[int, int]]:
    """The spans of chunks whose bodies are slices of ``text`` (checked)."""
    spans = []
    for chunk in chunks:
        assert text[chunk.start : chunk.start + len(chunk.body)] == chunk.body
        assert chunk.text.endswith(chunk.body)
        spans.append((chunk.start, chunk.start + len(chunk.body)))
    return spans


@dataclass(frozen=True)
class Ran:
    """A finished ``hevlayer`` run."""

    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def hevlayer(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: str | os.PathLike[str] | None = None,
) -> Ran:
    """Run ``python -m hevlayer.cli ARGS`` with stdout and stderr captured (pipes: not a terminal)."""
    merged = {**os.environ, "HEVLAYER_GATEWAY": "", **(env or {})}
    merged.pop("HEVLAYER_PIPELINE", None)
    completed = subprocess.run(
        [sys.executable, "-m", "hevlayer.cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env=merged,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Ran(completed.returncode, completed.stdout, completed.stderr)


def sample_tree(root: Path) -> dict[str, Path]:
    """A small directory of text, markdown, code, a PDF, HTML, CSV, JSON; and a binary no producer takes."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "notes.txt": "Sourdough bread needs a lively starter, flour, water and salt.\n\n"
        "Let the dough rise overnight in a cool kitchen.\n",
        "guide.md": "# Beekeeping\n\nA hive holds one queen and many workers.\n\n"
        "## Harvest\n\nHoney is extracted from the frames in late summer.\n",
        "orbit.py": '"""Orbital mechanics helpers."""\n\n\ndef escape_velocity(mass, radius):\n'
        '    """Speed needed to leave a planet without further propulsion."""\n'
        "    return (2 * 6.674e-11 * mass / radius) ** 0.5\n",
        "page.html": "<html><head><title>Volcanoes</title><style>p{}</style></head><body>"
        "<h1>Volcanoes</h1><p>Magma rises through the crust and erupts as lava.</p>"
        "<script>alert(1)</script></body></html>",
        "birds.csv": "species,habitat\nalbatross,open ocean\npenguin,antarctic ice\n",
        "config.json": '[{"setting": "telescope aperture", "value": "200 mm"}]',
    }
    paths = {}
    for name, content in files.items():
        path = root / name
        path.write_text(content)
        paths[name] = path
    pdf = root / "glaciers.pdf"
    pdf.write_bytes(make_pdf(["Glaciers carve valleys as they slowly flow downhill."]))
    paths["glaciers.pdf"] = pdf
    binary = root / "firmware.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(64))
    paths["firmware.bin"] = binary
    return paths
