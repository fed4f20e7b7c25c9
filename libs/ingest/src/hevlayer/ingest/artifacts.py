"""The Artifact Cache: per-object derived blobs, reused while the object's content and the
converter's version still match.

Both lanes read it. The Object Lane (the extract loop, :mod:`hevlayer.ingest.extract_loop`)
consults it before running a producer; the Job Lane (the summarizer) reads an object's derived
text from it instead of converting the object again.

Public API (all a caller needs)::

    cache = LocalArtifactCache("/var/cache/hevlayer/artifacts", max_bytes=1 << 30)
    # or: S3ArtifactCache(s3_client, "bucket", "artifacts/", max_bytes=...)
    # or: await open_artifact_cache("s3://bucket/prefix" | "/a/directory", max_bytes, s3, stack)

    key = data_hash(data)                       # SHA-256 hex of the object's bytes
    token = text_token(producer)                # "text/<kind>/<version>"
    blob = await cache.get(key, token)          # bytes, or None (a miss)
    await cache.put(key, token, blob)           # store (replaces; evicts LRU entries over budget)
    cache.stats                                 # hits, misses, puts, evictions, bytes

- **Key**: ``(content_hash, token)``. ``content_hash`` is the SHA-256 of the object's bytes
  (:func:`data_hash`; a document's ``sha256:<hex>;kind/version`` content hash is accepted too,
  its hex part is used). ``token`` names the converter and its version: a producer bump
  (``Producer.version``) changes the token, so every old entry becomes a miss and is converted
  again (the old entries age out by LRU).
- **What the extract loop stores** per converted object: the producer's chunks under
  :func:`chunks_token` (which also names the chunk budget and the object's display name, since
  both shape the chunks) and the object's derived text under :func:`text_token` (the chunk
  bodies put back together, overlaps removed; :func:`derived_text`). The summarizer reads the
  latter: ``await cache.get(data_hash(data), text_token(select_producer(kind)))`` → UTF-8 text.
- **Bounds**: ``max_bytes`` of entries. A put that takes the total over it evicts the least
  recently used entries until it fits; an entry larger than the whole budget is not stored.

  - Local directory (development, ``hevlayer add``): one file per entry
    (``<root>/<hash[:2]>/<hash>/<token>``), written atomically. Recency is the file's mtime,
    set on every hit (atime is unreliable under ``relatime``/``noatime``). The index (path →
    size, mtime) is built by scanning the directory at first use and rescanned before an
    eviction, so processes sharing the directory count each other's entries.
  - S3 (the extract workers of a cluster): one object per entry (``<prefix><hash>/<token>``).
    S3 cannot touch an object without rewriting it, so recency lives in a size-bounded
    in-process index: seeded from ``ListObjectsV2`` (LastModified) at first use, refreshed by this
    process's hits and puts, re-listed before an eviction (other workers' entries count toward
    the budget). Several workers sharing a prefix each keep the total under the budget as they
    see it; an S3 lifecycle rule expiring the prefix after N days is a sensible extra backstop
    for workers that stop (docs/ingest.md).
- **Counters**: :class:`CacheStats` (and the ``observer`` callback each cache takes, which the
  extract worker turns into Prometheus counters). Conversions are counted by the extract loop
  (``ExtractStats.conversions``): a run where every object hits performs none.
- **Single flight** (:meth:`ArtifactCache.flight`): ``async with cache.flight(hash, token):``
  holds the conversion of one object by one converter (``token`` = :func:`version_token`) for
  everyone else: a caller that misses takes the flight, looks again (someone may have just
  stored the entry), converts only when still missing, stores, and leaves. Within one process
  every cache object of the same location shares one lock per flight (the Object Lane's
  ``ExtractLoop`` and the Job Lane's ``SummaryJobs`` in one ``hevlayer add`` each hold their
  own cache object). Across processes a local directory adds a lock file per flight
  (``<root>/.locks/...``, ``fcntl.flock``; the holder unlinks it on leaving, so none pile up):
  a second process reaching the same unconverted object waits and then reads the entry. On S3
  the lock is an object (``<prefix>.locks/<hash>/<token>``, never listed as an entry) that a
  conditional put (``If-None-Match: *``) creates, so exactly one process holds it; the others
  poll until it is deleted (``If-Match`` on its own ETag) or stale: older than
  ``S3ArtifactCache.lock_seconds`` (120 s) by the server's clock, when a waiter removes it and
  converts. A holder that died delays the others by that much at most; one slower than that has
  a second process convert too (one duplicate conversion, never a wrong entry: the key is the
  content and the converter's version).
- **Failures**: the cache is an optimisation. A read or write error is logged and counted as a
  miss (``get``) or ignored (``put``); the caller converts as if there were no cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict

from hevlayer.ingest.producers import Budget, Chunk, Producer
from hevlayer.ingest.store import (
    ArtifactCache,
    CacheStats,
    FileLock,
    LocalArtifactCache,
    Observer,
    S3ArtifactCache,
    check_token,
    data_hash,
    normalize_hash,
    open_artifact_cache,
)

__all__ = [
    "ArtifactCache",
    "CacheStats",
    "FileLock",
    "LocalArtifactCache",
    "Observer",
    "S3ArtifactCache",
    "check_token",
    "chunks_token",
    "data_hash",
    "decode_chunks",
    "derived_text",
    "encode_chunks",
    "normalize_hash",
    "open_artifact_cache",
    "text_token",
    "version_token",
]


def version_token(producer: Producer) -> str:
    """``<kind>/<version>``: the converter version token of a producer."""
    return f"{producer.kind}/{producer.version}"


def text_token(producer: Producer) -> str:
    """Token of an object's derived text (what the summarizer folds)."""
    return f"text/{version_token(producer)}"


