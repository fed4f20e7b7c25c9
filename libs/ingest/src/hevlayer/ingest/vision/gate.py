"""``description_gate``: a process-wide concurrency bound usable from any thread.

Producers are synchronous: ``hevlayer add`` and the extract worker run each
``produce`` call in a worker thread (``asyncio.to_thread``), so :class:`Gate`
is built on :mod:`threading`, not asyncio: a bounded semaphore with in-flight
accounting. One gate, ``description_gate``, is shared by every image
description of the process: however many threads run the image producer (the
Object Lane's extract loops and, in ``hevlayer add --summaries``, the Job
Lane's conversions), at most ``limit`` provider calls are in flight. Asyncio
code uses it through a thread (``await asyncio.to_thread(describe, ...)``),
never by blocking the loop. The memoization of descriptions is the
Transformation Cache, :mod:`hevlayer.ingest.transform`.
"""

from __future__ import annotations

import threading
from types import TracebackType


class Gate:
    """A process-wide concurrency bound for one provider, usable from threads (``with gate:``)."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"gate {name!r}: limit must be >= 1, got {limit}")
        self.name = name
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.in_flight = 0
        """Calls holding the gate now."""
        self.peak = 0
        """Most calls that held the gate at once."""
        self.waiting = 0
        """Calls waiting for a slot now."""
        self.entered = 0
        """Calls that went through the gate, in all."""

    def __enter__(self) -> Gate:
        with self._lock:
            self.waiting += 1
        try:
            self._semaphore.acquire()
        finally:
            with self._lock:
                self.waiting -= 1
        with self._lock:
            self.in_flight += 1
            self.entered += 1
            self.peak = max(self.peak, self.in_flight)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self.in_flight -= 1
        self._semaphore.release()

    def __repr__(self) -> str:
        return f"Gate({self.name!r}, limit={self.limit}, in_flight={self.in_flight})"
