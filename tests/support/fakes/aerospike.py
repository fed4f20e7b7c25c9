"""A fake Aerospike client: no Aerospike server can run here.

:class:`FakeAerospikeClient` implements the part of ``aerospike.Client``
(the C-based ``aerospike`` package, 19.x) that the gateway's
:class:`hevlayer.gateway.cache.AerospikeCache` uses, with the real client's
shapes and exceptions:

- keys are ``(namespace, set, user_key)`` tuples; records come back as
  ``(key, meta, bins)`` with ``key = (namespace, set, None, digest)`` (the
  default ``POLICY_KEY_DIGEST``: the user key is not stored), ``digest`` from
  the real ``aerospike.calc_digest`` and ``meta = {"gen": n, "ttl": seconds}``;
- ``put(key, bins, meta={"ttl": n})`` with TTL semantics (``-1`` never
  expires, ``0`` the namespace default, which is "never" here); a record
  larger than the namespace's write block (1 MiB by default) raises
  ``RecordTooBig``, a bin name over 15 characters ``BinNameError``, a set name
  over 63 bytes ``InvalidRequest``, an unknown namespace ``NamespaceNotFound``;
- ``get`` and ``remove`` of a missing record raise ``RecordNotFound``;
- ``batch_read(keys, bins)`` returns ``aerospike_helpers.batch.records.
  BatchRecords`` whose ``BatchRecord`` items carry ``result`` 0 (found,
  ``record`` set) or 2 (``AEROSPIKE_ERR_RECORD_NOT_FOUND``, ``record`` None);
- blobs come back as ``bytearray``;
- ``outage`` makes every call raise ``aerospike.exception.TimeoutError``
  (code 9), as a client whose cluster stopped answering does.

Exceptions are the real classes from ``aerospike.exception``, built with the
real argument tuple ``(code, message, file, line, in_doubt)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import aerospike
from aerospike import exception as as_exc
from aerospike_helpers.batch.records import BatchRecord, BatchRecords  # type: ignore[import-untyped]

AEROSPIKE_OK = 0
AEROSPIKE_ERR_RECORD_NOT_FOUND = 2
MAX_BIN_NAME = 15
MAX_SET_NAME = 63


def _error(cls: type[as_exc.AerospikeError], code: int, message: str) -> as_exc.AerospikeError:
    return cls(code, message, "fake_aerospike.py", 0, False)


class FakeAerospikeClient:
    """The subset of ``aerospike.Client`` the gateway's cache uses (see the module docstring)."""

    def __init__(
        self,
        namespaces: tuple[str, ...] = ("hevlayer",),
        *,
        write_block_size: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespaces = namespaces
        self.write_block_size = write_block_size
        self.clock = clock
        self.outage = False
        self.calls: list[str] = []
        self._connected = True
        self._records: dict[tuple[str, bytes], tuple[dict[str, Any], int, float | None]] = {}
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------

    def connect(self, username: str | None = None, password: str | None = None) -> FakeAerospikeClient:
        if self.outage:
            raise _error(getattr(as_exc, "ConnectionError", as_exc.ClientError), -10, "Failed to connect")
        self._connected = True
        return self

    def is_connected(self) -> bool:
        return self._connected and not self.outage

    def close(self) -> None:
        self._connected = False

    # -- records ------------------------------------------------------------------------

    def put(
        self,
        key: tuple[Any, ...],
        bins: dict[str, Any],
        meta: dict[str, Any] | None = None,
        policy: dict[str, Any] | None = None,
        serializer: Any = None,
    ) -> None:
        self.calls.append("put")
        self._check_outage()
        ident = self._ident(key)
        for name in bins:
            if not isinstance(name, str) or len(name) > MAX_BIN_NAME:
                raise _error(as_exc.BinNameError, 21, f"bin name too long: {name!r}")
        stored = {name: bytearray(v) if isinstance(v, (bytes, bytearray)) else v for name, v in bins.items()}
        size = sum(
            len(name) + (len(v) if isinstance(v, (bytes, bytearray, str)) else 8)
            for name, v in stored.items()
        )
        if size + 64 > self.write_block_size:
            raise _error(as_exc.RecordTooBig, 13, "AEROSPIKE_ERR_RECORD_TOO_BIG")
        ttl = int((meta or {}).get("ttl", 0))
        expires = None if ttl in (0, -1, aerospike.TTL_NEVER_EXPIRE) else self.clock() + ttl
        with self._lock:
            current = self._live(ident)
            generation = current[1] + 1 if current is not None else 1
            self._records[ident] = (stored, generation, expires)

    def get(self, key: tuple[Any, ...], policy: dict[str, Any] | None = None) -> tuple[Any, ...]:
        self.calls.append("get")
        self._check_outage()
        ident = self._ident(key)
        with self._lock:
            record = self._live(ident)
        if record is None:
            raise _error(
                as_exc.RecordNotFound, AEROSPIKE_ERR_RECORD_NOT_FOUND, "AEROSPIKE_ERR_RECORD_NOT_FOUND"
            )
        return self._record(key, ident, record, None)

    def batch_read(
        self, keys: list[tuple[Any, ...]], bins: list[str] | None = None, policy: dict[str, Any] | None = None
    ) -> BatchRecords:
        self.calls.append("batch_read")
        self._check_outage()
        results = []
        for key in keys:
            ident = self._ident(key)
            item = BatchRecord(key)
            with self._lock:
                record = self._live(ident)
            if record is None:
                item.result = AEROSPIKE_ERR_RECORD_NOT_FOUND
            else:
                item.result = AEROSPIKE_OK
                item.record = self._record(key, ident, record, bins)
            results.append(item)
        batch = BatchRecords(results)
        batch.result = AEROSPIKE_OK
        return batch

    def remove(
        self, key: tuple[Any, ...], meta: dict[str, Any] | None = None, policy: dict[str, Any] | None = None
    ) -> None:
        self.calls.append("remove")
        self._check_outage()
        ident = self._ident(key)
        with self._lock:
            if self._live(ident) is None:
                raise _error(
                    as_exc.RecordNotFound, AEROSPIKE_ERR_RECORD_NOT_FOUND, "AEROSPIKE_ERR_RECORD_NOT_FOUND"
                )
            del self._records[ident]

    # -- helpers ------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ident in list(self._records) if self._live(ident) is not None)

    def sets(self) -> set[str]:
        """Set names holding live records (for tests)."""
        with self._lock:
            return {ident[0].split("\0")[1] for ident in list(self._records) if self._live(ident) is not None}

    def _check_outage(self) -> None:
        if self.outage:
            raise _error(as_exc.TimeoutError, 9, "AEROSPIKE_ERR_TIMEOUT")
        if not self._connected:
            raise _error(as_exc.ClientError, -1, "client is not connected")

    def _ident(self, key: tuple[Any, ...]) -> tuple[str, bytes]:
        if not isinstance(key, tuple) or len(key) not in (3, 4):
            raise _error(as_exc.ParamError, -2, "key is invalid")
        namespace, set_name, user_key = key[0], key[1], key[2]
        if not isinstance(namespace, str) or not isinstance(set_name, str):
            raise _error(as_exc.ParamError, -2, "namespace and set must be strings")
        if namespace not in self.namespaces:
            raise _error(as_exc.NamespaceNotFound, 20, f"namespace {namespace} not found")
        if len(set_name.encode()) > MAX_SET_NAME:
            raise _error(as_exc.InvalidRequest, 4, "set name too long")
        if not isinstance(user_key, (str, int, bytes, bytearray)):
            raise _error(as_exc.ParamError, -2, "key is invalid")
        digest = bytes(
            aerospike.calc_digest(
                namespace, set_name, bytearray(user_key) if isinstance(user_key, bytes) else user_key
            )
        )
        return (f"{namespace}\0{set_name}", digest)

    def _live(self, ident: tuple[str, bytes]) -> tuple[dict[str, Any], int, float | None] | None:
        record = self._records.get(ident)
        if record is None:
            return None
        expires = record[2]
        if expires is not None and expires <= self.clock():
            del self._records[ident]
            return None
        return record

    def _record(
        self,
        key: tuple[Any, ...],
        ident: tuple[str, bytes],
        record: tuple[dict[str, Any], int, float | None],
        bins: list[str] | None,
    ) -> tuple[Any, ...]:
        stored, generation, expires = record
        ttl = -1 if expires is None else max(1, int(expires - self.clock()))
        selected = {k: v for k, v in stored.items() if bins is None or k in bins}
        return ((key[0], key[1], None, bytearray(ident[1])), {"gen": generation, "ttl": ttl}, selected)
