"""The Transformation Cache: content-addressed memoization of model outputs.

A summary's key is the SHA-256 of the model, the prompt version and the
digests of its inputs (:func:`cache_key`), so the same children folded by
the same model and prompt map to the same entry whichever job, directory
path or process asks. :meth:`TransformationCache.get_or_compute` is
single-flight: concurrent requests for one key run the computation once and
share its result (a failure is shared too, and not cached).

Entries are JSON files under a local directory (``<dir>/<key[:2]>/<key>.json``,
written atomically), so they survive restarts. The directory is size
bounded: past ``max_bytes`` the least recently used entries are deleted.
Several processes may share the directory; each keeps its own index and
treats a vanished file as a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hevlayer.summarizer import metrics

log = logging.getLogger("hevlayer.summarizer.cache")

_KEY_CHARS = frozenset("0123456789abcdef")


def digest(*parts: str) -> str:
    """SHA-256 (hex) of ``parts``, unambiguously framed."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def cache_key(model: str, prompt_version: str, input_digests: Sequence[str]) -> str:
    """The content address of one transformation: SHA-256 (hex) of the model,
    the prompt version and the inputs' digests, in order."""
    canonical = json.dumps(
        {"model": model, "prompt_version": prompt_version, "inputs": list(input_digests)},
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class CacheOutcome(enum.Enum):
    """How :meth:`TransformationCache.get_or_compute` answered."""

    HIT = "hit"  # stored entry
    JOINED = "joined"  # shared a computation already in flight
    MISS = "miss"  # computed now

    @property
    def reused(self) -> bool:
        """The provider did not run for this request."""
        return self is not CacheOutcome.MISS


@dataclass(frozen=True)
class Transformation:
    """A memoized model output."""

    text: str
    model: str


class TransformationCache:
    """Content-addressed, single-flight, size-bounded cache backed by a directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> bytes, least recent first
        self._inflight: dict[str, asyncio.Future[Transformation]] = {}
        self.hits = 0
        self.joined = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    # -- start-up -------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and index the entries already in it (oldest use first)."""
        entries = await asyncio.to_thread(self._scan)
        self._index = OrderedDict(entries)
        self.total_bytes = sum(size for _, size in entries)
        await self._evict()
        log.info(
            "transformation cache open",
            extra={"cache_dir": str(self.directory), "entries": len(self._index), "bytes": self.total_bytes},
        )

    def _scan(self) -> list[tuple[str, int]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for path in self.directory.glob("??/*.json"):
            key = path.stem
            if len(key) != 64 or not set(key) <= _KEY_CHARS:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, key, stat.st_size))
        for stale in self.directory.glob("??/.*.tmp"):
            stale.unlink(missing_ok=True)
        found.sort()
        return [(key, size) for _, key, size in found]

    # -- entries ------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    async def get(self, key: str) -> Transformation | None:
        """The stored entry of ``key``, or None."""
        if key not in self._index:
            return None
        value = await asyncio.to_thread(self._read, key)
        if value is None:
            self._forget(key)
            return None
        if key in self._index:
            self._index.move_to_end(key)
        return value

    def _read(self, key: str) -> Transformation | None:
        path = self._path(key)
        try:
            raw = json.loads(path.read_bytes())
            value = Transformation(text=str(raw["text"]), model=str(raw["model"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("dropping unreadable cache entry", extra={"cache_key": key})
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recency survives a restart
        return value

    async def put(self, key: str, value: Transformation) -> None:
        """Store ``value`` under ``key`` and evict past the size bound.

        A write failure (disk full, permissions) is logged, not raised: the
        cache is an optimization.
        """
        data = json.dumps({"key": key, "model": value.model, "text": value.text}).encode()
        if len(data) > self.max_bytes:
            return
        try:
            await asyncio.to_thread(self._write, key, data)
        except OSError:
            log.warning("cannot write cache entry", exc_info=True, extra={"cache_key": key})
            return
        self._forget(key)
        self._index[key] = len(data)
        self.total_bytes += len(data)
        await self._evict()

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _forget(self, key: str) -> None:
        size = self._index.pop(key, None)
        if size is not None:
            self.total_bytes -= size

    async def _evict(self) -> None:
        # The index is only touched on the event loop; the thread only unlinks.
        victims: list[str] = []
        while self.total_bytes > self.max_bytes and self._index:
            key, size = self._index.popitem(last=False)
            self.total_bytes -= size
            victims.append(key)
        if victims:
            self.evictions += len(victims)
            metrics.CACHE_EVICTIONS.inc(len(victims))
            await asyncio.to_thread(self._unlink, victims)

    def _unlink(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    # -- single flight ------------------------------------------------------------

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[Transformation]]
    ) -> tuple[Transformation, CacheOutcome]:
        """The entry of ``key``, computing and storing it on a miss.

        Concurrent calls for the same key share one look-up and at most one
        ``compute``. The shared work runs in its own task: a caller that is
        cancelled leaves it running for the others (and for the cache).
        """
        shared = self._inflight.get(key)
        if shared is not None:
            value = await asyncio.shield(shared)
            self.joined += 1
            metrics.CACHE_LOOKUPS.labels(CacheOutcome.JOINED.value).inc()
            return value, CacheOutcome.JOINED
        future: asyncio.Future[Transformation] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        self._inflight[key] = future
        leader = asyncio.create_task(self._lead(key, compute, future), name=f"cache-{key[:12]}")
        leader.add_done_callback(_consume_exception)
        value, outcome = await asyncio.shield(leader)
        if outcome is CacheOutcome.HIT:
            self.hits += 1
        else:
            self.misses += 1
        metrics.CACHE_LOOKUPS.labels(outcome.value).inc()
        return value, outcome

    async def _lead(
        self,
        key: str,
        compute: Callable[[], Awaitable[Transformation]],
        future: asyncio.Future[Transformation],
    ) -> tuple[Transformation, CacheOutcome]:
        try:
            stored = await self.get(key)
            if stored is not None:
                future.set_result(stored)
                return stored, CacheOutcome.HIT
            value = await compute()
            await self.put(key, value)
            future.set_result(value)
            return value, CacheOutcome.MISS
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            raise
        finally:
            self._inflight.pop(key, None)


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # Waiters may all be gone; mark the exception retrieved so asyncio does not log it.
    if not future.cancelled():
        future.exception()
