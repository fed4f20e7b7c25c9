"""The chunk store: documents' chunks packed into S3 objects.

Small documents are the common case, and one S3 request per document would
cap staging at the S3 client's request rate. So the documents staged together
(one group commit of the stager) go into **one pack object**::

    pipelines/{pipeline_id}/{incarnation}/packs/{time}-{random}.pack

(the prefix and the backing rule are :mod:`hevlayer.client.naming`'s, shared
with the claimer, which refuses a backing outside the pipeline's packs)

    header   8 bytes   b"HVPK" 0x01 0x00 0x00 0x00
    segment  per document, back to back:
               1 byte    codec: 0x00 plain, 0x01 zstd
               N bytes   a serialized hevlayer.api.document.v1.Document
                         (id, chunks, content_hash), deterministic encoding
    index    JSON {"documents": [[id, offset, length], ...]}
    trailer  12 bytes  b"HVIX" + uint64 little-endian length of the index

A document's **backing** is ``"<object key>#<offset>:<length>"`` (the
claimer's StagedRecord.backing) and covers its segment, codec byte included,
so one ranged GET reads one document. Pack objects are immutable: a backing
always names the same bytes, which makes it a safe cache key. The index is
for tools and audits; reads never need it.

The Document proto is the storage schema on purpose: ``buf breaking`` keeps
old packs decodable, and protobuf's C decoder is the fastest codec at hand.

This module knows S3 and the pack format, not gRPC or the claimer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import zstandard
from botocore.exceptions import BotoCoreError, ClientError

from hevlayer.api.document.v1 import document_pb2
from hevlayer.common import s3
from hevlayer.common.errors import Internal, NotFound, Unavailable
from hevlayer.gateway.metrics import S3_BYTES, S3_REQUESTS
from hevlayer.gateway.settings import S3Settings

log = logging.getLogger("hevlayer.gateway.chunkstore")

PACK_MAGIC = b"HVPK\x01\x00\x00\x00"
INDEX_MAGIC = b"HVIX"
CODEC_PLAIN = 0
CODEC_ZSTD = 1
# Ranged reads of one object are merged when the gap between them is at most
# this many bytes and the merged read stays below MAX_MERGED_READ.
MERGE_GAP = 256 * 1024
MAX_MERGED_READ = 8 * 1024 * 1024
REASON_S3 = "CHUNK_STORE_UNAVAILABLE"


@dataclass(frozen=True, order=True)
class Backing:
    """Where one document's segment lives: object key, offset and length."""

    key: str
    offset: int
    length: int

    def __str__(self) -> str:
        return f"{self.key}#{self.offset}:{self.length}"

    @classmethod
    def parse(cls, text: str) -> Backing:
        """Parse ``"<key>#<offset>:<length>"``; ValueError if malformed."""
        key, sep, span = text.rpartition("#")
        offset, colon, length = span.partition(":")
        if not sep or not key or not colon or not offset.isdigit() or not length.isdigit():
            raise ValueError(f"malformed backing {text!r}")
        return cls(key, int(offset), int(length))


class SegmentCodec:
    """Encodes a Document into a segment and back (zstd or plain)."""

    def __init__(self, compression: str = "zstd", level: int = 3) -> None:
        if compression not in ("zstd", "none"):
            raise ValueError(f"unknown compression {compression!r}")
        self.compression = compression
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, document: document_pb2.Document) -> bytes:
        """The segment of ``document`` (deterministic protobuf, then maybe zstd)."""
        return self.encode_serialized(document.SerializeToString(deterministic=True))

    def encode_serialized(self, payload: bytes) -> bytes:
        """The segment of an already serialized Document."""
        if self.compression == "zstd" and len(payload) > 64:
            packed = self._compressor.compress(payload)
            if len(packed) < len(payload):
                return bytes((CODEC_ZSTD,)) + packed
        return bytes((CODEC_PLAIN,)) + payload

    def decode(self, segment: bytes) -> document_pb2.Document:
        """The Document of a segment; Internal if the bytes are not a segment."""
        if not segment:
            raise Internal("empty chunk segment")
        codec = segment[0]
        body = memoryview(segment)[1:]
        if codec == CODEC_ZSTD:
            payload = self._decompressor.decompress(body)
        elif codec == CODEC_PLAIN:
            payload = bytes(body)
        else:
            raise Internal(f"unknown chunk segment codec {codec}")
        document = document_pb2.Document()
        document.ParseFromString(payload)
        return document


def build_pack(segments: Sequence[tuple[str, bytes]]) -> tuple[bytes, list[tuple[int, int]]]:
    """The pack object holding ``segments`` ((document id, segment) pairs) and
    each segment's (offset, length)."""
    parts = [PACK_MAGIC]
    spans: list[tuple[int, int]] = []
    offset = len(PACK_MAGIC)
    for _, segment in segments:
        parts.append(segment)
        spans.append((offset, len(segment)))
        offset += len(segment)
    index = json.dumps(
        {"documents": [[doc_id, o, n] for (doc_id, _), (o, n) in zip(segments, spans, strict=True)]},
        separators=(",", ":"),
    ).encode()
    parts.append(index)
    parts.append(INDEX_MAGIC + struct.pack("<Q", len(index)))
    return b"".join(parts), spans


