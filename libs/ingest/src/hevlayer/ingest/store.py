"""The Artifact Cache's store: blobs keyed by ``(content hash, token)`` in a local directory or
under an S3 prefix, byte-bounded with least-recently-used eviction, with single flight
(:meth:`ArtifactCache.flight`, :class:`FileLock`).

It knows nothing of producers, so both :mod:`hevlayer.ingest.artifacts` (the converters' tokens
and blobs: chunks, derived text) and :mod:`hevlayer.ingest.transform` (the Transformation Cache,
whose backing it is) build on it. The behaviour is described in :mod:`hevlayer.ingest.artifacts`;
import the names from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hevlayer.ingest.s3 import S3Connection, open_s3_client, split_s3_uri

log = logging.getLogger("hevlayer.ingest.artifacts")

_HEX = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._/:=+,-]{1,200}$")
_MAX_TOKEN_FILE = 240
_LOCKS = ".locks"
"""Directory of the lock files under a local cache's root (skipped by the index)."""
_LOCK_POLL_SECONDS = 0.02
S3_LOCK_SECONDS = 120.0
"""Default ``S3ArtifactCache.lock_seconds``."""
_LOCK_TAKEN = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

Observer = Callable[[str, int], None]
"""Called with an event (``hit``, ``miss``, ``put``, ``eviction``) and a count."""


@dataclass
class CacheStats:
    """What one cache object has done since it was made."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    evictions: int = 0
    errors: int = 0
    bytes: int = 0
    """Bytes of the entries this process knows of (the whole cache, as last scanned or listed)."""


def data_hash(data: bytes) -> str:
    """The cache key of an object's bytes: their SHA-256, hex."""
    return hashlib.sha256(data).hexdigest()


def normalize_hash(content_hash: str) -> str:
    """The hex SHA-256 in ``content_hash`` (``<hex>``, ``sha256:<hex>`` or a document's
    ``sha256:<hex>;kind/version``); ValueError naming the value otherwise."""
    value = content_hash.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :].split(";", 1)[0]
    if not _HEX.match(value):
        raise ValueError(f"content_hash {content_hash!r}: expected a hex SHA-256 (optionally sha256:...)")
    return value


def check_token(token: str) -> str:
    """``token`` if it is a valid version token; ValueError naming it otherwise."""
    if not _TOKEN.match(token):
        raise ValueError(f"token {token!r}: expected 1 to 200 of A-Z a-z 0-9 . _ / : = + , -")
    return token


class ArtifactCache(ABC):
    """Derived blobs keyed by ``(content_hash, token)``; see the module docstring."""

    def __init__(self, max_bytes: int, observer: Observer | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._observer = observer
        self._lock = asyncio.Lock()

    async def get(self, content_hash: str, token: str) -> bytes | None:
        """The blob stored for ``(content_hash, token)``; None when there is none."""
        key = normalize_hash(content_hash)
        check_token(token)
        try:
            blob = await self._get(key, token)
        except Exception as exc:  # the cache is an optimisation: a failing read is a miss
            log.warning("artifact cache read failed", extra={"key": key, "token": token, "error": str(exc)})
            self._count("errors")
            blob = None
        self._count("hits" if blob is not None else "misses")
        return blob

    async def put(self, content_hash: str, token: str, data: bytes) -> None:
        """Store ``data`` for ``(content_hash, token)``, then evict LRU entries over the budget.
        An entry larger than the whole budget is not stored."""
        key = normalize_hash(content_hash)
        check_token(token)
        if len(data) > self.max_bytes:
            return
        try:
            await self._put(key, token, data)
            self._count("puts")
            async with self._lock:
                evicted = await self._evict()
            self._count("evictions", evicted)
        except Exception as exc:  # a failing write only costs a later conversion
            log.warning("artifact cache write failed", extra={"key": key, "token": token, "error": str(exc)})
            self._count("errors")

    @contextlib.asynccontextmanager
    async def flight(self, content_hash: str, token: str) -> AsyncIterator[None]:
        """Hold the single flight of ``(content_hash, token)`` (see the module docstring): one
        holder at a time in this process (every cache object of the same location) and, for a
        local directory, across processes."""
        key = normalize_hash(content_hash)
        check_token(token)
        async with _flights.hold(self._flight_name(key, token)):
            try:
                release = await self._acquire_shared(key, token)
            except Exception as exc:  # the lock is an optimisation too: without it, convert anyway
                log.warning(
                    "artifact cache lock failed", extra={"key": key, "token": token, "error": str(exc)}
                )
                self._count("errors")
                release = None
            try:
                yield
            finally:
                if release is not None:
                    try:
                        await release()
                    except Exception as exc:
                        log.warning(
                            "artifact cache unlock failed",
                            extra={"key": key, "token": token, "error": str(exc)},
                        )
                        self._count("errors")

    @abstractmethod
    def _flight_name(self, key: str, token: str) -> str:
        """A name of the flight, the same for every cache object of this location."""

    @abstractmethod
    async def _acquire_shared(self, key: str, token: str) -> Callable[[], Awaitable[None]] | None:
        """Take the flight's lock shared with other processes (waiting for its holder); the
        coroutine function that releases it, or None when there is nothing to release."""

    def _count(self, field: str, n: int = 1) -> None:
        if n <= 0:
            return
        setattr(self.stats, field, getattr(self.stats, field) + n)
        if self._observer is not None:
            self._observer(
                {"hits": "hit", "misses": "miss", "puts": "put", "evictions": "eviction"}.get(field, "error"),
                n,
            )

    @abstractmethod
    async def _get(self, key: str, token: str) -> bytes | None: ...

    @abstractmethod
    async def _put(self, key: str, token: str, data: bytes) -> None: ...

    @abstractmethod
    async def _evict(self) -> int:
        """Evict least recently used entries until the total is within ``max_bytes``; how many."""


def _token_name(token: str) -> str:
    name = quote(token, safe="")
    if len(name) > _MAX_TOKEN_FILE:
        name = name[:200] + "-" + hashlib.blake2b(token.encode(), digest_size=8).hexdigest()
    return name


class LocalArtifactCache(ArtifactCache):
    """The cache in a local directory (development and ``hevlayer add``)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, observer: Observer | None = None):
        super().__init__(max_bytes, observer)
        self.directory = Path(directory)
        self._index: dict[Path, tuple[int, float]] | None = None

    def path(self, key: str, token: str) -> Path:
        return self.directory / key[:2] / key / _token_name(token)

    def lock_path(self, key: str, token: str) -> Path:
        """The lock file of the flight of ``(key, token)``."""
        return self.directory / _LOCKS / key[:2] / f"{key}.{_token_name(token)}"

    def _flight_name(self, key: str, token: str) -> str:
        return str(self.lock_path(key, token).absolute())

    async def _acquire_shared(self, key: str, token: str) -> Callable[[], Awaitable[None]]:
        lock = FileLock(self.lock_path(key, token))
        await lock.acquire_async()

        async def release() -> None:
            await asyncio.to_thread(lock.release)

        return release

    async def _get(self, key: str, token: str) -> bytes | None:
        path = self.path(key, token)

        def read() -> bytes | None:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            now = time.time()
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
            if self._index is not None:
                self._index[path] = (len(data), now)
            return data

        return await asyncio.to_thread(read)

    async def _put(self, key: str, token: str, data: bytes) -> None:
        path = self.path(key, token)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            if self._index is None:
                self._index = self._scan()
            self._index[path] = (len(data), time.time())

        await asyncio.to_thread(write)

    def _scan(self) -> dict[Path, tuple[int, float]]:
        index: dict[Path, tuple[int, float]] = {}
        if not self.directory.is_dir():
            return index
        for directory, subdirectories, files in os.walk(self.directory):
            subdirectories[:] = [d for d in subdirectories if d != _LOCKS]
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(directory) / name
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    index[path] = (stat.st_size, stat.st_mtime)
        return index

    async def _evict(self) -> int:
        def evict() -> int:
            if self._index is None:
                self._index = self._scan()
            total = sum(size for size, _ in self._index.values())
            if total > self.max_bytes:
                self._index = self._scan()  # count what other processes wrote too
                total = sum(size for size, _ in self._index.values())
            evicted = 0
            for path, (size, _) in sorted(self._index.items(), key=lambda item: item[1][1]):
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    evicted += 1
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # the hash directory, once empty
                del self._index[path]
                total -= size
            self.stats.bytes = total
            return evicted

        return await asyncio.to_thread(evict)


class S3ArtifactCache(ArtifactCache):
    """The cache in an S3 bucket under a prefix (the extract workers of a cluster)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        max_bytes: int,
        observer: Observer | None = None,
        *,
        lock_seconds: float = S3_LOCK_SECONDS,
    ) -> None:
        super().__init__(max_bytes, observer)
        self._client = client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.lock_seconds = lock_seconds
        """How long a flight's lock object is honoured: older, it is stale (its holder died or
        is slow) and a waiter removes it and takes the flight."""
        self._index: dict[str, tuple[int, float]] | None = None

    def key(self, key: str, token: str) -> str:
        return f"{self.prefix}{key}/{_token_name(token)}"

    def lock_key(self, key: str, token: str) -> str:
        """The lock object of the flight of ``(key, token)`` (not an entry: never listed or evicted)."""
        return f"{self.prefix}{_LOCKS}/{key}/{_token_name(token)}"

    def _flight_name(self, key: str, token: str) -> str:
        return f"s3://{self.bucket}/{self.key(key, token)}"

    async def _acquire_shared(self, key: str, token: str) -> Callable[[], Awaitable[None]] | None:
        """A conditional put (``If-None-Match: *``) of the lock object: exactly one process
        creates it. The others poll until it is gone (released) or stale: older than
        ``lock_seconds`` by the server's clock, it is removed with ``If-Match`` on its ETag (so
        only that very lock goes) and the waiter takes the flight. A holder that died thus
        delays the others by ``lock_seconds`` at most; one that is slower than that has a second
        process convert too (a duplicate conversion, never a wrong entry)."""
        from botocore.exceptions import ClientError

        lock_key = self.lock_key(key, token)
        body = uuid.uuid4().hex.encode()  # a unique ETag: If-Match removes only this lock
        attempts = 0
        while True:
            try:
                response = await self._client.put_object(
                    Bucket=self.bucket, Key=lock_key, Body=body, IfNoneMatch="*"
                )
            except ClientError as exc:
                if _error_code(exc) not in _LOCK_TAKEN:
                    raise
            else:
                etag = str(response.get("ETag", ""))

                async def release(etag: str = etag) -> None:
                    with contextlib.suppress(ClientError):
                        await self._client.delete_object(Bucket=self.bucket, Key=lock_key, IfMatch=etag)

                return release
            try:
                head = await self._client.head_object(Bucket=self.bucket, Key=lock_key)
            except ClientError as exc:
                if _error_code(exc) in _MISSING:
                    continue  # released meanwhile: try again at once
                raise
            if _age_seconds(head) > self.lock_seconds:
                with contextlib.suppress(ClientError):
                    await self._client.delete_object(Bucket=self.bucket, Key=lock_key, IfMatch=head["ETag"])
                continue
            attempts += 1
            await asyncio.sleep(min(_LOCK_POLL_SECONDS * attempts, 1.0))

    async def _get(self, key: str, token: str) -> bytes | None:
        from botocore.exceptions import ClientError

        object_key = self.key(key, token)
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=object_key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        if self._index is not None:
            self._index[object_key] = (len(data), time.time())
        return data

    async def _put(self, key: str, token: str, data: bytes) -> None:
        object_key = self.key(key, token)
        await self._client.put_object(
            Bucket=self.bucket, Key=object_key, Body=data, ContentType="application/octet-stream"
        )
        if self._index is None:
            self._index = await self._list()
        self._index[object_key] = (len(data), time.time())

    async def _list(self) -> dict[str, tuple[int, float]]:
        index: dict[str, tuple[int, float]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            response = await self._client.list_objects_v2(**kwargs)
            for item in response.get("Contents", []):
                if item["Key"].startswith(f"{self.prefix}{_LOCKS}/"):
                    continue  # a flight's lock object, not an entry
                index[item["Key"]] = (int(item["Size"]), item["LastModified"].timestamp())
            if not response.get("IsTruncated"):
                return index
            kwargs["ContinuationToken"] = response.get("NextContinuationToken")

    async def _evict(self) -> int:
        if self._index is None:
            self._index = await self._list()
        total = sum(size for size, _ in self._index.values())
        if total > self.max_bytes:
            listed = await self._list()  # other workers' entries count too; keep our recency
            for object_key, (size, used) in self._index.items():
                if object_key in listed:
                    listed[object_key] = (size, max(used, listed[object_key][1]))
            self._index = listed
            total = sum(size for size, _ in self._index.values())
        victims: list[str] = []
        for object_key, (size, _) in sorted(self._index.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            victims.append(object_key)
            total -= size
        for offset in range(0, len(victims), 1000):
            batch = victims[offset : offset + 1000]
            await self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        for object_key in victims:
            del self._index[object_key]
        self.stats.bytes = total
        return len(victims)


class FileLock:
    """An exclusive lock on a lock file (``fcntl.flock``): between processes, and between the
    open files of one process. The holder unlinks the file on release; an acquirer that locked
    a file unlinked meanwhile (its path now names another file, or none) tries again, so two
    holders never hold "the same" path at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never blocks); whether it was taken."""
        return self._take(blocking=False)

    def acquire(self) -> None:
        """Take the lock, waiting for its holder (blocks the calling thread)."""
        self._take(blocking=True)

    async def acquire_async(self) -> None:
        """Take the lock, waiting for its holder without blocking the event loop: a non-blocking
        attempt (a few local system calls) every few milliseconds, so a cancelled wait holds
        nothing. (The holder is another process: there is nothing in this one to wait on.)"""
        attempts = 0
        while not self.try_acquire():
            attempts += 1
            await asyncio.sleep(min(_LOCK_POLL_SECONDS * attempts, 0.2))

    def release(self) -> None:
        """Unlink the lock file and let the next holder in."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)  # closing the file releases the flock

    def _take(self, *, blocking: bool) -> bool:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the previous holder unlinked it: lock the new file


class _Flights:
    """The in-process half of single flight: one asyncio lock per flight name and event loop,
    shared by every cache object of the process on that loop, dropped when no one holds or awaits
    it. (Cache objects on other loops of the process meet at the shared lock: a lock file or the
    S3 lock object.)"""

    def __init__(self) -> None:
        self._locks: dict[tuple[int, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        at = (id(asyncio.get_running_loop()), name)
        lock, users = self._locks.get(at, (asyncio.Lock(), 0))
        self._locks[at] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[at]
            if users == 1:
                del self._locks[at]
            else:
                self._locks[at] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


_flights = _Flights()


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _age_seconds(head: dict[str, Any]) -> float:
    """How old an object is by the server's clock (its Date header), so clock skew between this
    machine and the server does not matter."""
    headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        now = parsedate_to_datetime(headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        now = time.time()
    return now - float(head["LastModified"].timestamp())


async def open_artifact_cache(
    location: str,
    max_bytes: int,
    s3: S3Connection | None = None,
    stack: AsyncExitStack | None = None,
    observer: Observer | None = None,
) -> ArtifactCache:
    """The cache at ``location``: ``s3://bucket/prefix`` (a client from ``s3``, closed with
    ``stack``) or a local directory."""
    if location.startswith("s3://"):
        if stack is None:
            raise ValueError("an s3:// artifact cache needs an AsyncExitStack to own its client")
        bucket, prefix = split_s3_uri(location)
        client = await open_s3_client(s3 or S3Connection(), stack)
        return S3ArtifactCache(client, bucket, prefix, max_bytes, observer)
    return LocalArtifactCache(location, max_bytes, observer)
