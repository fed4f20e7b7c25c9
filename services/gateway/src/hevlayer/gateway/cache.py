"""The chunk cache in front of S3: local disk (default), Redis or Aerospike.

Entries are document segments (see :mod:`hevlayer.gateway.chunkstore`) keyed
by their backing string ``"<object key>#<offset>:<length>"``. Pack objects are
immutable, so an entry can never be stale: re-staging a document gives it a
new backing, and the old entry is deleted when the claimer reports the old
backing (or simply ages out). ``namespace`` is the pipeline's
``target_namespace``: Aerospike puts entries in set ``pipe_{namespace}``,
Redis in keys ``hevlayer:chunks:{namespace}:{backing}``.

Every backend implements :class:`ChunkCache`. The gateway never calls one
directly but through :class:`ResilientCache`, which bounds each call with a
timeout, stops calling a failing backend for a while (a small circuit
breaker), turns every failure into a miss, and counts hits and misses. Cache
failures therefore never block a read while S3 has the backing.

Transport-free: no gRPC here.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hevlayer.gateway.metrics import CACHE_FAILURES, CACHE_HIT_RATIO, CACHE_LOOKUPS, CACHE_UP, CACHE_WRITES
from hevlayer.gateway.settings import CacheSettings

log = logging.getLogger("hevlayer.gateway.cache")

T = TypeVar("T")


class ChunkCache(abc.ABC):
    """A cache of document segments keyed by backing string, per namespace."""

    backend: str = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend (connect, scan). Failures here are logged, not fatal."""

    @abc.abstractmethod
    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The cached segments among ``keys`` (missing keys are absent)."""

    @abc.abstractmethod
    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """Store segments (best effort: an entry too large for the backend is skipped)."""

    @abc.abstractmethod
    async def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        """Drop entries (missing keys are fine)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""


# -- local disk --------------------------------------------------------------------------------