def chunks_token(producer: Producer, budget: Budget, name: str) -> str:
    """Token of an object's chunks: the producer's version, the budget and the display name
    (the context lines carry the name, so two files with the same bytes differ)."""
    shape = (
        f"{budget.max_tokens},{budget.overlap_tokens},{budget.max_chars},{budget.max_rows},"
        f"{budget.tokenizer},{budget.text_limit}"
    )
    named = hashlib.blake2b(name.encode(errors="surrogatepass"), digest_size=8).hexdigest()
    return f"chunks/{version_token(producer)}/{shape}/{named}"


def encode_chunks(chunks: Sequence[Chunk]) -> bytes:
    """Chunks as a cache blob (JSON)."""
    return json.dumps([asdict(c) for c in chunks], ensure_ascii=False, separators=(",", ":")).encode()


def decode_chunks(blob: bytes) -> list[Chunk]:
    """The chunks of a blob from :func:`encode_chunks`; ValueError when it is not one."""
    try:
        items = json.loads(blob)
        return [
            Chunk(
                id=str(item["id"]),
                text=str(item["text"]),
                body=str(item["body"]),
                start=int(item["start"]),
                metadata=dict(item.get("metadata") or {}),
            )
            for item in items
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a chunks artifact: {exc}") from exc


def derived_text(chunks: Sequence[Chunk]) -> str:
    """The text behind ``chunks``: their bodies in order, the overlap of consecutive bodies of
    one text removed, texts (a PDF's pages, say) separated by a blank line."""
    parts: list[str] = []
    previous_start: int | None = None
    previous_end = 0
    for chunk in chunks:
        body, end = chunk.body, chunk.start + len(chunk.body)
        if previous_start is None:
            parts.append(body)
        elif chunk.start <= previous_start:  # starts only grow within one text: a new text
            parts.append("\n\n" + body)
            previous_end = end
        elif chunk.start < previous_end:
            parts.append(body[previous_end - chunk.start :])
        else:
            parts.append("\n" + body)  # only whitespace lies between two bodies
        previous_end = end if previous_start is None else max(previous_end, end)
        previous_start = chunk.start
    return "".join(parts)
