"""The Transformation Cache: content-addressed memoization of model outputs, for both lanes.

One implementation serves every model output of the suite: the summarizer's directory
summaries (the Job Lane, asyncio) and the image descriptions of :mod:`hevlayer.ingest.vision`
(the Object Lane's image producer, in worker threads; and the Job Lane's conversions in
``hevlayer add --summaries``). Public API::

    cache = TransformationCache(max_entries=4096)                          # memory only
    cache = TransformationCache(4096, "/var/cache/hevlayer/transform", 1 << 30)  # + a directory
    cache = TransformationCache(4096, "s3://bucket/transform", 1 << 30, s3)      # + S3
    key = cache_key(model_or_provider_token, prompt_version, [input digests])
    text, outcome = await cache.get_or_compute(key, async_compute)   # asyncio callers
    text, outcome = cache.get_or_compute_sync(key, compute)          # threads (producers)
    cache.close()

- **Key** (:func:`cache_key`): SHA-256 of the model (or the provider's token), the prompt
  version and the inputs' digests, in order. The same inputs transformed by the same model and
  prompt map to the same entry, whichever lane, job, path or process asks.
- **Memory**: an LRU of ``max_entries`` texts, always.
- **Backing** (optional ``location``): a directory, or ``s3://bucket/prefix``, holding one
  entry per key in the Artifact Cache's store (:mod:`hevlayer.ingest.store`: same layout,
  same byte bound ``max_bytes`` with least-recently-used eviction, the entry's token is
  :data:`TOKEN`). Every process configured with the same location shares the entries: a
  description the Object Lane computed is a hit for any other process that asks for the same
  key. The backing's I/O runs on the cache's own event loop thread, so threads and any event
  loop can use one cache.
- **Single flight**: concurrent requests for one key in one process (threads and coroutines
  alike) run ``compute`` once and share its result; a failure is shared too, and not cached.
  With a backing the computing request also holds the store's single flight of the key
  (:meth:`~hevlayer.ingest.store.ArtifactCache.flight`: a lock file on a directory, a lock
  object created with a conditional put on S3), so a second process reaching the same key at
  the same moment waits, then reads the entry instead of computing it. On S3 a lock object
  older than the store's ``lock_seconds`` (120 s) is stale (its holder died, or is that slow):
  a waiter removes it and computes.
- **Failures** of the backing (unreadable, unwritable, unreachable) count as a miss or are
  ignored: the cache is an optimisation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hevlayer.ingest.s3 import S3Connection
from hevlayer.ingest.store import ArtifactCache, open_artifact_cache

log = logging.getLogger("hevlayer.ingest.transform")

TOKEN = "transform/1"
"""The Artifact Cache token of a Transformation Cache entry (the key is the entry's hash)."""
IO_TIMEOUT_SECONDS = 120.0
"""Longest wait for one backing read or write before it counts as failed."""
_HEX = frozenset("0123456789abcdef")

T = TypeVar("T")
Observer = Callable[[str, int], None]
"""Called with an event (``hit``, ``joined``, ``miss``, ``eviction``, ``error``) and a count."""


def digest(*parts: str) -> str:
    """SHA-256 (hex) of ``parts``, unambiguously framed."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def cache_key(model: str, prompt_version: str, input_digests: Sequence[str]) -> str:
    """The content address of one transformation: SHA-256 (hex) of the model (or provider
    token), the prompt version and the inputs' digests, in order."""
    canonical = json.dumps(
        {"model": model, "prompt_version": prompt_version, "inputs": list(input_digests)},
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    """``key`` if it is a cache key (64 lower-case hex characters); ValueError naming it otherwise."""
    if len(key) != 64 or not set(key) <= _HEX:
        raise ValueError(f"key {key!r}: expected 64 lower-case hex characters (cache_key)")
    return key


class CacheOutcome(enum.Enum):
    """How a look-up was answered."""

    HIT = "hit"
    """A stored entry (memory or backing)."""
    JOINED = "joined"
    """Shared a computation already in flight in this process."""
    MISS = "miss"
    """Computed now."""

    @property
    def reused(self) -> bool:
        """The provider did not run for this request."""
        return self is not CacheOutcome.MISS


@dataclass
class TransformStats:
    """What one cache has answered since it was made."""

    hits: int = 0
    joined: int = 0
    misses: int = 0


class _IoLoop:
    """An event loop on a daemon thread that owns the backing store and its client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="transformation-cache-io", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = IO_TIMEOUT_SECONDS) -> T:
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("the Transformation Cache's I/O loop cannot wait on itself")
        return self.submit(coroutine).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class TransformationCache:
    """Memory LRU + optional directory/S3 backing, single flight; see the module docstring."""

    def __init__(
        self,
        max_entries: int = 4096,
        location: str | os.PathLike[str] | None = None,
        max_bytes: int = 1 << 30,
        s3: S3Connection | None = None,
        *,
        observer: Observer | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.location = "" if location is None else os.fspath(location)
        self.stats = TransformStats()
        self._observer = observer
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._in_flight: dict[str, concurrent.futures.Future[str]] = {}
        self._leaders: set[asyncio.Task[tuple[str, CacheOutcome]]] = set()
        self._held: set[AbstractAsyncContextManager[None]] = set()
        """Flights taken on the I/O loop and not left yet (touched only there)."""
        self._io: _IoLoop | None = None
        self._stack: AsyncExitStack | None = None
        self.store: ArtifactCache | None = None
        """The backing store (None: memory only)."""
        if self.location:
            self._io = _IoLoop()
            self._stack = AsyncExitStack()
            try:
                self.store = self._io.call(self._open_store(max_bytes, s3))
            except BaseException:
                self._io.stop()
                raise

    async def _open_store(self, max_bytes: int, s3: S3Connection | None) -> ArtifactCache:
        assert self._stack is not None
        return await open_artifact_cache(self.location, max_bytes, s3, self._stack, self._store_event)

    def _store_event(self, event: str, count: int) -> None:
        if event in ("eviction", "error"):
            self._emit(event, count)

    def close(self) -> None:
        """Cancel the computations still in flight for coroutines (their lock files are
        released), close the backing's client and stop its thread (memory entries stay usable)."""
        for leader in list(self._leaders):
            leader.get_loop().call_soon_threadsafe(leader.cancel)
        io, self._io = self._io, None
        if io is None:
            return
        with contextlib.suppress(Exception):
            io.call(self._exit_all())  # the lock files and lock objects of unfinished computations
        if self._stack is not None:
            with contextlib.suppress(Exception):
                io.call(self._stack.aclose())
        io.stop()
        self.store = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def hits(self) -> int:
        return self.stats.hits

    @property
    def joined(self) -> int:
        return self.stats.joined

    @property
    def misses(self) -> int:
        return self.stats.misses

    # -- look-ups ------------------------------------------------------------------------------

    def get_or_compute_sync(self, key: str, compute: Callable[[], str]) -> tuple[str, CacheOutcome]:
        """The text stored under ``key``, else ``compute()``'s, run once for every concurrent
        asker of this process. Blocks: call it from a worker thread, not an event loop."""
        value, shared = self._claim(key)
        if value is not None:
            return value, CacheOutcome.HIT
        if shared is not None:
            return shared.result(), CacheOutcome.JOINED
        future = self._in_flight[key]
        io = self._io
        try:
            flight = None if io is None else io.call(self._enter_flight(key), timeout=None)
            try:
                stored = self._load(key)
                computed = compute() if stored is None else None
                if computed is not None:
                    self._save(key, computed)
            finally:
                if flight is not None:
                    self._leave_sync(flight)
        except BaseException as exc:
            self._fail(key, future, exc)
            raise
        return self._finish(key, future, stored, computed)

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[str]]
    ) -> tuple[str, CacheOutcome]:
        """The text stored under ``key``, else ``await compute()``'s, run once for every
        concurrent asker of this process. The shared work runs in its own task: a caller that is
        cancelled leaves it running for the others (and for the cache)."""
        value, shared = self._claim(key)
        if value is not None:
            return value, CacheOutcome.HIT
        if shared is not None:
            return await asyncio.shield(asyncio.wrap_future(shared)), CacheOutcome.JOINED
        leader = asyncio.create_task(self._lead(key, compute), name=f"transform-{key[:12]}")
        leader.add_done_callback(_consume_exception)
        self._leaders.add(leader)
        leader.add_done_callback(self._leaders.discard)
        return await asyncio.shield(leader)

    async def _lead(self, key: str, compute: Callable[[], Awaitable[str]]) -> tuple[str, CacheOutcome]:
        future = self._in_flight[key]
        io = self._io
        try:
            flight = None if io is None else await self._aenter_flight(io, key)
            try:
                stored = await self._aload(key)
                computed = await compute() if stored is None else None
                if computed is not None:
                    await self._asave(key, computed)
            finally:
                if flight is not None:
                    await self._leave(flight)
        except BaseException as exc:
            self._fail(key, future, exc)
            raise
        return self._finish(key, future, stored, computed)

    def _claim(self, key: str) -> tuple[str | None, concurrent.futures.Future[str] | None]:
        """(the value in memory, None), (None, the flight to join), or (None, None): the caller
        leads a new flight (registered under ``key``)."""
        check_key(key)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                value = self._entries[key]
                shared = None
            else:
                value = None
                shared = self._in_flight.get(key)
                if shared is None:
                    future: concurrent.futures.Future[str] = concurrent.futures.Future()
                    future.add_done_callback(_consume_exception)
                    self._in_flight[key] = future
                else:
                    self.stats.joined += 1
        if value is not None:
            self._emit("hit")
        elif shared is not None:
            self._emit("joined")
        return value, shared

    def _finish(
        self, key: str, future: concurrent.futures.Future[str], stored: str | None, computed: str | None
    ) -> tuple[str, CacheOutcome]:
        value = stored if stored is not None else computed
        assert value is not None
        with self._lock:
            if stored is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            del self._in_flight[key]
        if not future.done():  # (a joiner's wait is shielded, so nothing else settles it)
            future.set_result(value)
        outcome = CacheOutcome.MISS if stored is None else CacheOutcome.HIT
        self._emit(outcome.value)
        return value, outcome

    def _fail(self, key: str, future: concurrent.futures.Future[str], exc: BaseException) -> None:
        with self._lock:
            self._in_flight.pop(key, None)
        if future.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)

    def _emit(self, event: str, count: int = 1) -> None:
        if self._observer is not None:
            self._observer(event, count)

    # -- the backing -----------------------------------------------------------------------------

    async def _enter_flight(self, key: str) -> AbstractAsyncContextManager[None] | None:
        """(On the I/O loop.) Take the store's single flight of ``key``: waits while another
        process computes it (a lock file on a directory, a lock object on S3)."""
        if self.store is None:
            return None
        flight = self.store.flight(key, TOKEN)
        await flight.__aenter__()
        self._held.add(flight)
        return flight

    async def _exit_flight(self, flight: AbstractAsyncContextManager[None]) -> None:
        """(On the I/O loop.) Leave a flight :meth:`_enter_flight` took, unless already left."""
        if flight in self._held:
            self._held.discard(flight)
            await flight.__aexit__(None, None, None)

    async def _exit_all(self) -> None:
        """(On the I/O loop.) Leave every flight still held (the cache is closing)."""
        for flight in list(self._held):
            await self._exit_flight(flight)

    def _leave_sync(self, flight: AbstractAsyncContextManager[None]) -> None:
        io = self._io
        if io is None:
            return  # closed: close() left every flight
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            io.call(self._exit_flight(flight))

    async def _leave(self, flight: AbstractAsyncContextManager[None]) -> None:
        io = self._io
        if io is None:
            return
        with contextlib.suppress(RuntimeError):
            await asyncio.wrap_future(io.submit(self._exit_flight(flight)))

    async def _aenter_flight(self, io: _IoLoop, key: str) -> AbstractAsyncContextManager[None] | None:
        entering = io.submit(self._enter_flight(key))
        try:
            return await asyncio.wrap_future(entering)
        except asyncio.CancelledError:
            # Cancelled while waiting: leave the flight if the I/O loop took it all the same.
            def leave(done: concurrent.futures.Future[AbstractAsyncContextManager[None] | None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    flight = done.result()
                    if flight is not None and self._io is not None:
                        with contextlib.suppress(RuntimeError):
                            io.submit(self._exit_flight(flight))

            entering.add_done_callback(leave)
            raise

    async def _read(self, key: str) -> str | None:
        assert self.store is not None
        blob = await self.store.get(key, TOKEN)
        if blob is None:
            return None
        try:
            entry = json.loads(blob)
        except ValueError:
            return None
        text = entry.get("text") if isinstance(entry, dict) else None
        return text if isinstance(text, str) and entry.get("key") == key else None

    async def _write(self, key: str, text: str) -> None:
        assert self.store is not None
        blob = json.dumps({"key": key, "text": text}, ensure_ascii=False).encode("utf-8", "surrogatepass")
        await self.store.put(key, TOKEN, blob)

    def _load(self, key: str) -> str | None:
        io = self._io
        if io is None:
            return None
        try:
            return io.call(self._read(key))
        except Exception as exc:  # the cache is an optimisation: a failing read is a miss
            log.warning("transformation cache read failed", extra={"cache_key": key, "error": str(exc)})
            self._emit("error")
            return None

    def _save(self, key: str, text: str) -> None:
        io = self._io
        if io is None:
            return
        try:
            io.call(self._write(key, text))
        except Exception as exc:  # a failing write only costs a later computation
            log.warning("transformation cache write failed", extra={"cache_key": key, "error": str(exc)})
            self._emit("error")

    async def _aload(self, key: str) -> str | None:
        io = self._io
        if io is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(io.submit(self._read(key))), IO_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("transformation cache read failed", extra={"cache_key": key, "error": str(exc)})
            self._emit("error")
            return None

    async def _asave(self, key: str, text: str) -> None:
        io = self._io
        if io is None:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(io.submit(self._write(key, text))), IO_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("transformation cache write failed", extra={"cache_key": key, "error": str(exc)})
            self._emit("error")


def expand_location(location: str) -> str:
    """``location`` with ``~`` expanded when it is a directory (an ``s3://`` URI is kept)."""
    if not location or location.startswith("s3://"):
        return location
    return str(Path(os.path.expanduser(location)))


def _consume_exception(future: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
    # Waiters may all be gone; mark the exception retrieved so asyncio does not log it.
    if not future.cancelled():
        future.exception()
