"""Several proxy replicas sharing one Redis in front of one upstream, through real sockets."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from proxy.core.codec import decode_record
from proxy.front.server import FrontServer
from proxy.ops.config import Settings
from proxy.runtime import Runtime
from proxy.stores.coordination import Notice
from proxy.stores.keys import RedisKeys
from proxy.stores.keys import key_digest as digest
from proxy.stores.redis_coordination import parse_notice
from tests.support.redis_support import (
    JOB,
    CountingUpstream,
    Fleet,
    assert_fetched_again,
    collapsed_gets,
    eventually,
    get,
    replica_process,
)

pytest_plugins = ("tests.support.redis_fixtures",)


async def test_a_second_replica_hits_what_the_first_stored(
    fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    async with fleet(2) as (first, second):
        status, cache_status, body = await get(http, first)
        assert status == 200 and "fwd=uri-miss" in cache_status and "stored" in cache_status
        status, cache_status, again = await get(http, second)
    assert status == 200 and "; hit" in cache_status
    assert again == body
    assert upstream.count(JOB) == 1


async def _forwarded_hosts(
    upstream: CountingUpstream, origin: TestServer, redis_url: str, redis_prefix: str, *options: str
) -> tuple[list[str], list[str | None]]:
    """Cache-Status of a GET through each of two ``python -m proxy`` replicas, each reached
    under its own host name and port, and the X-Forwarded-Host of each upstream request."""
    seen: list[str | None] = []

    async def note(request: web.Request) -> None:
        seen.append(request.headers.get("X-Forwarded-Host"))

    upstream.on_request = note
    base = str(origin.make_url("")).rstrip("/")
    shared = ("--redis-url", redis_url, "--redis-prefix", redis_prefix, *options)
    statuses = []
    async with (
        replica_process(base, *shared) as first,
        replica_process(base, *shared) as second,
        aiohttp.ClientSession() as http,
    ):
        for url, host in ((first, "one.example"), (second, "two.example:8443")):
            async with http.get(url + JOB, headers={"Host": host}) as response:
                assert response.status == 200
                statuses.append(response.headers["Cache-Status"])
    return statuses, seen


async def test_replicas_started_with_only_the_redis_url_share_whatever_host_they_are_reached_by(
    upstream: CountingUpstream, origin: TestServer, redis_url: str, redis_prefix: str
) -> None:
    statuses, seen = await _forwarded_hosts(upstream, origin, redis_url, redis_prefix)
    assert "fwd=uri-miss" in statuses[0] and "; hit" in statuses[1]
    assert seen == [None]


async def test_with_forward_host_each_host_is_forwarded_and_keyed(
    upstream: CountingUpstream, origin: TestServer, redis_url: str, redis_prefix: str
) -> None:
    statuses, seen = await _forwarded_hosts(
        upstream, origin, redis_url, redis_prefix, "--forward-host", "true"
    )
    assert all("fwd=uri-miss" in status for status in statuses)
    assert seen == ["one.example", "two.example:8443"]


@pytest.mark.parametrize("replicas", [2, 3])
async def test_concurrent_misses_across_replicas_make_one_upstream_request(
    replicas: int, fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.gate = asyncio.Event()
    async with fleet(replicas) as proxies:
        answers = await collapsed_gets(http, proxies, upstream)
        coalesced = sum(p.metric("cacheproxy_coalesced_requests_total") for p in proxies)
    assert upstream.count(JOB) == 1
    assert [status for status, _, _ in answers] == [200] * len(answers)
    assert len({repr(body) for _, _, body in answers}) == 1
    assert sum("collapsed" in cache_status for _, cache_status, _ in answers) == len(answers) - 1
    assert coalesced == len(answers) - 1


async def test_a_delete_through_one_replica_is_seen_by_the_others(
    fleet: Fleet,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_holds: Callable[[str], Awaitable[bool]],
) -> None:
    # A long local life: only the invalidation message can make the other replica forget.
    async with fleet(3, redis_local_ttl=3600) as (first, second, third):
        for proxy in (first, second, third):
            await get(http, proxy)
        assert all(p.proxy.store.entries == 1 for p in (second, third))
        async with http.delete(first.url + JOB) as deleted:
            assert deleted.status == 204
        assert not await redis_holds(JOB)
        await eventually(
            lambda: second.proxy.store.entries == 0 and third.proxy.store.entries == 0,
            what="the invalidation to reach the other replicas",
        )
        await assert_fetched_again(http, second, upstream)


async def test_a_poll_in_flight_on_one_replica_does_not_undo_a_delete_through_another(
    fleet: Fleet,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_holds: Callable[[str], Awaitable[bool]],
) -> None:
    upstream.gate = asyncio.Event()
    async with fleet(2) as (first, second):
        poll = asyncio.create_task(get(http, second))
        await upstream.arrived.wait()
        async with http.delete(first.url + JOB) as deleted:
            assert deleted.status == 204
        await eventually(
            lambda: second.proxy.store.deleted_at(JOB) is not None,  # type: ignore[attr-defined]
            what="the delete to reach the polling replica",
        )
        upstream.gate.set()
        status, _, before = await poll
        stored = await redis_holds(JOB)
        _, cache_status, after = await get(http, first)
    assert status == 200 and before["version"] == 0
    assert not stored
    assert "fwd=uri-miss" in cache_status and after["version"] == 1


async def test_a_write_by_one_replica_replaces_the_others_local_copy(
    fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    # No window: the no-cache below must reach the origin however soon after the store.
    async with fleet(2, redis_local_ttl=3600, revalidate_window=0) as (first, second):
        await get(http, first)
        await get(http, second)
        upstream.versions[JOB] = 7
        async with http.get(first.url + JOB, headers={"Cache-Control": "no-cache"}) as response:
            assert (await response.json())["version"] == 7
        await eventually(lambda: second.proxy.store.entries == 0, what="the local copy to go")
        _, cache_status, body = await get(http, second)
    assert "; hit" in cache_status and body["version"] == 7


async def test_an_unreadable_entry_is_a_miss_and_is_then_overwritten(
    fleet: Fleet,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_admin: Redis,
    redis_prefix: str,
) -> None:
    name = RedisKeys(redis_prefix).record(JOB)
    other = "/v1/audio/transcribe/job-2"
    await redis_admin.set(name, b"\x80\x04\x95 not ours")
    await redis_admin.set(RedisKeys(redis_prefix).record(other), b"acp\x09 a future format")
    async with fleet(1) as (proxy,):
        status, cache_status, _ = await get(http, proxy)
        assert status == 200 and "fwd=uri-miss" in cache_status
        status, _, _ = await get(http, proxy, other)
        assert status == 200
        unreadable = proxy.metric("cacheproxy_store_unreadable_entries_total", {"backend": "redis"})
        errors = proxy.metric("cacheproxy_store_errors_total", {"backend": "redis"})
    # Each request reads the entry when it looks up and again when it merges its variant in.
    assert unreadable >= 2 and errors == 0
    assert upstream.count(JOB) == 1
    (entry,) = decode_record(await redis_admin.get(name))
    assert entry.status == 200 and b"job-1" in entry.body
    assert 0 < await redis_admin.pttl(name) <= 60_000 + 3_600_000 + 300_000


async def test_garbage_on_the_channels_is_ignored_and_the_subscription_survives(
    fleet: Fleet, http: aiohttp.ClientSession, redis_admin: Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    async with fleet(1, redis_local_ttl=3600) as (proxy,):
        await get(http, proxy)
        assert proxy.proxy.store.entries == 1
        for garbage in (b"", b"\xff\xfe", b"someone", b"a b c d e"):
            await redis_admin.publish(keys.invalidate, garbage)
            await redis_admin.publish(keys.done("0" * 64), garbage)
        # A well-formed invalidation from "another replica", after the garbage: once it has
        # taken effect, the listener has read past everything before it.
        await redis_admin.publish(keys.invalidate, f"other {digest(JOB)} del".encode())
        await eventually(lambda: proxy.proxy.store.entries == 0, what="the invalidation")
        status, cache_status, _ = await get(http, proxy)
        gauge = proxy.metric("cacheproxy_store_degraded", {"backend": "redis"})
    assert status == 200 and "; hit" in cache_status  # read back from Redis, which still has it
    assert gauge == 0


@pytest.mark.parametrize(
    "payload", [b"", b"[]", b'"t"', b"{}", b'{"t": "yesterday"}', b'{"t": true}', b"\xff"]
)
def test_a_notice_that_cannot_be_read_says_nothing_was_stored(payload: bytes) -> None:
    assert parse_notice(payload) == Notice()


def test_a_notice_names_the_stored_response() -> None:
    assert parse_notice(b'{"t": 1800000000.5, "r": true}') == Notice(1800000000.5, True)


async def test_a_replica_that_wins_the_lock_late_serves_what_redis_already_holds(
    fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    """The race behind 1.05 requests per window at 1000 pollers on three replicas (bench).

    A replica decides from its local copy that the entry is stale, but before it takes the lock
    another replica has already revalidated and released it, and the invalidation message has
    not arrived yet. Winning the lock must not mean fetching again: Redis already has it.
    """

    async with fleet(2, redis_local_ttl=3600) as (first, second):
        status, _, fresh = await get(http, first)
        assert status == 200
        store = second.runtime.store
        (entry,) = await store.get(JOB) or ()
        old = entry.replace(
            request_time=entry.request_time - 120, response_time=entry.response_time - 120
        )
        store.front.set_nowait(digest(JOB), (old,), 3600)  # type: ignore[attr-defined]
        status, cache_status, body = await get(http, second)
    assert status == 200
    assert body == fresh
    assert "collapsed" in cache_status
    assert upstream.count(JOB) == 1


async def test_derived_codings_reach_the_other_replicas_through_redis(
    fleet: Fleet, upstream: CountingUpstream, redis_admin: Redis, redis_prefix: str
) -> None:
    """The record (format version 3) carries the coding stored by the replica that stored
    it: another replica serves gzip from it without the origin and without recompressing."""
    upstream.padding = 4000
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as raw,
        fleet(2) as (first, second),
    ):
        async with raw.get(first.url + JOB, headers={"Accept-Encoding": ""}) as response:
            identity = await response.read()
            assert "Content-Encoding" not in response.headers
        async with raw.get(second.url + JOB, headers={"Accept-Encoding": "gzip"}) as response:
            body = await response.read()
            assert "; hit" in response.headers["Cache-Status"]
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["ETag"] == 'W/"v0-gzip"'
            assert "Accept-Encoding" in response.headers["Vary"]
    assert gzip.decompress(body) == identity
    assert len(body) * 3 < len(identity)
    assert upstream.count(JOB) == 1
    stored = await redis_admin.get(RedisKeys(redis_prefix).record(JOB))
    (entry,) = decode_record(stored)
    assert entry.coding == "gzip"  # stored once, gzip; identity decoded by each replica


@asynccontextmanager
async def _front_replicas(settings: Settings, count: int) -> AsyncIterator[list[FrontServer]]:
    """``count`` replicas on the proxy's own front (the one ``python -m proxy`` serves)."""
    servers: list[FrontServer] = []
    try:
        for _ in range(count):
            runtime = Runtime(settings, registry=CollectorRegistry())
            server = FrontServer(runtime, access=None)
            servers.append(server)
            await runtime.start()
            await server.start("127.0.0.1", 0)
        yield servers
    finally:
        for server in reversed(servers):
            await server.close(drain_seconds=0.1)
            await server.runtime.close()


