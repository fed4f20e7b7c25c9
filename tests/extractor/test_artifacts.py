"""The Artifact Cache (hevlayer.ingest.artifacts): keys, version tokens, LRU eviction within the
byte budget, counters; on a local directory and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from support.s3 import cache_location

from hevlayer.ingest.artifacts import (
    ArtifactCache,
    LocalArtifactCache,
    check_token,
    chunks_token,
    data_hash,
    decode_chunks,
    derived_text,
    encode_chunks,
    normalize_hash,
    open_artifact_cache,
    text_token,
)
from hevlayer.ingest.producers import DEFAULT_BUDGET, Budget, Chunk, Source, select_producer

KEY_A = data_hash(b"a")
KEY_B = data_hash(b"b")
KEY_C = data_hash(b"c")


Opener = Callable[[int], Awaitable[ArtifactCache]]


@pytest.fixture(params=["local", "s3"])
async def open_cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a fresh cache with a byte budget: in a directory, or under a prefix of a fresh bucket."""
    async with AsyncExitStack() as stack:
        location, connection = cache_location(request, tmp_path, "artifacts", on_s3=request.param == "s3")

        async def opener(max_bytes: int) -> ArtifactCache:
            return await open_artifact_cache(location, max_bytes, connection, stack)

        yield opener


async def test_put_then_get_and_counters(open_cache: Opener) -> None:
    cache = await open_cache(1 << 20)
    assert await cache.get(KEY_A, "text/pdf/1") is None
    await cache.put(KEY_A, "text/pdf/1", b"derived text")
    assert await cache.get(f"sha256:{KEY_A};pdf/1", "text/pdf/1") == b"derived text"
    assert (cache.stats.hits, cache.stats.misses, cache.stats.puts) == (1, 1, 1)


async def test_a_new_version_token_is_a_miss(open_cache: Opener) -> None:
    cache = await open_cache(1 << 20)
    await cache.put(KEY_A, "text/pdf/1", b"old converter")
    assert await cache.get(KEY_A, "text/pdf/2") is None
    assert await cache.get(KEY_B, "text/pdf/1") is None
    assert await cache.get(KEY_A, "text/pdf/1") == b"old converter"


async def test_least_recently_used_is_evicted_over_budget(open_cache: Opener) -> None:
    cache = await open_cache(250)
    await cache.put(KEY_A, "t/1", b"a" * 100)
    await cache.put(KEY_B, "t/1", b"b" * 100)
    await asyncio.sleep(0.02)  # distinct recency stamps (mtime / index), not a timing assertion
    assert await cache.get(KEY_A, "t/1") is not None  # A is now more recent than B
    await asyncio.sleep(0.02)
    await cache.put(KEY_C, "t/1", b"c" * 100)  # 300 bytes > 250: B goes
    assert cache.stats.evictions == 1
    assert await cache.get(KEY_B, "t/1") is None
    assert await cache.get(KEY_A, "t/1") == b"a" * 100
    assert await cache.get(KEY_C, "t/1") == b"c" * 100
    assert cache.stats.bytes == 200


async def test_an_entry_over_the_whole_budget_is_not_stored(open_cache: Opener) -> None:
    cache = await open_cache(10)
    await cache.put(KEY_A, "t/1", b"x" * 11)
    assert await cache.get(KEY_A, "t/1") is None
    assert cache.stats.puts == 0


async def test_local_eviction_counts_entries_of_other_processes(tmp_path: Path) -> None:
    other = LocalArtifactCache(tmp_path, 1 << 20)
    await other.put(KEY_A, "t/1", b"a" * 100)
    old = time.time() - 3600
    os.utime(other.path(KEY_A, "t/1"), (old, old))
    mine = LocalArtifactCache(tmp_path, 150)
    await mine.put(KEY_B, "t/1", b"b" * 100)
    assert mine.stats.evictions == 1
    assert not other.path(KEY_A, "t/1").exists()
    assert mine.path(KEY_B, "t/1").exists()


def test_keys_and_tokens_are_checked() -> None:
    with pytest.raises(ValueError, match="content_hash 'nope'"):
        normalize_hash("nope")
    cache = LocalArtifactCache("/nonexistent-never-written", 10)

    with pytest.raises(ValueError, match="token 'a b'"):
        asyncio.run(cache.get(KEY_A, "a b"))


def test_chunks_round_trip_and_derived_text() -> None:
    producer = select_producer("text")
    text = " ".join(f"word{i}" for i in range(600))
    chunks = producer.produce(
        Source("/x/a.txt", "a.txt", text.encode()), Budget(max_tokens=50, overlap_tokens=10)
    )
    assert len(chunks) > 3
    assert decode_chunks(encode_chunks(chunks)) == chunks
    assert derived_text(chunks) == text
    pages = [Chunk("0000-a", "p1", "first page", 0), Chunk("0001-b", "p2", "second page", 0)]
    assert derived_text(pages) == "first page\n\nsecond page"


def test_tokens_name_converter_version_budget_and_name() -> None:
    producer = select_producer("pdf")
    assert text_token(producer) == f"text/pdf/{producer.version}"
    one = chunks_token(producer, DEFAULT_BUDGET, "a/b.pdf")
    assert check_token(one) == one
    assert one != chunks_token(producer, DEFAULT_BUDGET, "c/b.pdf")
    assert one != chunks_token(producer, Budget(max_tokens=100), "a/b.pdf")