class DiskCache(ChunkCache):
    """Files under ``directory`` (one per entry), capped at ``max_bytes``,
    least recently used first out. The index lives in memory and is rebuilt
    from the files (oldest modification first) at start, so a restart keeps
    the cache warm. File I/O runs in worker threads."""

    backend = "disk"

    def __init__(self, directory: str | os.PathLike[str] | None, max_bytes: int) -> None:
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if not directory:
            self._temp = tempfile.TemporaryDirectory(prefix="hevlayer-chunk-cache-")
            directory = self._temp.name
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._index: OrderedDict[str, int] = OrderedDict()
        self.total_bytes = 0

    @staticmethod
    def _name(namespace: str, key: str) -> str:
        return hashlib.blake2b(f"{namespace}\0{key}".encode(), digest_size=20).hexdigest()

    def _path(self, name: str) -> Path:
        return self.directory / name[:2] / name

    async def start(self) -> None:
        def scan() -> list[tuple[float, str, int]]:
            self.directory.mkdir(parents=True, exist_ok=True)
            found: list[tuple[float, str, int]] = []
            for shard in os.scandir(self.directory):
                if not shard.is_dir():
                    continue
                for entry in os.scandir(shard.path):
                    if entry.name.endswith(".tmp"):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                        continue
                    with contextlib.suppress(OSError):
                        stat = entry.stat()
                        found.append((stat.st_mtime, entry.name, stat.st_size))
            found.sort()
            return found

        for _, name, size in await asyncio.to_thread(scan):
            self._index[name] = size
            self.total_bytes += size
        await self._evict()

    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        wanted = {key: self._name(namespace, key) for key in keys}
        present = {key: name for key, name in wanted.items() if name in self._index}
        if not present:
            return {}

        def read() -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            for key, name in present.items():
                try:
                    out[key] = self._path(name).read_bytes()
                except FileNotFoundError:
                    continue
            return out

        found = await asyncio.to_thread(read)
        for key in found:
            name = present[key]
            if name in self._index:
                self._index.move_to_end(name)
        for key in present.keys() - found.keys():
            self._forget(present[key])
        return found

    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        entries = {
            self._name(namespace, key): value for key, value in items.items() if len(value) <= self.max_bytes
        }
        entries = {name: value for name, value in entries.items() if name not in self._index}
        if not entries:
            return

        def write() -> None:
            for name, value in entries.items():
                path = self._path(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
                tmp.write_bytes(value)
                os.replace(tmp, path)

        await asyncio.to_thread(write)
        for name, value in entries.items():
            if name not in self._index:
                self._index[name] = len(value)
                self.total_bytes += len(value)
        await self._evict()

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        names = [self._name(namespace, key) for key in keys]
        names = [name for name in names if name in self._index]
        for name in names:
            self._forget(name)
        if names:
            await asyncio.to_thread(self._unlink, names)

    def _forget(self, name: str) -> None:
        size = self._index.pop(name, None)
        if size is not None:
            self.total_bytes -= size

    def _unlink(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()

    async def _evict(self) -> None:
        victims: list[str] = []
        while self.total_bytes > self.max_bytes and self._index:
            name, size = self._index.popitem(last=False)
            self.total_bytes -= size
            victims.append(name)
        if victims:
            await asyncio.to_thread(self._unlink, victims)

    def __len__(self) -> int:
        return len(self._index)

    async def close(self) -> None:
        if self._temp is not None:
            await asyncio.to_thread(self._temp.cleanup)


# -- Redis -------------------------------------------------------------------------------------


class RedisCache(ChunkCache):
    """Redis strings ``hevlayer:chunks:{namespace}:{backing}`` with a TTL."""

    backend = "redis"

    def __init__(self, url: str, ttl_seconds: int, *, timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.ttl_seconds = ttl_seconds
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )

    @staticmethod
    def redis_key(namespace: str, key: str) -> str:
        """The Redis key of one entry."""
        return f"hevlayer:chunks:{namespace}:{key}"

    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        values = await self._client.mget([self.redis_key(namespace, k) for k in keys])
        return {
            key: bytes(value)
            for key, value in zip(keys, values, strict=True)
            if isinstance(value, (bytes, bytearray))
        }

    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.redis_key(namespace, key), value, ex=self.ttl_seconds)
            await pipe.execute()

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        if keys:
            await self._client.delete(*[self.redis_key(namespace, k) for k in keys])

    async def close(self) -> None:
        await self._client.aclose()


# -- Aerospike ---------------------------------------------------------------------------------

AEROSPIKE_BIN = "segment"
AEROSPIKE_MAX_SET_NAME = 63
AEROSPIKE_OK = 0


def aerospike_set_name(namespace: str) -> str:
    """``pipe_{namespace}``, shortened with a hash when longer than Aerospike's 63 bytes."""
    name = f"pipe_{namespace}"
    if len(name.encode()) <= AEROSPIKE_MAX_SET_NAME:
        return name
    digest = hashlib.blake2b(namespace.encode(), digest_size=6).hexdigest()
    return f"pipe_{namespace[:44]}_{digest}"


def aerospike_client_factory(hosts: str, timeout_ms: int) -> Callable[[], Any]:
    """A factory connecting the real ``aerospike`` client to ``hosts``."""

    def connect() -> Any:
        import aerospike

        seeds = []
        for host in hosts.split(","):
            name, _, port = host.strip().rpartition(":")
            seeds.append((name.strip("[]"), int(port)))
        config = {
            "hosts": seeds,
            "policies": {
                "read": {"total_timeout": timeout_ms},
                "write": {"total_timeout": timeout_ms},
                "batch": {"total_timeout": timeout_ms},
            },
        }
        client = aerospike.client(config)
        if not client.is_connected():
            client.connect()
        return client

    return connect


class AerospikeCache(ChunkCache):
    """Aerospike records ``(namespace, pipe_{target_namespace}, backing)`` with one
    bin ``segment`` and a TTL, through the (synchronous, C-based) ``aerospike``
    client run in worker threads.

    ``connect`` returns a connected client (the real one, or a fake in tests);
    it is called lazily and again after a connection failure.
    """

    backend = "aerospike"

    def __init__(self, connect: Callable[[], Any], as_namespace: str, ttl_seconds: int) -> None:
        self._connect = connect
        self.as_namespace = as_namespace
        self.ttl_seconds = ttl_seconds
        self._client: Any = None
        self._lock = asyncio.Lock()

    def _key(self, namespace: str, key: str) -> tuple[str, str, str]:
        return (self.as_namespace, aerospike_set_name(namespace), key)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
        client = self._client
        try:
            return await asyncio.to_thread(fn, client)
        except Exception as exc:
            if _is_connection_error(exc):
                self._client = None
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(client.close)
            raise

    async def start(self) -> None:
        await self._call(lambda client: None)

    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        as_keys = [self._key(namespace, k) for k in keys]

        def read(client: Any) -> dict[str, bytes]:
            batch = client.batch_read(as_keys, [AEROSPIKE_BIN])
            out: dict[str, bytes] = {}
            for key, record in zip(keys, batch.batch_records, strict=True):
                if record.result != AEROSPIKE_OK or record.record is None:
                    continue
                bins = record.record[2] or {}
                value = bins.get(AEROSPIKE_BIN)
                if isinstance(value, (bytes, bytearray)):
                    out[key] = bytes(value)
            return out

        return await self._call(read)

    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        import aerospike.exception as as_exc

        entries = [(self._key(namespace, k), v) for k, v in items.items()]

        def write(client: Any) -> None:
            for key, value in entries:
                try:
                    client.put(key, {AEROSPIKE_BIN: bytearray(value)}, meta={"ttl": self.ttl_seconds})
                except as_exc.RecordTooBig:
                    continue

        await self._call(write)

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        import aerospike.exception as as_exc

        as_keys = [self._key(namespace, k) for k in keys]

        def remove(client: Any) -> None:
            for key in as_keys:
                try:
                    client.remove(key)
                except as_exc.RecordNotFound:
                    continue

        await self._call(remove)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import aerospike.exception as as_exc
    except ImportError:  # pragma: no cover - the client is a dependency
        return False
    return isinstance(exc, (as_exc.ClientError, as_exc.ClusterError, as_exc.TimeoutError))


# -- no cache ----------------------------------------------------------------------------------


class NoCache(ChunkCache):
    """Every lookup misses; writes are dropped."""

    backend = "none"

    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        return {}

    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        return None

    async def delete_many(self, namespace: str, keys: Sequence[str]) -> None:
        return None


# -- the wrapper the gateway uses --------------------------------------------------------------


class ResilientCache:
    """Wraps a :class:`ChunkCache` so that it can only ever make reads faster.

    - each call is bounded by ``timeout`` seconds;
    - any exception or timeout is logged (rate-limited), counted and treated
      as a miss (reads) or ignored (writes);
    - after ``failure_threshold`` consecutive failures the backend is skipped
      for ``cooldown`` seconds (doubling up to ``max_cooldown`` while it keeps
      failing), so a dead cache costs nothing per read;
    - writes can run in the background (:meth:`put_later`), at most
      ``max_pending_writes`` at a time; beyond that they are dropped.
    """

    def __init__(
        self,
        cache: ChunkCache,
        *,
        timeout: float = 0.5,
        failure_threshold: int = 3,
        cooldown: float = 2.0,
        max_cooldown: float = 60.0,
        max_pending_writes: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.backend = cache.backend
        self.timeout = timeout
        self.failure_threshold = failure_threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.max_pending_writes = max_pending_writes
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        self._skip_until = 0.0
        self._last_log = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.lookups = 0
        CACHE_UP.labels(self.backend).set(1)

    @property
    def available(self) -> bool:
        """False while the backend is skipped after failures."""
        return self._clock() >= self._skip_until

    def _record_failure(self, operation: str, exc: BaseException) -> None:
        CACHE_FAILURES.labels(self.backend, operation).inc()
        self._failures += 1
        now = self._clock()
        if now - self._last_log > 10:
            self._last_log = now
            log.warning(
                "chunk cache %s failed (%s): %s; reading from S3",
                self.backend,
                operation,
                f"{type(exc).__name__}: {exc}",
            )
        if self._failures >= self.failure_threshold:
            self._skip_until = now + self._cooldown
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            CACHE_UP.labels(self.backend).set(0)

    def _record_success(self) -> None:
        if self._failures:
            self._failures = 0
            self._cooldown = self.base_cooldown
            CACHE_UP.labels(self.backend).set(1)

    async def _guard(self, operation: str, call: Callable[[], Awaitable[T]]) -> tuple[str, T | None]:
        """Run ``call``: ("ok", result), ("error", None) or ("skipped", None)."""
        if not self.available:
            return "skipped", None
        try:
            result = await asyncio.wait_for(call(), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure of the cache is a miss
            self._record_failure(operation, exc)
            return "error", None
        self._record_success()
        return "ok", result

    def _count(self, result: str, n: int) -> None:
        if n:
            CACHE_LOOKUPS.labels(self.backend, result).inc(n)

    async def start(self) -> None:
        """Start the backend; a failure only marks it down for a while."""
        try:
            await asyncio.wait_for(self.cache.start(), max(self.timeout, 30.0))
        except Exception as exc:
            self._failures = self.failure_threshold - 1
            self._record_failure("start", exc)

    async def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        """Cached segments among ``keys``; never raises."""
        if not keys:
            return {}
        outcome, found = await self._guard("get", lambda: self.cache.get_many(namespace, keys))
        found = found or {}
        hits = len(found)
        self.hits += hits
        self.lookups += len(keys)
        self._count("hit", hits)
        self._count("miss" if outcome == "ok" else outcome, len(keys) - hits)
        CACHE_HIT_RATIO.labels(self.backend).set(self.hits / self.lookups if self.lookups else 0.0)
        return found

    async def put_many(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """Store segments; never raises."""
        if not items:
            return
        outcome, _ = await self._guard("put", lambda: self.cache.put_many(namespace, items))
        CACHE_WRITES.labels(self.backend, "stored" if outcome == "ok" else "failed").inc(len(items))

    def put_later(self, namespace: str, items: Mapping[str, bytes]) -> None:
        """:meth:`put_many` in the background (dropped when too many are pending)."""
        if not items or not self.available:
            return
        if len(self._pending) >= self.max_pending_writes:
            CACHE_WRITES.labels(self.backend, "dropped").inc(len(items))
            return
        task = asyncio.get_running_loop().create_task(self.put_many(namespace, dict(items)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def delete_later(self, namespace: str, keys: Sequence[str]) -> None:
        """Drop entries in the background (best effort)."""
        if not keys or not self.available:
            return
        keys = list(keys)

        async def delete() -> None:
            await self._guard("delete", lambda: self.cache.delete_many(namespace, keys))

        task = asyncio.get_running_loop().create_task(delete())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for the background writes started so far."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        """Finish background writes (bounded), then close the backend."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.flush(), 5.0)
        with contextlib.suppress(Exception):
            await self.cache.close()


def open_cache(
    settings: CacheSettings, *, aerospike_connect: Callable[[], Any] | None = None
) -> ResilientCache:
    """The cache ``settings`` name, wrapped in :class:`ResilientCache`.

    ``aerospike_connect`` replaces the real client factory (tests pass a fake).
    """
    backend: ChunkCache
    if settings.backend == "disk":
        backend = DiskCache(settings.directory or None, settings.max_bytes)
    elif settings.backend == "redis":
        backend = RedisCache(settings.redis_url, settings.ttl_seconds, timeout=settings.timeout_seconds)
    elif settings.backend == "aerospike":
        connect = aerospike_connect or aerospike_client_factory(
            settings.aerospike_hosts, int(settings.timeout_seconds * 1000)
        )
        backend = AerospikeCache(connect, settings.aerospike_namespace, settings.ttl_seconds)
    else:
        backend = NoCache()
    return ResilientCache(backend, timeout=settings.timeout_seconds)
