"""Segment manifests: zstd-compressed lists of document ids in S3.

A manifest is immutable: it is written once, read any number of times and
deleted when its segment is completed, split or its pipeline deleted. That
makes a process-local cache of decoded manifests always correct.

Layout: ``pipelines/<pipeline>/segments/<segment-id>.zst``. The object is
``zstd(header + ids [+ hashes])`` where the header is one JSON line with the
format version, the id count and the byte lengths of the NUL-separated id and
content-hash sections (document ids and hashes never contain NUL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import zstandard

from hevlayer.common import s3
from hevlayer.common.errors import Internal, Unavailable

log = logging.getLogger("hevlayer.claimer.manifests")

FORMAT = "hevlayer-segment/1"
_COMPRESS_LEVEL = 3


def segments_prefix(pipeline_id: str) -> str:
    """The key prefix of a pipeline's manifests."""
    return f"pipelines/{pipeline_id}/segments/"


def manifest_key(pipeline_id: str, segment_id: int) -> str:
    """The key of one segment's manifest."""
    return f"{segments_prefix(pipeline_id)}{segment_id:012d}.zst"


def segment_id_of(key: str) -> int | None:
    """The segment id named by a manifest key, None if it is not one."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".zst") or not name[:-4].isdigit():
        return None
    return int(name[:-4])


@dataclass
class Manifest:
    """The ids of one segment, in order, with their content hashes if any."""

    ids: list[str]
    hashes: list[str] | None = None
    _positions: dict[str, int] | None = field(default=None, repr=False)

    def positions(self) -> dict[str, int]:
        """Id -> position (first occurrence), built on first use."""
        if self._positions is None:
            positions = dict(zip(self.ids, range(len(self.ids)), strict=True))
            if len(positions) != len(self.ids):  # duplicates: keep the first occurrence
                positions = {doc: i for i, doc in reversed(list(enumerate(self.ids)))}
            self._positions = positions
        return self._positions

    def hash_at(self, position: int) -> str:
        """The content hash of the id at ``position`` ("" when none)."""
        return self.hashes[position] if self.hashes is not None else ""


def encode_manifest(ids: Sequence[str], hashes: Sequence[str] | None = None) -> bytes:
    """The compressed object of a manifest."""
    id_bytes = "\x00".join(ids).encode()
    hash_bytes = "\x00".join(hashes).encode() if hashes is not None else b""
    header = json.dumps(
        {
            "format": FORMAT,
            "count": len(ids),
            "ids_bytes": len(id_bytes),
            "hashes_bytes": len(hash_bytes) if hashes is not None else -1,
        },
        separators=(",", ":"),
    ).encode()
    raw = header + b"\n" + id_bytes + hash_bytes
    return zstandard.ZstdCompressor(level=_COMPRESS_LEVEL).compress(raw)


def decode_manifest(data: bytes) -> Manifest:
    """The manifest of a compressed object (ValueError if it is not one)."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd manifest: {exc}") from None
    newline = raw.index(b"\n")
    header = json.loads(raw[:newline])
    if header.get("format") != FORMAT:
        raise ValueError(f"unknown manifest format {header.get('format')!r}")
    start = newline + 1
    end = start + int(header["ids_bytes"])
    count = int(header["count"])
    ids = raw[start:end].decode().split("\x00") if count else []
    hashes: list[str] | None = None
    if int(header["hashes_bytes"]) >= 0:
        hashes = raw[end : end + int(header["hashes_bytes"])].decode().split("\x00") if count else []
    if len(ids) != count or (hashes is not None and len(hashes) != count):
        raise ValueError("manifest count does not match its contents")
    return Manifest(ids, hashes)


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing."""

    key: str
    last_modified: datetime
    """When S3 says the object was written (timezone-aware)."""


class ObjectStore:
    """The few S3 operations the claimer needs, on one bucket (aiobotocore).

    Connection failures and 5xx answers raise :class:`Unavailable`.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        region: str = "",
        max_connections: int = 32,
        timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self._endpoint = s3.S3Connection(endpoint_url, access_key_id, secret_access_key, region)
        self._max_connections = max_connections
        self._timeout = timeout
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def open(self) -> None:
        """Create the client (no request is made; :func:`hevlayer.common.s3.open_s3_client`)."""
        self._stack = contextlib.AsyncExitStack()
        self._client = await s3.open_s3_client(
            self._stack,
            self._endpoint,
            max_connections=self._max_connections,
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
        )

    async def close(self) -> None:
        """Close the client."""
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._client = None

    def _require(self) -> Any:
        if self._client is None:
            raise Unavailable("the S3 client is not open", retry_after=1.0)
        return self._client

    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                raise Unavailable(f"S3 {what} failed: {code or status}", retry_after=1.0) from exc
            raise Internal(f"S3 {what} failed: {code or status}") from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise Unavailable(f"S3 is unreachable ({what}): {type(exc).__name__}", retry_after=1.0) from exc

    async def put(self, key: str, body: bytes) -> None:
        """Write one object."""
        client = self._require()
        async with self._errors("put"):
            await client.put_object(Bucket=self.bucket, Key=key, Body=body)

    async def get(self, key: str) -> bytes:
        """Read one object; :class:`Internal` if it is missing."""
        client = self._require()
        from botocore.exceptions import ClientError

        try:
            async with self._errors("get"):
                response = await client.get_object(Bucket=self.bucket, Key=key)
                async with response["Body"] as stream:
                    data: bytes = await stream.read()
                    return data
        except Internal as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
                "NoSuchKey",
                "404",
            ):
                raise Internal(f"segment manifest {key} is missing from S3") from cause
            raise

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete objects (missing ones are fine), 1000 per request."""
        client = self._require()
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            async with self._errors("delete"):
                response = await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            errors = response.get("Errors") or []
            if errors:
                raise Unavailable(f"S3 delete failed for {len(errors)} objects: {errors[0]}", retry_after=1.0)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``."""
        return [item.key for item in await self.list_objects(prefix)]

    async def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix`` with the time S3 says it was written."""
        client = self._require()
        objects: list[StoredObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            async with self._errors("list"):
                response = await client.list_objects_v2(**kwargs)
            objects.extend(
                StoredObject(item["Key"], item["LastModified"]) for item in response.get("Contents") or []
            )
            if not response.get("IsTruncated"):
                return objects
            token = response.get("NextContinuationToken")


class ManifestCache:
    """Decoded manifests by key, least recently used evicted past ``max_ids`` ids."""

    def __init__(self, store: ObjectStore, max_ids: int) -> None:
        self._store = store
        self._max_ids = max_ids
        self._entries: OrderedDict[str, Manifest] = OrderedDict()
        self._ids = 0
        self.hits = 0
        self.misses = 0

    def _remember(self, key: str, manifest: Manifest) -> None:
        if key in self._entries:
            return
        self._entries[key] = manifest
        self._ids += len(manifest.ids)
        while self._ids > self._max_ids and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._ids -= len(evicted.ids)

    def forget(self, keys: Sequence[str]) -> None:
        """Drop deleted manifests."""
        for key in keys:
            evicted = self._entries.pop(key, None)
            if evicted is not None:
                self._ids -= len(evicted.ids)

    async def put(self, key: str, ids: Sequence[str], hashes: Sequence[str] | None = None) -> Manifest:
        """Write a new manifest and cache it."""
        ids = list(ids)
        body = (
            await asyncio.to_thread(encode_manifest, ids, hashes)
            if len(ids) > 2000
            else (encode_manifest(ids, hashes))
        )
        await self._store.put(key, body)
        manifest = Manifest(ids, list(hashes) if hashes is not None else None)
        self._remember(key, manifest)
        return manifest

    async def get(self, key: str) -> Manifest:
        """A manifest, from the cache or S3."""
        manifest = self._entries.get(key)
        if manifest is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return manifest
        self.misses += 1
        data = await self._store.get(key)
        try:
            manifest = decode_manifest(data)
        except ValueError as exc:
            raise Internal(f"segment manifest {key} is corrupt: {exc}") from exc
        self._remember(key, manifest)
        return manifest
