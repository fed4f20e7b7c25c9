"""A local OpenAI-compatible vision endpoint that records the requests it gets.

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (a real HTTP server in a
thread) and answers each request with ``answer(request)``. It counts the
requests in flight and their peak, and can hold each request until a
condition is true (``hold``), so a test can make concurrency happen without
relying on timing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_LIMIT_SECONDS = 20.0
"""How long a held request waits for its condition before answering anyway (a broken gate then
shows up as a wrong count, not as a hang)."""


@dataclass
class Recorded:
    """One request the fake received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeVision:
    """The fake's state: what it answers, what it received, how many requests overlapped."""

    answer: Callable[[Recorded], str] = lambda request: "a described image"
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer before answering normally (consumed in order; e.g. [503])."""
    hold: Callable[[FakeVision], bool] | None = None
    """When set, each request waits until ``hold(fake)`` is true (at most HOLD_LIMIT_SECONDS)."""
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    completed: int = 0
    held_too_long: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def wait_for_hold(self) -> None:
        if self.hold is None:
            return
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while not self.hold(self):
            if time.monotonic() > deadline:
                with self.lock:
                    self.held_too_long += 1
                return
            time.sleep(0.005)


def _handler(fake: FakeVision) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            request = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with fake.lock:
                fake.requests.append(request)
                fake.in_flight += 1
                fake.peak = max(fake.peak, fake.in_flight)
                status = fake.statuses.pop(0) if fake.statuses else 200
            try:
                fake.wait_for_hold()
                if self.path != "/v1/chat/completions":
                    status = 404
                if status != 200:
                    payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
                else:
                    content = fake.answer(request)
                    payload = json.dumps(
                        {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                    ).encode()
            finally:
                with fake.lock:
                    fake.in_flight -= 1
                    fake.completed += 1
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def fake_vision_server(fake: FakeVision | None = None) -> Iterator[FakeVision]:
    """Serve ``fake`` on a free port; its ``url`` is the API base (``http://127.0.0.1:PORT/v1``)."""
    fake = fake if fake is not None else FakeVision()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-vision", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
