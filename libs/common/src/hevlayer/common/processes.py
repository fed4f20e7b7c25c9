"""Child processes in their own process group, with a log file: ending them and
reading the log's tail (the development servers of ``hevlayer.devstack`` and the
embedder's local Triton)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``; ignore a vanished group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate_group(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds.

    ``proc`` must have been started with ``start_new_session=True`` so that its
    pid is its process group id. Whatever is left of the group after the
    leader exits (children that ignored SIGTERM) is killed too.
    """
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def kill_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the process group of ``proc`` at once and reap the leader."""
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode
