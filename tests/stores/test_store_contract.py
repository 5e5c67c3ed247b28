"""One contract, every store: the memory store, the Redis store and the two tiers together.

Time passes differently for each: the memory store follows an injected clock; Redis expires by
its own clock, so ``elapse`` shortens the remaining time to live of the test's keys instead,
which checks that a record was written with exactly its retention time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
from redis.asyncio import Redis

from proxy.core.models import StoredResponse
from proxy.stores.base import Store
from proxy.stores.keys import RedisKeys
from proxy.stores.memory import MemoryStore
from proxy.stores.redis_link import RedisLink
from proxy.stores.redis_tier import RedisStore, TieredStore
from tests.conftest import FakeClock

ENTRY = StoredResponse(
    status=200,
    reason="OK",
    headers=(("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("X-Note", "\u00fcber")),
    body=b'{"text": "hello"}',
    request_time=1_800_000_000.0,
    response_time=1_800_000_000.5,
    scope="caller-a",
)
OTHER_SCOPE = replace(ENTRY, scope="caller-b", body=b"\x00\xff" * 100)
NEWER = replace(ENTRY, body=b'{"text": "hello again"}', response_time=1_800_000_010.0)
KEY = "/v1/audio/transcribe/job-1?format=json"

pytest_plugins = ("tests.support.redis_fixtures",)


@dataclass
class Kit:
    store: Store
    elapse: Callable[[float], Awaitable[None]]


async def shorten_ttls(admin: Redis, prefix: str, seconds: float) -> None:
    async for name in admin.scan_iter(match=f"{prefix}:*"):
        remaining = await admin.pttl(name)
        if remaining < 0:
            continue
        if remaining - seconds * 1000 <= 0:
            await admin.delete(name)
        else:
            await admin.pexpire(name, int(remaining - seconds * 1000))


@pytest.fixture(params=["memory", "redis", "tiered"])
async def kit(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis_prefix: str,
    redis_admin: Redis,
) -> AsyncIterator[Kit]:
    clock = FakeClock()
    memory = MemoryStore(1024**2, clock=clock)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    if request.param == "memory":
        yield Kit(memory, advance)
        return
    client = Redis.from_url(redis_url)
    link = RedisLink(client, timeout=2.0, on_error=lambda: None)
    shared = RedisStore(link, RedisKeys(redis_prefix))

    async def elapse(seconds: float) -> None:
        await advance(seconds)
        await shorten_ttls(redis_admin, redis_prefix, seconds)

    if request.param == "redis":
        yield Kit(shared, elapse)
    else:
        yield Kit(TieredStore(memory, shared, local_ttl=1.0, clock=clock), elapse)
    await client.aclose()


async def test_a_key_never_stored_is_a_miss(kit: Kit) -> None:
    assert await kit.store.get(KEY) is None


async def test_a_record_reads_back_with_every_variant(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY, OTHER_SCOPE), ttl=60)
    assert await kit.store.get(KEY) == (ENTRY, OTHER_SCOPE)


async def test_setting_a_key_again_replaces_its_record(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY,), ttl=60)
    await kit.store.set(KEY, (NEWER,), ttl=60)
    assert await kit.store.get(KEY) == (NEWER,)


async def test_keys_are_independent(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY,), ttl=60)
    await kit.store.set(KEY + "&page=2", (NEWER,), ttl=60)
    await kit.store.delete(KEY + "&page=2")
    assert await kit.store.get(KEY) == (ENTRY,)
    assert await kit.store.get(KEY + "&page=2") is None


async def test_a_deleted_key_is_a_miss_and_deleting_twice_is_harmless(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY,), ttl=60)
    await kit.store.delete(KEY)
    await kit.store.delete(KEY)
    assert await kit.store.get(KEY) is None


async def test_a_record_is_kept_for_its_retention_time_then_forgotten(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY,), ttl=30)
    await kit.elapse(29)
    assert await kit.store.get(KEY) == (ENTRY,)
    await kit.elapse(2)
    assert await kit.store.get(KEY) is None


async def test_a_record_without_retention_time_is_not_kept(kit: Kit) -> None:
    await kit.store.set(KEY, (ENTRY,), ttl=60)
    await kit.store.set(KEY, (NEWER,), ttl=0)
    assert await kit.store.get(KEY) is None


async def test_a_reachable_store_is_ready(kit: Kit) -> None:
    assert await kit.store.ready() is True
