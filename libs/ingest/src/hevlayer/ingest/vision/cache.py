"""``description_gate`` and the Transformation Cache, usable from any thread.

Producers are synchronous: ``hevlayer add`` and the extract worker run each
``produce`` call in a worker thread (``asyncio.to_thread``). So both pieces
are built on :mod:`threading`, not asyncio:

- :class:`Gate` is a bounded semaphore with in-flight accounting. One gate,
  ``description_gate``, is shared by every image description of the process:
  however many threads run the image producer, at most ``limit`` provider
  calls are in flight. Asyncio code uses it through a thread
  (``await asyncio.to_thread(describe, ...)``), never by blocking the loop.
- :class:`TransformationCache` memoizes model outputs by a content address
  (the SHA-256 of the image plus the provider's token). It is single flight:
  the first thread to ask for a key computes it; a thread asking for the same
  key meanwhile waits on that computation's :class:`~concurrent.futures.Future`
  and shares its result (or its exception: a failure is shared, never
  cached). Entries live in memory (LRU, bounded by count) and, when a
  directory is configured, also as files ``<dir>/<key[:2]>/<key>.json``
  written atomically, so other processes and later runs reuse them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType

_KEY_CHARS = frozenset("0123456789abcdef")


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


class CacheOutcome(enum.Enum):
    """How :meth:`TransformationCache.get_or_compute` answered."""

    HIT = "hit"
    """A stored entry (memory or directory)."""
    JOINED = "joined"
    """Shared a computation another thread had in flight."""
    MISS = "miss"
    """Computed now."""


class TransformationCache:
    """Content-addressed memoization of model outputs (text), single flight, thread safe."""

    def __init__(self, max_entries: int = 4096, directory: Path | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.directory = directory
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._in_flight: dict[str, Future[str]] = {}
        self.hits = 0
        self.joins = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_or_compute(self, key: str, compute: Callable[[], str]) -> tuple[str, CacheOutcome]:
        """The text stored under ``key``, else ``compute()``'s (run once for concurrent askers)."""
        _check_key(key)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key], CacheOutcome.HIT
            future = self._in_flight.get(key)
            owner = future is None
            if future is None:
                future = Future()
                self._in_flight[key] = future
            else:
                self.joins += 1
        if not owner:
            return future.result(), CacheOutcome.JOINED
        try:
            stored = self._load(key)
            value = compute() if stored is None else stored
            if stored is None:
                self._store(key, value)
        except BaseException as exc:
            with self._lock:
                del self._in_flight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            if stored is None:
                self.misses += 1
            else:
                self.hits += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            del self._in_flight[key]
        future.set_result(value)
        return value, CacheOutcome.MISS if stored is None else CacheOutcome.HIT

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / key[:2] / f"{key}.json"

    def _load(self, key: str) -> str | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, vanished or torn: a miss
        text = entry.get("text") if isinstance(entry, dict) else None
        return text if isinstance(text, str) and entry.get("key") == key else None

    def _store(self, key: str, value: str) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            temporary.write_text(json.dumps({"key": key, "text": value}), encoding="utf-8")
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def _check_key(key: str) -> None:
    if len(key) != 64 or not set(key) <= _KEY_CHARS:
        raise ValueError(f"cache key must be 64 lower-case hex characters, got {key!r}")
