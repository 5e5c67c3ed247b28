"""The in-process store: byte budget, LRU eviction and retention."""

from __future__ import annotations

from proxy.core.models import StoredResponse
from proxy.stores.memory import MemoryStore, key_bytes
from tests.conftest import FakeClock


def entry(size: int) -> StoredResponse:
    return StoredResponse(200, "OK", (), b"x" * size, 0.0, 0.0)


async def test_records_expire_with_their_retention(clock: FakeClock) -> None:
    store = MemoryStore(10_000, clock=clock)
    await store.set("/a", (entry(10),), ttl=5)
    assert await store.get("/a") == (entry(10),)
    clock.advance(6)
    assert await store.get("/a") is None


async def test_byte_budget_evicts_least_recently_used(clock: FakeClock) -> None:
    evictions: list[int] = []
    one = entry(1000).size + key_bytes("/a")
    store = MemoryStore(3 * one, clock=clock, on_evict=lambda: evictions.append(1))
    for key in ("/a", "/b", "/c"):
        await store.set(key, (entry(1000),), ttl=60)
    await store.get("/a")
    await store.set("/d", (entry(1000),), ttl=60)
    assert await store.get("/b") is None
    assert await store.get("/a") is not None
    assert len(evictions) == 1
    assert store.bytes <= 3 * one
    assert store.entries == 3


async def test_record_larger_than_budget_is_not_stored(clock: FakeClock) -> None:
    store = MemoryStore(2000, clock=clock)
    await store.set("/a", (entry(5000),), ttl=60)
    assert await store.get("/a") is None
    assert store.bytes == 0


async def test_zero_ttl_removes_and_delete_forgets(clock: FakeClock) -> None:
    store = MemoryStore(10_000, clock=clock)
    await store.set("/a", (entry(10),), ttl=60)
    await store.set("/a", (entry(10),), ttl=0)
    assert await store.get("/a") is None
    await store.set("/b", (entry(10),), ttl=60)
    await store.delete("/b")
    assert await store.get("/b") is None


async def test_keys_count_against_the_budget(clock: FakeClock) -> None:
    store = MemoryStore(100_000, clock=clock)
    long_key = "/" + "k" * 8000
    await store.set(long_key, (entry(10),), ttl=60)
    assert store.bytes == entry(10).size + key_bytes(long_key) > 8000
