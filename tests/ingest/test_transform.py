"""The Transformation Cache (hevlayer.ingest.transform): content addressing, single flight for
coroutines and threads, failures shared and not kept, the memory bound, a directory or S3
backing shared by every process (and both lanes) configured with it, and single flight across
processes on a directory."""

from __future__ import annotations

import asyncio
import io
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from support.fakes.vision import fake_vision_server
from support.s3 import cache_location

from hevlayer.devstack import SeaweedS3
from hevlayer.ingest import vision
from hevlayer.ingest.s3 import S3Connection, open_s3_client
from hevlayer.ingest.transform import TOKEN, CacheOutcome, TransformationCache, cache_key
from hevlayer.ingest.vision import VisionSettings, configure, describe, read_image

GUARD = 30.0  # a hang guard, not a timing assertion


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (a hang guard of GUARD seconds, not a timing assertion)."""
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 (a state of threads, files or another process to poll)
            await asyncio.sleep(0.01)


def _key(n: int) -> str:
    return cache_key("model", "v1", [f"input-{n}"])


@pytest.fixture
def caches() -> Iterator[list[TransformationCache]]:
    """Caches a test opens, closed at its end (their backing threads stop)."""
    opened: list[TransformationCache] = []
    yield opened
    for cache in opened:
        cache.close()


@given(
    model=st.text(max_size=8),
    version=st.text(max_size=8),
    inputs=st.lists(st.text(max_size=8), max_size=5),
    other=st.text(min_size=1, max_size=8),
)
def test_cache_key_is_content_addressed(model: str, version: str, inputs: list[str], other: str) -> None:
    key = cache_key(model, version, inputs)
    assert key == cache_key(model, version, list(inputs))
    assert len(key) == 64
    assert key != cache_key(model + other, version, inputs)
    assert key != cache_key(model, version + other, inputs)
    assert key != cache_key(model, version, [*inputs, other])
    if inputs != inputs[::-1]:
        assert key != cache_key(model, version, inputs[::-1])  # order matters


async def test_concurrent_identical_requests_run_the_provider_once(
    tmp_path: Path, caches: list[TransformationCache]
) -> None:
    cache = TransformationCache(location=tmp_path / "cache")
    caches.append(cache)
    calls = 0
    release = asyncio.Event()

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "the summary"

    tasks = [asyncio.create_task(cache.get_or_compute(_key(1), compute)) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert calls == 1
    assert {value for value, _ in results} == {"the summary"}
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(CacheOutcome.MISS) == 1
    assert all(o in (CacheOutcome.JOINED, CacheOutcome.HIT) for o in outcomes if o is not CacheOutcome.MISS)
    assert await cache.get_or_compute(_key(1), compute) == ("the summary", CacheOutcome.HIT)
    assert calls == 1


async def test_threads_and_coroutines_share_one_flight(caches: list[TransformationCache]) -> None:
    cache = TransformationCache()
    caches.append(cache)
    threads = 4
    release = threading.Event()
    calls = 0

    def compute() -> str:
        nonlocal calls
        calls += 1
        release.wait(GUARD)
        return "described"

    async def never() -> str:
        raise AssertionError("a coroutine joining a thread's flight must not compute")

    with ThreadPoolExecutor(threads) as pool:
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(pool, cache.get_or_compute_sync, _key(5), compute) for _ in range(threads)
        ]
        await until(lambda: cache.joined == threads - 1)  # every other thread joined the first's flight
        joiner = asyncio.create_task(cache.get_or_compute(_key(5), never))
        await until(lambda: cache.joined == threads)
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*futures, joiner), GUARD)
    assert calls == 1
    assert sorted(outcome.value for _, outcome in results) == ["joined"] * threads + ["miss"]
    assert {text for text, _ in results} == {"described"}


async def test_different_keys_compute_in_parallel(caches: list[TransformationCache]) -> None:
    cache = TransformationCache()
    caches.append(cache)
    n = 6
    inside = 0
    all_inside = asyncio.Event()

    async def compute(i: int) -> str:
        nonlocal inside
        inside += 1
        if inside == n:
            all_inside.set()
        await all_inside.wait()  # deadlocks unless all n run at once
        return f"summary {i}"

    def computation(i: int) -> Callable[[], Awaitable[str]]:
        return lambda: compute(i)

    results = await asyncio.wait_for(
        asyncio.gather(*(cache.get_or_compute(_key(i), computation(i)) for i in range(n))), GUARD
    )
    assert [value for value, _ in results] == [f"summary {i}" for i in range(n)]
    assert all(outcome is CacheOutcome.MISS for _, outcome in results)


async def test_a_failure_is_shared_and_not_cached(tmp_path: Path, caches: list[TransformationCache]) -> None:
    cache = TransformationCache(location=tmp_path / "cache")
    caches.append(cache)
    calls = 0
    release = asyncio.Event()

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise RuntimeError("provider down")

    tasks = [asyncio.create_task(cache.get_or_compute(_key(2), failing)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert _key(2) not in cache

    async def working() -> str:
        return "fine"

    assert await cache.get_or_compute(_key(2), working) == ("fine", CacheOutcome.MISS)


async def test_a_cancelled_caller_leaves_the_shared_computation_running(
    caches: list[TransformationCache],
) -> None:
    cache = TransformationCache()
    caches.append(cache)
    release = asyncio.Event()
    started = asyncio.Event()

    async def compute() -> str:
        started.set()
        await release.wait()
        return "kept"

    leader = asyncio.create_task(cache.get_or_compute(_key(3), compute))
    await asyncio.wait_for(started.wait(), GUARD)
    follower = asyncio.create_task(cache.get_or_compute(_key(3), compute))
    await asyncio.sleep(0)
    leader.cancel()
    release.set()
    assert await asyncio.wait_for(follower, GUARD) == ("kept", CacheOutcome.JOINED)
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert _key(3) in cache


async def test_a_cancelled_joiner_leaves_the_flight_to_the_others(caches: list[TransformationCache]) -> None:
    cache = TransformationCache()
    caches.append(cache)
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "kept"

    leader = asyncio.create_task(cache.get_or_compute(_key(4), compute))
    await until(lambda: _key(4) in cache._in_flight)
    quitter = asyncio.create_task(cache.get_or_compute(_key(4), compute))
    stayer = asyncio.create_task(cache.get_or_compute(_key(4), compute))
    await until(lambda: cache.joined == 2)
    quitter.cancel()
    release.set()
    assert await asyncio.wait_for(leader, GUARD) == ("kept", CacheOutcome.MISS)
    assert await asyncio.wait_for(stayer, GUARD) == ("kept", CacheOutcome.JOINED)
    with pytest.raises(asyncio.CancelledError):
        await quitter


def test_memory_is_bounded_and_the_directory_outlives_it(
    tmp_path: Path, caches: list[TransformationCache]
) -> None:
    cache = TransformationCache(max_entries=2, location=tmp_path / "cache")
    caches.append(cache)
    for n in range(3):
        assert cache.get_or_compute_sync(_key(n), lambda: "value")[1] is CacheOutcome.MISS
    assert len(cache) == 2
    assert _key(0) not in cache  # least recently used left memory ...
    assert cache.get_or_compute_sync(_key(0), lambda: "again") == (
        "value",
        CacheOutcome.HIT,
    )  # ... not the disk
    memory_only = TransformationCache(max_entries=1)
    caches.append(memory_only)
    memory_only.get_or_compute_sync(_key(0), lambda: "first")
    memory_only.get_or_compute_sync(_key(1), lambda: "second")
    assert memory_only.get_or_compute_sync(_key(0), lambda: "recomputed") == ("recomputed", CacheOutcome.MISS)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        cache.get_or_compute_sync("not-a-key", lambda: "x")


async def test_the_directory_is_size_bounded_least_recently_used_first(
    tmp_path: Path, caches: list[TransformationCache]
) -> None:
    location = tmp_path / "cache"
    cache = TransformationCache(max_entries=1, location=location, max_bytes=2000)
    caches.append(cache)

    async def text() -> str:
        return "x" * 200

    for n in range(12):
        await cache.get_or_compute(_key(n), text)
    entries = list(location.glob(f"*/*/{TOKEN.replace('/', '%2F')}"))
    assert 0 < len(entries) < 12
    assert sum(p.stat().st_size for p in entries) <= 2000
    later = TransformationCache(location=location, max_bytes=2000)  # another process, later
    caches.append(later)

    async def recompute() -> str:
        return "recomputed"

    assert await later.get_or_compute(_key(11), recompute) == ("x" * 200, CacheOutcome.HIT)
    assert await later.get_or_compute(_key(0), recompute) == ("recomputed", CacheOutcome.MISS)


async def test_a_corrupt_entry_is_a_miss(tmp_path: Path, caches: list[TransformationCache]) -> None:
    location = tmp_path / "cache"
    first = TransformationCache(location=location)
    caches.append(first)

    async def durable() -> str:
        return "durable"

    await first.get_or_compute(_key(7), durable)
    (entry,) = location.glob(f"*/*/{TOKEN.replace('/', '%2F')}")
    entry.write_text("{not json")
    second = TransformationCache(location=location)
    caches.append(second)
    assert await second.get_or_compute(_key(7), durable) == ("durable", CacheOutcome.MISS)


@pytest.mark.parametrize("backing", ["directory", "s3"])
async def test_a_description_made_by_the_object_lane_is_a_hit_for_the_job_lane(
    backing: str, request: pytest.FixtureRequest, tmp_path: Path, caches: list[TransformationCache]
) -> None:
    """The image producer (threads, hevlayer.ingest.vision) and an asyncio process (the
    summarizer's cache) configured with the same backing share one entry per description."""
    location = str(tmp_path / "transformations")
    connection: S3Connection | None = None
    if backing == "s3":
        s3: SeaweedS3 = request.getfixturevalue("s3")
        bucket: str = request.getfixturevalue("s3_bucket")
        location = f"s3://{bucket}/transformations"
        connection = S3Connection(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region)
    data = _png("olive")
    with fake_vision_server() as fake:
        settings = VisionSettings(provider="openai", url=fake.url, model="llava-test")
        object_lane = TransformationCache(location=location, s3=connection)
        caches.append(object_lane)
        current = configure(settings, cache=object_lane)
        try:
            made = await asyncio.to_thread(describe, data)
        finally:
            vision._vision = None
        assert made.outcome is CacheOutcome.MISS
        job_lane = TransformationCache(location=location, s3=connection)  # another process's cache
        caches.append(job_lane)

        async def must_not_run() -> str:
            raise AssertionError("the provider ran again")

        key = vision.cache_key(read_image(data), current.provider)
        assert await job_lane.get_or_compute(key, must_not_run) == (made.text, CacheOutcome.HIT)
    assert len(fake.requests) == 1


_OTHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hevlayer.ingest.s3 import S3Connection
    from hevlayer.ingest.transform import TransformationCache
    location, key, started, go, endpoint, access, secret, region = sys.argv[1:9]

    def compute() -> str:
        Path(started).touch()
        while not Path(go).exists():
            time.sleep(0.01)
        return "from the other process"

    cache = TransformationCache(location=location, s3=S3Connection(endpoint, access, secret, region))
    print(cache.get_or_compute_sync(key, compute)[1].value)
    cache.close()
    """
)


@pytest.mark.parametrize("backing", ["directory", "s3"])
async def test_a_second_process_waits_for_the_first(
    backing: str, request: pytest.FixtureRequest, tmp_path: Path, caches: list[TransformationCache]
) -> None:
    """A lock file on a directory, a lock object made by a conditional put on S3."""
    started, go = tmp_path / "started", tmp_path / "go"
    location, on_s3 = cache_location(request, tmp_path, "transformations", on_s3=backing == "s3")
    connection = on_s3 or S3Connection()
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_PROCESS,
        location,
        _key(9),
        str(started),
        str(go),
        connection.endpoint_url,
        connection.access_key_id,
        connection.secret_access_key,
        connection.region,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await until(lambda: started.exists() or other.returncode is not None)
        assert started.exists(), "the other process did not start computing"
        cache = TransformationCache(location=location, s3=connection)
        caches.append(cache)
        calls = 0

        async def compute() -> str:
            nonlocal calls
            calls += 1
            return "computed here too"

        waiting = asyncio.create_task(cache.get_or_compute(_key(9), compute))
        # Gives a cache without a cross-process lock the time to compute; not a timing assertion.
        await asyncio.sleep(0.3)
        go.touch()
        assert await asyncio.wait_for(waiting, GUARD) == ("from the other process", CacheOutcome.HIT)
        assert calls == 0
        out, _ = await asyncio.wait_for(other.communicate(), GUARD)
        assert out.decode().strip() == "miss"
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    if backing == "directory":
        locks = [str(p) for p in (Path(location) / ".locks").rglob("*") if p.is_file()]
    else:
        locks = await _lock_objects(connection, location)
    assert not locks, "holders remove their locks"


async def _lock_objects(connection: S3Connection, location: str) -> list[str]:
    """The lock objects under an ``s3://`` cache location."""
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    async with AsyncExitStack() as stack:
        client = await open_s3_client(connection, stack)
        listed = await client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/.locks/")
    return [str(item["Key"]) for item in listed.get("Contents", [])]


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()