def read_pack_index(pack: bytes) -> list[tuple[str, int, int]]:
    """The (document id, offset, length) index of a whole pack object."""
    if not pack.startswith(PACK_MAGIC) or pack[-12:-8] != INDEX_MAGIC:
        raise ValueError("not a chunk pack")
    (size,) = struct.unpack("<Q", pack[-8:])
    index = json.loads(pack[-12 - size : -12])
    return [(str(d), int(o), int(n)) for d, o, n in index["documents"]]


def new_pack_key(prefix: str) -> str:
    """A fresh, time-ordered pack key under ``prefix``."""
    return f"{prefix}{time.time_ns():016x}-{secrets.token_hex(6)}.pack"


@dataclass(frozen=True)
class _Run:
    key: str
    start: int
    end: int  # exclusive
    members: tuple[Backing, ...]


def _merge_runs(backings: Iterable[Backing]) -> list[_Run]:
    by_key: dict[str, list[Backing]] = {}
    for backing in backings:
        by_key.setdefault(backing.key, []).append(backing)
    runs: list[_Run] = []
    for key, items in by_key.items():
        items.sort(key=lambda b: b.offset)
        start, end, members = items[0].offset, items[0].offset + items[0].length, [items[0]]
        for item in items[1:]:
            item_end = item.offset + item.length
            if item.offset - end <= MERGE_GAP and max(end, item_end) - start <= MAX_MERGED_READ:
                end = max(end, item_end)
                members.append(item)
            else:
                runs.append(_Run(key, start, end, tuple(members)))
                start, end, members = item.offset, item_end, [item]
        runs.append(_Run(key, start, end, tuple(members)))
    return runs


def _is_missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound", "InvalidRange")


class ChunkStore:
    """Pack objects in one S3 bucket, through an aiobotocore client."""

    def __init__(self, client: Any, bucket: str, *, read_concurrency: int = 16) -> None:
        self._client = client
        self.bucket = bucket
        self._reads = asyncio.Semaphore(read_concurrency)

    async def write_pack(self, key: str, segments: Sequence[tuple[str, bytes]]) -> list[Backing]:
        """Write one pack object; return each segment's backing, in order."""
        body, spans = build_pack(segments)
        S3_REQUESTS.labels("put").inc()
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/octet-stream"
            )
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            raise Unavailable(f"chunk store: cannot write {key}: {exc}", reason=REASON_S3) from exc
        S3_BYTES.labels("put").inc(len(body))
        return [Backing(key, offset, length) for offset, length in spans]

    async def read_segments(self, backings: Iterable[Backing]) -> dict[Backing, bytes]:
        """Read the segments of ``backings``; ranged GETs of one object are merged.

        NotFound when an object or range is gone (its documents were
        re-staged or deleted meanwhile); Unavailable when S3 cannot be read.
        """
        runs = _merge_runs(set(backings))
        results: dict[Backing, bytes] = {}

        async def fetch(run: _Run) -> None:
            async with self._reads:
                data = await self._get_range(run.key, run.start, run.end)
            for member in run.members:
                lo = member.offset - run.start
                piece = data[lo : lo + member.length]
                if len(piece) != member.length:
                    raise NotFound(f"chunk segment {member} is truncated in S3")
                results[member] = piece

        await asyncio.gather(*(fetch(run) for run in runs))
        return results

    async def _get_range(self, key: str, start: int, end: int) -> bytes:
        S3_REQUESTS.labels("get").inc()
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFound(
                    f"chunk object {key} is gone (its documents were re-staged or deleted)",
                    reason="CHUNKS_GONE",
                ) from exc
            raise Unavailable(f"chunk store: cannot read {key}: {exc}", reason=REASON_S3) from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise Unavailable(f"chunk store: cannot read {key}: {exc}", reason=REASON_S3) from exc
        S3_BYTES.labels("get").inc(len(data))
        return data

    async def read_object(self, key: str) -> bytes:
        """A whole object (tools and tests)."""
        S3_REQUESTS.labels("get").inc()
        response = await self._client.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as stream:
            data: bytes = await stream.read()
        return data

    async def delete_objects(self, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are fine); Unavailable if S3 refuses."""
        pending = sorted(set(keys))
        for i in range(0, len(pending), 1000):
            batch = pending[i : i + 1000]
            S3_REQUESTS.labels("delete").inc()
            try:
                response = await self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                raise Unavailable(f"chunk store: cannot delete objects: {exc}", reason=REASON_S3) from exc
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise Unavailable(
                    f"chunk store: cannot delete {errors[0].get('Key')}: {errors[0]}", reason=REASON_S3
                )

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``."""
        keys: list[str] = []
        token: str | None = None
        while True:
            S3_REQUESTS.labels("list").inc()
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                response = await self._client.list_objects_v2(**kwargs)
            except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                raise Unavailable(f"chunk store: cannot list {prefix}: {exc}", reason=REASON_S3) from exc
            keys.extend(item["Key"] for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return keys
            token = response.get("NextContinuationToken")

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many there were."""
        keys = await self.list_keys(prefix)
        await self.delete_objects(keys)
        return len(keys)


async def open_s3_client(
    settings: S3Settings, stack: AsyncExitStack, *, max_connections: int = 64, max_attempts: int = 3
) -> Any:
    """An aiobotocore S3 client for ``settings``, closed when ``stack`` closes
    (:func:`hevlayer.common.s3.open_s3_client`; 30 s read timeout)."""
    return await s3.open_s3_client(
        stack, settings, max_connections=max_connections, max_attempts=max_attempts, read_timeout=30
    )
