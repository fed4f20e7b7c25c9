"""The Artifact Cache's single flight (hevlayer.ingest.artifacts: ArtifactCache.flight, FileLock):
one holder at a time per (content, converter) among every cache object of a process, and across
processes on a local directory."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from support.s3 import cache_location

from hevlayer.devstack import SeaweedS3
from hevlayer.ingest.artifacts import (
    ArtifactCache,
    FileLock,
    data_hash,
    open_artifact_cache,
)
from hevlayer.ingest.s3 import S3Connection, open_s3_client
from hevlayer.ingest.store import S3ArtifactCache

GUARD = 30.0  # a hang guard, not a timing assertion
KEY = data_hash(b"the object")
TOKEN = "pdf/1"


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (a hang guard of GUARD seconds, not a timing assertion)."""
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 (another process's files to poll)
            await asyncio.sleep(0.01)


@pytest.fixture(params=["local", "s3"])
async def two_caches(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ArtifactCache, ArtifactCache]]:
    """Two cache objects on one location (as the Object Lane and the Job Lane of one `add` hold)."""
    async with AsyncExitStack() as stack:
        location, connection = cache_location(request, tmp_path, "artifacts", on_s3=request.param == "s3")
        first = await open_artifact_cache(location, 1 << 20, connection, stack)
        second = await open_artifact_cache(location, 1 << 20, connection, stack)
        yield first, second


async def test_one_holder_at_a_time_across_cache_objects_of_a_process(
    two_caches: tuple[ArtifactCache, ArtifactCache],
) -> None:
    first, second = two_caches
    events: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()
    conversions = 0

    async def lane(name: str, cache: ArtifactCache, hold: bool) -> bytes:
        nonlocal conversions
        blob = await cache.get(KEY, "text/" + TOKEN)
        if blob is not None:
            return blob
        async with cache.flight(KEY, TOKEN):
            events.append(f"{name} in")
            if hold:
                inside.set()
                await release.wait()
            blob = await cache.get(KEY, "text/" + TOKEN)
            if blob is None:
                conversions += 1
                blob = f"converted by {name}".encode()
                await cache.put(KEY, "text/" + TOKEN, blob)
            events.append(f"{name} out")
            return blob

    object_lane = asyncio.create_task(lane("object lane", first, hold=True))
    await asyncio.wait_for(inside.wait(), GUARD)
    job_lane = asyncio.create_task(lane("job lane", second, hold=False))
    await until(lambda: second.stats.misses == 1)  # the job lane missed and went for the flight
    for _ in range(10):  # from its miss to the flight's lock there is no I/O: a few loop turns
        await asyncio.sleep(0)
    assert events == ["object lane in"], "the job lane entered while the object lane converted"
    release.set()
    results = await asyncio.wait_for(asyncio.gather(object_lane, job_lane), GUARD)
    assert list(results) == [b"converted by object lane"] * 2
    assert conversions == 1
    assert events[:2] == ["object lane in", "object lane out"]


def test_a_file_lock_excludes_other_open_files_and_is_removed_by_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "one"
    holder, other = FileLock(path), FileLock(path)
    assert holder.try_acquire()
    assert not other.try_acquire()
    holder.release()
    assert not path.exists()
    assert other.try_acquire()
    assert path.exists()
    other.release()
    holder.acquire()
    with pytest.raises(RuntimeError, match="already held"):
        holder.acquire()
    holder.release()


_OTHER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys, time
    from contextlib import AsyncExitStack
    from pathlib import Path
    from hevlayer.ingest.artifacts import open_artifact_cache
    from hevlayer.ingest.s3 import S3Connection
    location, key, token, started, go, endpoint, access, secret, region = sys.argv[1:10]

    async def main() -> None:
        async with AsyncExitStack() as stack:
            connection = S3Connection(endpoint, access, secret, region)
            cache = await open_artifact_cache(location, 1 << 20, connection, stack)
            async with cache.flight(key, token):
                Path(started).touch()
                while not Path(go).exists():
                    await asyncio.sleep(0.01)
                await cache.put(key, "text/" + token, b"converted by the other process")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("backing", ["directory", "s3"])
async def test_a_second_process_waits_and_reads_the_entry(
    backing: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A lock file on a directory; on S3 a lock object that a conditional put creates."""
    started, go = tmp_path / "started", tmp_path / "go"
    location, on_s3 = cache_location(request, tmp_path, "artifacts", on_s3=backing == "s3")
    connection = on_s3 or S3Connection()
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_PROCESS,
        location,
        KEY,
        TOKEN,
        str(started),
        str(go),
        connection.endpoint_url,
        connection.access_key_id,
        connection.secret_access_key,
        connection.region,
    )
    async with AsyncExitStack() as stack:
        try:
            await until(lambda: started.exists() or other.returncode is not None)
            assert started.exists(), "the other process did not take the flight"
            cache = await open_artifact_cache(location, 1 << 20, connection, stack)
            converted: list[bytes] = []

            async def lane() -> bytes:
                async with cache.flight(KEY, TOKEN):
                    blob = await cache.get(KEY, "text/" + TOKEN)
                    if blob is None:
                        converted.append(b"converted here")
                        return b"converted here"
                    return blob

            waiting = asyncio.create_task(lane())
            # Gives a cache without a cross-process lock the time to convert; not a timing assertion.
            await asyncio.sleep(0.3)
            go.touch()
            assert await asyncio.wait_for(waiting, GUARD) == b"converted by the other process"
            assert converted == []
            assert await asyncio.wait_for(other.wait(), GUARD) == 0
        finally:
            if other.returncode is None:
                other.kill()
                await other.wait()
        if isinstance(cache, S3ArtifactCache):
            listed = await cache._client.list_objects_v2(Bucket=cache.bucket, Prefix=f"{cache.prefix}.locks/")
            assert not listed.get("Contents"), "holders remove their lock objects"
            assert await cache.get(KEY, "text/" + TOKEN) is not None
            await cache.put(data_hash(b"more"), "t/1", b"x")
            assert cache.stats.bytes == len(b"converted by the other process") + 1, "locks are not entries"
        else:
            locks = [p for p in (Path(location) / ".locks").rglob("*") if p.is_file()]
            assert not locks, "holders remove their lock files"


async def test_a_stale_s3_lock_is_removed(s3: SeaweedS3, s3_bucket: str) -> None:
    connection = S3Connection(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region)
    async with AsyncExitStack() as stack:
        client = await open_s3_client(connection, stack)
        cache = S3ArtifactCache(client, s3_bucket, "artifacts", 1 << 20, lock_seconds=1.0)
        lock_key = cache.lock_key(KEY, TOKEN)
        # The lock object of a holder that died: nobody will delete it.
        await client.put_object(Bucket=s3_bucket, Key=lock_key, Body=b"a holder that died")
        # Ages the planted lock past lock_seconds by the server's (second-resolution) clock.
        await asyncio.sleep(2.5)
        async with cache.flight(KEY, TOKEN):
            head = await client.head_object(Bucket=s3_bucket, Key=lock_key)
            assert head["ContentLength"] == 32, "the stale lock was replaced by this flight's own"
        with pytest.raises(ClientError):
            await client.head_object(Bucket=s3_bucket, Key=lock_key)  # released