async def test_a_hit_on_a_redis_replica_takes_the_fast_path_and_still_sees_another_replicas_delete(
    origin: TestServer,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_url: str,
    redis_prefix: str,
) -> None:
    settings = Settings(
        upstream=str(origin.make_url("")).rstrip("/"),
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        redis_timeout_ms=1000,
        redis_local_ttl=3600,  # only the invalidation notice can make the second one forget
    )
    async with _front_replicas(settings, 2) as (first, second):
        urls = [f"http://127.0.0.1:{server.port}" for server in (first, second)]
        status, cache_status, body = await get(http, urls[0])
        assert status == 200 and "fwd=uri-miss" in cache_status
        for _ in range(2):
            status, cache_status, again = await get(http, urls[1])
            assert status == 200 and "; hit" in cache_status and again == body
        fast = second.front.fast if second.front is not None else None
        assert fast is not None, "no fast path on a Redis-backed replica"
        assert fast.memo, "the hit on the Redis-backed replica took the full policy"
        async with http.delete(urls[0] + JOB) as deleted:
            assert deleted.status == 204
        store = second.runtime.store
        await eventually(lambda: store.entries == 0, what="the invalidation to reach the second")
        status, cache_status, body = await get(http, urls[1])
    assert status == 200 and "fwd=uri-miss" in cache_status
    assert body["version"] == 1
    assert upstream.count(JOB) == 2
