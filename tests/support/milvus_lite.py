"""Milvus Lite's gRPC server mode in a child process, standing in for a Milvus endpoint.

Not a fake: ``milvus-lite server`` speaks the Milvus gRPC protocol that
pymilvus' ``MilvusClient(uri=...)`` uses against Milvus or Zilliz, so the
gateway's ``milvus`` sink is tested over a real network connection. It
implements the subset of Milvus that Milvus Lite implements (see its
README); a full Milvus cannot run here (no Docker).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hevlayer.devstack.ports import free_port


class MilvusLiteServer:
    """``python -m milvus_lite server`` on a free loopback port, data in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = data_dir / "server.log"

    @property
    def uri(self) -> str:
        """The URI pymilvus connects to."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self._log.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "milvus_lite",
                    "server",
                    "--data-dir",
                    str(self.data_dir / "data"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--max-workers",
                    "4",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"milvus-lite server exited with {self.process.returncode}: {self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"milvus-lite server did not listen within {timeout}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server (fault tests) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop gracefully (SIGINT: Milvus Lite drains and closes its data dir), else kill."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self._log.read_text(errors="replace")[-size:]
        except OSError:
            return ""
