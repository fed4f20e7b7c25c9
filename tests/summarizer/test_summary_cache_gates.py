"""The Transformation Cache (content addressing, single flight, size bound,
persistence) and the process-wide provider gates."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.summarizer import gates
from hevlayer.summarizer.cache import CacheOutcome, Transformation, TransformationCache, cache_key
from hevlayer.summarizer.gates import Gate

GUARD = 30.0  # a hang guard, not a timing assertion


def _key(n: int) -> str:
    return cache_key("model", "v1", [f"input-{n}"])


async def _open(tmp_path: Path, max_bytes: int = 1 << 20) -> TransformationCache:
    cache = TransformationCache(tmp_path / "cache", max_bytes)
    await cache.open()
    return cache


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


async def test_concurrent_identical_requests_run_the_provider_once(tmp_path: Path) -> None:
    cache = await _open(tmp_path)
    calls = 0
    release = asyncio.Event()

    async def compute() -> Transformation:
        nonlocal calls
        calls += 1
        await release.wait()
        return Transformation("the summary", "model")

    tasks = [asyncio.create_task(cache.get_or_compute(_key(1), compute)) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    assert calls == 1
    assert {value for value, _ in results} == {Transformation("the summary", "model")}
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(CacheOutcome.MISS) == 1
    assert all(o in (CacheOutcome.JOINED, CacheOutcome.HIT) for o in outcomes if o is not CacheOutcome.MISS)
    # Stored: a later request is a hit and computes nothing.
    value, outcome = await cache.get_or_compute(_key(1), compute)
    assert (value.text, outcome, calls) == ("the summary", CacheOutcome.HIT, 1)


async def test_different_keys_compute_in_parallel(tmp_path: Path) -> None:
    cache = await _open(tmp_path)
    n = 6
    inside = 0
    all_inside = asyncio.Event()

    async def compute(i: int) -> Transformation:
        nonlocal inside
        inside += 1
        if inside == n:
            all_inside.set()
        await all_inside.wait()  # deadlocks unless all n run at once
        return Transformation(f"summary {i}", "model")

    def computation(i: int) -> Callable[[], Awaitable[Transformation]]:
        return lambda: compute(i)

    results = await asyncio.wait_for(
        asyncio.gather(*(cache.get_or_compute(_key(i), computation(i)) for i in range(n))), GUARD
    )
    assert [value.text for value, _ in results] == [f"summary {i}" for i in range(n)]
    assert all(outcome is CacheOutcome.MISS for _, outcome in results)


async def test_a_failure_is_shared_and_not_cached(tmp_path: Path) -> None:
    cache = await _open(tmp_path)
    calls = 0
    release = asyncio.Event()

    async def failing() -> Transformation:
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

    async def working() -> Transformation:
        return Transformation("fine", "model")

    value, outcome = await cache.get_or_compute(_key(2), working)
    assert (value.text, outcome) == ("fine", CacheOutcome.MISS)


async def test_a_cancelled_caller_leaves_the_shared_computation_running(tmp_path: Path) -> None:
    cache = await _open(tmp_path)
    release = asyncio.Event()
    started = asyncio.Event()

    async def compute() -> Transformation:
        started.set()
        await release.wait()
        return Transformation("kept", "model")

    leader = asyncio.create_task(cache.get_or_compute(_key(3), compute))
    await asyncio.wait_for(started.wait(), GUARD)
    follower = asyncio.create_task(cache.get_or_compute(_key(3), compute))
    await asyncio.sleep(0)
    leader.cancel()
    release.set()
    value, outcome = await asyncio.wait_for(follower, GUARD)
    assert (value.text, outcome) == ("kept", CacheOutcome.JOINED)
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert _key(3) in cache


async def test_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = await _open(tmp_path, max_bytes=2000)
    for i in range(4):
        await cache.put(_key(i), Transformation("x" * 200, "model"))
    entry = cache.total_bytes // 4
    assert await cache.get(_key(0)) is not None  # 0 becomes the most recently used
    for i in range(4, 12):
        await cache.put(_key(i), Transformation("x" * 200, "model"))
    assert cache.total_bytes <= 2000
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").glob("??/*.json"))
    assert on_disk == cache.total_bytes
    assert len(cache) == 2000 // entry
    assert _key(1) not in cache  # least recently used went first
    assert _key(11) in cache
    assert cache.evictions == 12 - len(cache)
    # An entry larger than the whole bound is not stored.
    await cache.put(_key(99), Transformation("y" * 5000, "model"))
    assert _key(99) not in cache


async def test_entries_survive_a_restart(tmp_path: Path) -> None:
    first = await _open(tmp_path)
    await first.put(_key(7), Transformation("durable", "model"))
    second = await _open(tmp_path)
    assert _key(7) in second
    assert await second.get(_key(7)) == Transformation("durable", "model")
    # A corrupt entry is a miss, not an error.
    path = next((tmp_path / "cache").glob("??/*.json"))
    path.write_text("{not json")
    third = await _open(tmp_path)
    assert await third.get(_key(7)) is None
    assert _key(7) not in third


async def test_gate_bounds_concurrency() -> None:
    gate = Gate("test", 3)
    inside = 0
    peak = 0
    full = asyncio.Event()

    async def call() -> None:
        nonlocal inside, peak
        async with gate:
            inside += 1
            peak = max(peak, inside)
            if inside == gate.limit:
                full.set()
            await full.wait()
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(10))), GUARD)
    assert peak == 3
    assert gate.peak == 3
    assert gate.in_flight == 0


def test_process_wide_gates_are_configurable() -> None:
    configured = gates.configure_gates(2, 5)
    try:
        assert gates.summary_gate() is configured.summary
        assert gates.description_gate() is configured.description
        assert (gates.summary_gate().limit, gates.description_gate().limit) == (2, 5)
        assert gates.provider_gates() is configured
    finally:
        gates.configure_gates(gates.DEFAULT_LIMIT, gates.DEFAULT_LIMIT)
    with pytest.raises(ValueError, match="limit"):
        Gate("bad", 0)
