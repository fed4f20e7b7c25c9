"""The chunk cache: one contract for disk (real files), Redis (a real server)
and Aerospike (a fake client: no server can run here), plus the resilient
wrapper that turns every cache failure into a miss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.clock import Clock
from support.fakes.aerospike import FakeAerospikeClient
from support.redis_server import RedisServer

from hevlayer.common import metrics
from hevlayer.devstack.ports import free_port
from hevlayer.gateway.cache import (
    AerospikeCache,
    ChunkCache,
    DiskCache,
    RedisCache,
    ResilientCache,
    aerospike_set_name,
    open_cache,
)
from hevlayer.gateway.settings import CacheSettings


@pytest.fixture(params=["disk", "redis", "aerospike"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[ChunkCache]:
    cache: ChunkCache
    if request.param == "disk":
        cache = DiskCache(tmp_path / "cache", 1 << 20)
    elif request.param == "redis":
        cache = RedisCache(redis_server.url, 60)
    else:
        fake = FakeAerospikeClient()
        cache = AerospikeCache(fake.connect, "hevlayer", 60)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()


async def test_contract(backend: ChunkCache) -> None:
    key = f"pipelines/p/1/packs/{free_port()}.pack#8:100"
    other = key.replace("#8:", "#108:")
    assert await backend.get_many("ns", [key, other]) == {}
    await backend.put_many("ns", {key: b"\x01segment", other: b"\x00plain"})
    assert await backend.get_many("ns", [key, other, "missing#0:1"]) == {
        key: b"\x01segment",
        other: b"\x00plain",
    }
    # Namespaces are separate.
    assert await backend.get_many("other_ns", [key]) == {}
    await backend.delete_many("ns", [key, "missing#0:1"])
    assert await backend.get_many("ns", [key, other]) == {other: b"\x00plain"}
    assert await backend.get_many("ns", []) == {}


async def test_disk_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=3000)
    await cache.start()
    for name in "abc":
        await cache.put_many("ns", {name: name.encode() * 1000})
    assert len(cache) == 3
    assert await cache.get_many("ns", ["a"]) == {"a": b"a" * 1000}  # a is now the most recent
    await cache.put_many("ns", {"d": b"d" * 1000})
    assert sorted(await cache.get_many("ns", list("abcd"))) == ["a", "c", "d"]
    assert cache.total_bytes <= 3000
    # Larger than the whole cache: not stored.
    await cache.put_many("ns", {"huge": b"x" * 5000})
    assert await cache.get_many("ns", ["huge"]) == {}
    assert _files(tmp_path) == 3


def _files(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.is_file())


async def test_disk_cache_survives_a_restart(tmp_path: Path) -> None:
    first = DiskCache(tmp_path, max_bytes=10_000)
    await first.start()
    await first.put_many("ns", {"k1": b"one", "k2": b"two"})
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "leftover.123.tmp").write_bytes(b"partial write")
    second = DiskCache(tmp_path, max_bytes=10_000)
    await second.start()
    assert await second.get_many("ns", ["k1", "k2"]) == {"k1": b"one", "k2": b"two"}
    assert not (tmp_path / "ab" / "leftover.123.tmp").exists()
    assert second.total_bytes == 6


async def test_aerospike_layout_ttl_and_limits() -> None:
    clock = Clock()
    fake = FakeAerospikeClient(clock=clock, write_block_size=4096)
    cache = AerospikeCache(fake.connect, "hevlayer", ttl_seconds=30)
    await cache.put_many("products", {"k#8:3": b"abc", "big#0:9000": b"x" * 9000})
    assert fake.sets() == {"pipe_products"}
    assert await cache.get_many("products", ["k#8:3", "big#0:9000"]) == {"k#8:3": b"abc"}
    key, meta, bins = fake.get(("hevlayer", "pipe_products", "k#8:3"))
    assert key[:3] == ("hevlayer", "pipe_products", None)
    assert isinstance(key[3], bytearray)
    assert meta == {"gen": 1, "ttl": 30}
    assert bins == {"segment": bytearray(b"abc")}
    clock.now += 31
    assert await cache.get_many("products", ["k#8:3"]) == {}
    long_namespace = "n" * 200
    assert len(aerospike_set_name(long_namespace)) <= 63
    assert aerospike_set_name(long_namespace) != aerospike_set_name("n" * 199)


async def test_aerospike_reconnects_after_an_outage() -> None:
    fake = FakeAerospikeClient()
    connects = 0

    def connect() -> FakeAerospikeClient:
        nonlocal connects
        connects += 1
        return fake.connect()

    cache = AerospikeCache(connect, "hevlayer", 60)
    await cache.put_many("ns", {"k": b"v"})
    fake.outage = True
    from aerospike import exception as as_exc

    with pytest.raises(as_exc.TimeoutError):
        await cache.get_many("ns", ["k"])
    fake.outage = False
    assert await cache.get_many("ns", ["k"]) == {"k": b"v"}
    assert connects == 2


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_failures_are_misses_and_the_breaker_skips_a_dead_backend() -> None:
    clock = Clock()
    fake = FakeAerospikeClient()
    cache = ResilientCache(AerospikeCache(fake.connect, "hevlayer", 60), timeout=1.0, cooldown=5, clock=clock)
    await cache.put_many("ns", {"a": b"1"})
    assert await cache.get_many("ns", ["a", "b"]) == {"a": b"1"}

    fake.outage = True
    for _ in range(3):
        assert await cache.get_many("ns", ["a"]) == {}
    assert not cache.available
    calls = len(fake.calls)
    assert await cache.get_many("ns", ["a"]) == {}  # skipped: the backend is not called
    await cache.put_many("ns", {"c": b"3"})
    assert len(fake.calls) == calls

    fake.outage = False
    clock.now += 6
    assert cache.available
    assert await cache.get_many("ns", ["a"]) == {"a": b"1"}

    lookups = _samples("hevlayer_gateway_chunk_cache_lookups_total")
    aerospike = {dict(k)["result"]: v for k, v in lookups.items() if dict(k)["backend"] == "aerospike"}
    assert aerospike["hit"] >= 2
    assert aerospike["miss"] >= 1
    assert aerospike["error"] >= 3
    assert aerospike["skipped"] >= 1
    ratio = _samples("hevlayer_gateway_chunk_cache_hit_ratio")[(("backend", "aerospike"),)]
    assert 0 < ratio < 1


async def test_unreachable_redis_never_raises() -> None:
    cache = open_cache(
        CacheSettings(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5)
    )
    assert await cache.get_many("ns", ["a"]) == {}
    await cache.put_many("ns", {"a": b"1"})
    cache.put_later("ns", {"b": b"2"})
    cache.delete_later("ns", ["a"])
    await cache.flush()
    await cache.close()


async def test_a_hung_backend_times_out(tmp_path: Path) -> None:
    class Hung(DiskCache):
        async def get_many(self, namespace: str, keys: list[str]) -> dict[str, bytes]:  # type: ignore[override]
            await asyncio.sleep(3600)
            return {}

    cache = ResilientCache(Hung(tmp_path, 100), timeout=0.05)
    assert await cache.get_many("ns", ["a"]) == {}


async def test_background_writes_are_bounded(tmp_path: Path) -> None:
    cache = ResilientCache(DiskCache(tmp_path, 1 << 20), max_pending_writes=2)
    for i in range(10):
        cache.put_later("ns", {f"k{i}": b"v"})
    await cache.flush()
    stored = await cache.get_many("ns", [f"k{i}" for i in range(10)])
    assert 2 <= len(stored) < 10
