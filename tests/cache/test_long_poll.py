"""Long polling (RFC 7240 ``Prefer: wait``) through real sockets: held, woken, timed out, shed.

The origin is an aiohttp server whose representation the test changes; every wait synchronises
on the proxy's state (the waiting gauge, the origin's request count), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from redis.asyncio import Redis

from proxy.ops.config import Settings
from proxy.tools.replicas import Replica, run_replicas
from tests.conftest import origin_fixture
from tests.support.origin import catch_all
from tests.support.waiting import eventually

pytest_plugins = ("tests.support.redis_fixtures",)

PATH = "/v1/audio/transcribe/job-1"


def tag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


@dataclass
class ScopedOrigin:
    """Each token sees its own document per path (``None``: 404 for that token)."""

    docs: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    max_age: int = 1
    gets: int = 0
    conditional: int = 0
    failing: bool = False

    def set(self, token: str, body: bytes | None, path: str = PATH) -> None:
        self.docs[token, path] = body

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return web.Response(status=204)
        self.gets += 1
        if self.failing:
            return web.json_response({"success": False}, status=500)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if "If-None-Match" in request.headers:
            self.conditional += 1
        headers = {"Cache-Control": f"public, max-age={self.max_age}"}
        body = self.docs.get((token, request.path))
        if body is None:
            return web.json_response({"success": False}, status=404, headers=headers)
        tag = tag_of(body)
        headers["ETag"] = tag
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/json")


scoped = origin_fixture(ScopedOrigin, name="scoped")


def waiting(replica: Replica) -> float:
    return replica.metric("cacheproxy_waiting_requests")


def polls(replica: Replica, outcome: str) -> float:
    return replica.metric("cacheproxy_long_poll_total", {"outcome": outcome})


async def get(
    http: aiohttp.ClientSession, replica: Replica, token: str = "a", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    headers["Authorization"] = f"Bearer {token}"
    async with http.get(replica.url + PATH, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


def poll(
    http: aiohttp.ClientSession, replica: Replica, tag: str, wait: int, token: str = "a"
) -> asyncio.Task[tuple[int, CIMultiDict[str], bytes]]:
    return asyncio.create_task(
        get(http, replica, token, **{"If-None-Match": tag, "Prefer": f"wait={wait}"})
    )


async def hold(
    http: aiohttp.ClientSession, replica: Replica, tag: str, wait: int, held: int = 1
) -> asyncio.Task[tuple[int, CIMultiDict[str], bytes]]:
    """A poll for ``tag`` once the replica holds ``held`` requests (this one among them)."""
    task = poll(http, replica, tag, wait)
    await eventually(lambda: waiting(replica) == held, what=f"{held} request(s) to be held")
    return task


@contextlib.asynccontextmanager
async def polled(
    scoped: tuple[ScopedOrigin, str],
    http: aiohttp.ClientSession,
    body: bytes = b"{}",
    max_age: int = 1,
    **options: Any,
) -> AsyncIterator[tuple[ScopedOrigin, Replica, str]]:
    """One replica in front of ``scoped`` serving ``body`` to token "a", already read once:
    yields the origin, the replica and the ETag a poll would send."""
    origin, upstream = scoped
    origin.max_age = max_age
    origin.set("a", body)
    async with run_replicas(Settings(upstream=upstream, **options), 1) as (proxy,):
        status, headers, _ = await get(http, proxy)
        assert status == 200
        yield origin, proxy, headers["ETag"]


async def test_a_held_request_is_answered_with_the_new_representation_when_it_changes(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http, b'{"status":"processing"}') as (origin, proxy, tag):
        held = await hold(http, proxy, tag, wait=20)
        assert not held.done()
        origin.set("a", b'{"status":"completed"}')
        status, headers, body = await held
        assert status == 200 and body == b'{"status":"completed"}'
        assert headers["Preference-Applied"] == "wait=20"
        assert 'detail="waited"' in headers["Cache-Status"]
        assert polls(proxy, "changed") == 1 and waiting(proxy) == 0


@pytest.mark.parametrize("wait", [600, 1])
async def test_a_held_request_times_out_with_304_and_the_wait_is_not_its_duration(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession, wait: int
) -> None:
    # --max-wait caps what the client asked for (600 s); the answer says what was applied.
    async with polled(scoped, http, max_wait=1) as (_, proxy, tag):
        started = time.perf_counter()
        status, answered, body = await poll(http, proxy, tag, wait=wait)
        assert status == 304 and body == b"" and time.perf_counter() - started >= 1
        assert answered["Preference-Applied"] == "wait=1"
        assert answered["ETag"] == tag
        assert 'detail="waited"' in answered["Cache-Status"]
        assert polls(proxy, "timeout") == 1 and waiting(proxy) == 0
        labels = {"result": "hit"}
        assert proxy.metric("cacheproxy_request_duration_seconds_count", labels) == 1
        # The wait (1 s) is the client's choice; answering took milliseconds.
        assert proxy.metric("cacheproxy_request_duration_seconds_sum", labels) < 0.5


async def test_without_prefer_or_with_another_etag_nothing_changes(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http) as (_, proxy, tag):
        status, plain, _ = await get(http, proxy, **{"If-None-Match": tag})
        assert status == 304 and "Preference-Applied" not in plain
        assert "waited" not in plain["Cache-Status"]
        status, other, body = await poll(http, proxy, '"something-else"', wait=20)
        assert status == 200 and body == b"{}" and "Preference-Applied" not in other
        assert sum(polls(proxy, o) for o in ("changed", "timeout", "shed", "error")) == 0


async def test_a_waiter_wakes_only_on_its_own_scope_and_a_404_ends_its_wait(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    origin, upstream = scoped
    origin.set("a", b'{"owner":"a"}')
    origin.set("b", b'{"owner":"b"}')
    async with run_replicas(Settings(upstream=upstream), 1) as (proxy,):
        _, a, _ = await get(http, proxy, "a")
        _, b, _ = await get(http, proxy, "b")
        held_a = poll(http, proxy, a["ETag"], wait=20, token="a")
        held_b = poll(http, proxy, b["ETag"], wait=20, token="b")
        await eventually(lambda: waiting(proxy) == 2, what="both requests to be held")
        origin.set("b", b'{"owner":"b","v":2}')
        status, _, body = await held_b
        assert status == 200 and body == b'{"owner":"b","v":2}'
        # A's scope has been revalidated since (its own conditional request) and not woken.
        seen = origin.conditional
        await eventually(lambda: origin.conditional >= seen + 2, what="more refreshes")
        assert not held_a.done() and waiting(proxy) == 1
        origin.set("a", None)  # A's token may no longer read the job
        status, headers, _ = await held_a
        assert status == 404 and headers["Preference-Applied"] == "wait=20"


async def test_max_waiters_sheds_requests_past_the_limit_answering_at_once(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http, max_waiters=1) as (_, proxy, tag):
        held = await hold(http, proxy, tag, wait=20)
        status, shed, _ = await poll(http, proxy, tag, wait=20)
        assert status == 304 and "Preference-Applied" not in shed
        assert polls(proxy, "shed") == 1 and not held.done()
        held.cancel()


async def test_a_client_that_disconnects_frees_its_waiter(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http) as (_, proxy, tag):
        host, port = proxy.url.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
            f"If-None-Match: {tag}\r\nPrefer: wait=30\r\n\r\n".encode()
        )
        await writer.drain()
        await eventually(lambda: waiting(proxy) == 1, what="the request to be held")
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: waiting(proxy) == 0, within=5, what="the waiter to be freed")
        assert not proxy.proxy.waits._watches  # its flight's refresher stopped too


Shared = Callable[..., Settings]


@pytest.fixture
def shared(
    scoped: tuple[ScopedOrigin, str], redis_url: str, redis_prefix: str, redis_admin: Redis
) -> Shared:
    """``shared(**options)``: settings for replicas in front of ``scoped`` sharing one Redis
    (the test's keys deleted afterwards, by ``redis_admin``)."""

    def settings(**options: Any) -> Settings:
        return Settings(
            upstream=scoped[1],
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            redis_timeout_ms=1000,
            public_host="proxy.test",
            **options,
        )

    return settings


async def test_a_change_stored_by_one_replica_wakes_the_waiters_on_another(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession, shared: Shared
) -> None:
    origin, _ = scoped
    # A long lifetime: only the other replica's notice can end the wait before its timeout.
    origin.max_age = 600
    origin.set("a", b'{"v":1}')
    # revalidate_window=0: the no-cache below must reach the origin, however soon.
    async with run_replicas(shared(revalidate_window=0), 2) as (first, second):
        _, headers, _ = await get(http, first)
        held = await hold(http, second, headers["ETag"], wait=30)
        origin.set("a", b'{"v":2}')
        status, _, body = await get(http, first, **{"Cache-Control": "no-cache"})
        assert status == 200 and body == b'{"v":2}'
        async with asyncio.timeout(10):  # well before the wait's own end (30 s)
            status, answered, body = await held
        assert status == 200 and body == b'{"v":2}'
        assert polls(second, "changed") == 1
        assert answered["Preference-Applied"] == "wait=30"
        assert origin.gets == 2  # the second replica read what the first stored


async def test_waiters_on_two_replicas_share_one_refresh_per_window(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession, shared: Shared
) -> None:
    origin, _ = scoped
    origin.set("a", b'{"v":1}')
    origin.max_age = 1
    async with run_replicas(shared(), 2) as replicas:
        _, headers, _ = await get(http, replicas[0])
        held = [poll(http, r, headers["ETag"], wait=30) for r in replicas for _ in range(5)]
        await eventually(lambda: all(waiting(r) == 5 for r in replicas), what="10 held")
        loop = asyncio.get_running_loop()
        first, started = origin.gets, loop.time()
        await eventually(lambda: origin.gets >= first + 4, what="four refreshes")
        refreshes, elapsed = origin.gets - first, loop.time() - started
        # One conditional request per window (max-age=1) for both replicas: the lock and the
        # notice let one replica refresh while the other reads what it stored. Each replica on
        # its own would make two per window and reach four refreshes in half the time.
        assert origin.conditional == refreshes
        assert refreshes <= elapsed / origin.max_age + 1.5
        assert not any(task.done() for task in held)
        for task in held:
            task.cancel()


async def test_answers_every_waiter_with_304_when_draining(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http) as (_, proxy, tag):
        held = [await hold(http, proxy, tag, wait=30, held=n) for n in (1, 2, 3)]
        cleanup = asyncio.create_task(proxy.close())
        async with asyncio.timeout(10):  # well before the waits' own end (30 s)
            answers = await asyncio.gather(*held)
        await cleanup
    assert [status for status, _, _ in answers] == [304] * 3
    assert all(h["Preference-Applied"] == "wait=30" for _, h, _ in answers)


async def test_an_invalidation_through_the_proxy_wakes_waiters_at_once(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    # max-age=600: only the invalidation can end the wait before its timeout.
    async with polled(scoped, http, b'{"v":1}', max_age=600) as (origin, proxy, tag):
        held = await hold(http, proxy, tag, wait=30)
        origin.set("a", b'{"v":2}')
        async with http.post(proxy.url + PATH, headers={"Authorization": "Bearer a"}) as posted:
            assert posted.status == 204
        async with asyncio.timeout(10):  # well before the wait's own end (30 s)
            status, _, body = await held
        assert status == 200 and body == b'{"v":2}'


async def test_an_upstream_failure_covered_by_the_stored_response_keeps_the_wait(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http, max_wait=3) as (origin, proxy, tag):
        origin.failing = True
        seen = origin.gets
        held = poll(http, proxy, tag, wait=3)
        await eventually(lambda: origin.gets > seen, what="a refresh that fails")
        assert not held.done()
        status, answered, _ = await held
        # --stale-grace lets the stored response stand in, as a poll would have been served it.
        assert status == 304 and answered["Preference-Applied"] == "wait=3"
        assert polls(proxy, "timeout") == 1 and polls(proxy, "error") == 0


async def test_an_upstream_failure_nothing_covers_ends_the_wait_with_it(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    async with polled(scoped, http, stale_grace=0) as (origin, proxy, tag):
        origin.failing = True
        status, answered, _ = await poll(http, proxy, tag, wait=20)
        assert status == 500 and answered["Preference-Applied"] == "wait=20"
        assert 'detail="waited"' in answered["Cache-Status"]
        assert polls(proxy, "error") == 1


async def test_a_change_to_a_response_too_large_to_store_is_streamed_to_the_waiter(
    scoped: tuple[ScopedOrigin, str], http: aiohttp.ClientSession
) -> None:
    large = b'{"v":"' + b"x" * 8192 + b'"}'
    async with polled(scoped, http, b'{"v":1}', max_entry_bytes=4096) as (origin, proxy, tag):
        held = await hold(http, proxy, tag, wait=20)
        origin.set("a", large)
        status, _, body = await held
        assert status == 200 and body == large
        assert polls(proxy, "changed") == 1


async def test_an_unreachable_origin_ends_the_wait_with_502_and_the_wait_is_not_its_duration(
    http: aiohttp.ClientSession,
) -> None:
    origin = ScopedOrigin()
    server = TestServer(catch_all(origin.handle), host="127.0.0.1")
    await server.start_server()
    upstream = str(server.make_url("")).rstrip("/")
    async with polled((origin, upstream), http, stale_grace=0) as (_, proxy, tag):
        held = await hold(http, proxy, tag, wait=20)
        await server.close()  # the refresh after max-age=1 finds nobody listening
        async with asyncio.timeout(10):
            status, answered, body = await held
        assert status == 502 and b"UPSTREAM_UNAVAILABLE" in body
        assert 'detail="refused"' in answered["Cache-Status"]
        assert polls(proxy, "error") == 1
        labels = {"result": "error"}
        assert proxy.metric("cacheproxy_request_duration_seconds_count", labels) == 1
        assert proxy.metric("cacheproxy_request_duration_seconds_sum", labels) < 0.5
