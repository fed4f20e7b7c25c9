"""Progress display: rich bars on a terminal, plain lines (no control codes) otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hevlayer.cli.ingest import Progress as AddProgress

STAGES = ("enumerated", "extracted", "embedded", "indexed")


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stage_values(progress: AddProgress) -> dict[str, tuple[int, int | None]]:
    """``stage -> (done, total)`` of the four bars (the file total is unknown until enumeration ends)."""
    return {
        "enumerated": (progress.files, progress.files if progress.files_done else None),
        "extracted": (progress.extracted, progress.total),
        "embedded": (progress.embedded, progress.total),
        "indexed": (progress.indexed, progress.total),
    }


def plain_line(progress: AddProgress) -> str:
    """``enumerated 120 files | extracted 80/120 | ...``: one progress line."""
    values = stage_values(progress)
    files, _ = values["enumerated"]
    parts = [f"enumerated {files} files{'' if progress.files_done else '+'}"]
    parts.extend(f"{stage} {values[stage][0]}/{values[stage][1]}" for stage in STAGES[1:])
    parts.append(f"chunks {progress.chunks}")
    if progress.failed:
        parts.append(f"failed {progress.failed}")
    return " | ".join(parts)


class PlainReporter:
    """Progress as plain lines: one when the figures change, at most one per ``interval``, and a last one."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self.clock = clock
        self._last_line = ""
        self._last_time = float("-inf")
        self._pending = ""

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def progress(self, progress: AddProgress) -> None:
        line = plain_line(progress)
        if line == self._last_line:
            self._pending = ""
            return
        now = self.clock()
        if now - self._last_time >= self.interval:
            self._write(line)
            self._last_line, self._last_time, self._pending = line, now, ""
        else:
            self._pending = line

    def note(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        if self._pending and self._pending != self._last_line:
            self._write(self._pending)
            self._last_line = self._pending
        self._pending = ""


class RichReporter:
    """Four live bars (enumerated, extracted, embedded, indexed) on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {
            stage: self.bars.add_task(stage, total=None, extra="") for stage in STAGES
        }
        self.bars.start()

    def progress(self, progress: AddProgress) -> None:
        for stage, (done, total) in stage_values(progress).items():
            extra = ""
            if stage == "extracted":
                extra = f"{progress.chunks} chunks"
            elif stage == "indexed" and progress.failed:
                extra = f"[red]{progress.failed} failed"
            self.bars.update(self.tasks[stage], completed=done, total=total, extra=extra)

    def note(self, text: str) -> None:
        self.bars.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bars.stop()
