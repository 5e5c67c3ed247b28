"""Authenticated purge and the separate admin listener, through real sockets.

Purging goes through the proxy's invalidation and ``Store.delete``: most tests here use the memory
store; the last ones run replicas sharing a real Redis (started by the fixtures), where a purge
through one replica must make the others miss, and a purge Redis cannot confirm must say so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from proxy.stores.base import StoreError
from proxy.stores.memory import MemoryStore
from proxy.tools.replicas import LocalRedis
from tests.conftest import ServeOrigin
from tests.support.rawkit import RunningProxy, serve_proxy
from tests.support.redis_support import JOB, CountingUpstream, Fleet, eventually, get

pytest_plugins = ("tests.support.redis_fixtures",)

PATH = "/v1/audio/transcribe/trans_00000000000000000000000000000002"
TOKEN = "admin-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class CountingOrigin:
    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen[request.method, request.raw_path] += 1
        token = request.headers.get("Authorization", "")
        return web.json_response(
            {"token": token, "path": request.raw_path},
            headers={"Cache-Control": "public, max-age=600"},
        )


@pytest.fixture
async def counting(serve_origin: ServeOrigin) -> tuple[CountingOrigin, str]:
    counting = CountingOrigin()
    return counting, await serve_origin(counting.handle)


async def call(
    method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers or {}) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def cache_status(url: str, headers: dict[str, str] | None = None) -> str:
    _status, response_headers, _body = await call("GET", url, headers)
    return response_headers["Cache-Status"]


def upstream_gets(origin: CountingOrigin, path: str = PATH) -> int:
    return origin.seen["GET", path]


async def test_purging_is_off_without_a_token(counting: tuple[CountingOrigin, str]) -> None:
    counting_origin, url = counting
    async with serve_proxy(Settings(upstream=url)) as proxy:
        await call("GET", proxy.url + PATH)
        assert (await call("PURGE", proxy.url + PATH, ADMIN))[0] == 405
        assert (await call("DELETE", proxy.url + "/_cache" + PATH, ADMIN))[0] == 404
        assert "hit" in await cache_status(proxy.url + PATH)
    assert set(counting_origin.seen) == {("GET", PATH)}


@pytest.fixture
async def proxy(counting: tuple[CountingOrigin, str]) -> AsyncIterator[RunningProxy]:
    async with serve_proxy(Settings(upstream=counting[1], admin_token=TOKEN)) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["none", "wrong", "longer", "shorter", "no scheme", "basic"],
)
async def test_purge_without_the_admin_token_is_401_and_purges_nothing(
    proxy: RunningProxy, counting: tuple[CountingOrigin, str], headers: dict[str, str]
) -> None:
    await call("GET", proxy.url + PATH)
    for method, target in (("PURGE", PATH), ("DELETE", "/_cache" + PATH)):
        status, response_headers, _body = await call(method, proxy.url + target, headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert "hit" in await cache_status(proxy.url + PATH)
    assert ("PURGE", PATH) not in counting[0].seen


@pytest.mark.parametrize("style", ["PURGE", "DELETE /_cache"])
async def test_purge_forgets_the_uri_for_every_credential(
    proxy: RunningProxy, counting: tuple[CountingOrigin, str], style: str
) -> None:
    callers = [{"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}, {}]
    for caller in callers:
        await call("GET", proxy.url + PATH, caller)
    for caller in callers:
        assert "hit" in await cache_status(proxy.url + PATH, caller)
    method, target = ("PURGE", PATH) if style == "PURGE" else ("DELETE", "/_cache" + PATH)
    status, _headers, body = await call(method, proxy.url + target, ADMIN)
    assert status == 200
    assert b'"existed": true' in body
    for caller in callers:
        assert "fwd=uri-miss" in await cache_status(proxy.url + PATH, caller)
    assert upstream_gets(counting[0]) == 6
    assert b'"existed": false' in (await call(method, proxy.url + target + "?other=1", ADMIN))[2]
    assert (method, target) not in counting[0].seen, "a purge was forwarded upstream"


async def test_purge_is_exact_about_the_query(
    proxy: RunningProxy, counting: tuple[CountingOrigin, str]
) -> None:
    await call("GET", proxy.url + PATH + "?a=1")
    await call("GET", proxy.url + PATH)
    assert (await call("PURGE", proxy.url + PATH + "?a=1", ADMIN))[0] == 200
    assert "fwd=uri-miss" in await cache_status(proxy.url + PATH + "?a=1")
    assert "hit" in await cache_status(proxy.url + PATH)


class BreakableStore(MemoryStore):
    """The memory store, failing the way a remote store does when told to."""

    broken = False

    async def delete(self, key: str) -> None:
        if self.broken:
            raise StoreError("unreachable")
        await super().delete(key)


async def test_a_purge_the_store_could_not_carry_out_is_503_not_success(
    counting: tuple[CountingOrigin, str],
) -> None:
    store = BreakableStore(2**20, clock=time.time)
    settings = Settings(upstream=counting[1], admin_token=TOKEN)
    async with serve_proxy(settings, store=store) as proxy:
        await call("GET", proxy.url + PATH)
        store.broken = True
        status, _headers, body = await call("PURGE", proxy.url + PATH, ADMIN)
        assert status == 503 and b"STORE_UNAVAILABLE" in body
        store.broken = False
        assert (await call("PURGE", proxy.url + PATH, ADMIN))[0] == 200


async def test_with_an_admin_port_the_public_port_exposes_no_admin_endpoint(
    counting: tuple[CountingOrigin, str],
) -> None:
    settings = Settings(upstream=counting[1], admin_token=TOKEN, admin_port=0)
    async with serve_proxy(settings) as proxy:
        await call("GET", proxy.url + PATH)
        assert (await call("GET", proxy.url + "/metrics"))[0] == 404
        assert (await call("PURGE", proxy.url + PATH, ADMIN))[0] == 405
        assert (await call("DELETE", proxy.url + "/_cache" + PATH, ADMIN))[0] == 404
        assert (await call("GET", proxy.url + "/healthz"))[0] == 200
        assert "hit" in await cache_status(proxy.url + PATH)

        status, headers, body = await call("GET", proxy.admin_url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"cacheproxy_requests_total" in body
        assert (await call("GET", proxy.admin_url + PATH))[0] == 405, "the admin port proxies"
        assert (await call("PURGE", proxy.admin_url + PATH, {}))[0] == 401
        assert (await call("PURGE", proxy.admin_url + PATH, ADMIN))[0] == 200
        assert "fwd=uri-miss" in await cache_status(proxy.url + PATH)
    assert set(counting[0].seen) == {("GET", PATH)}, "an admin path reached the origin"


def test_the_admin_token_never_appears_in_the_settings_repr() -> None:
    assert TOKEN not in repr(Settings(admin_token=TOKEN, scope_secret="s3cret-scope"))
    assert "s3cret-scope" not in repr(Settings(scope_secret="s3cret-scope"))


# -- with the Redis tier ---------------------------------------------------------------------------


async def test_a_purge_through_one_replica_is_seen_by_the_others(
    fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    # A long local life: only the purge's invalidation can make the other replicas forget.
    async with fleet(3, redis_local_ttl=3600, admin_token=TOKEN) as (first, second, third):
        for replica in (first, second, third):
            await get(http, replica)
        assert upstream.count(JOB) == 1
        async with http.request("PURGE", first.url + JOB, headers=ADMIN) as purged:
            assert purged.status == 200
            assert (await purged.json())["data"]["existed"] is True
        await eventually(
            lambda: second.proxy.store.entries == 0 and third.proxy.store.entries == 0,
            what="the purge to reach the other replicas",
        )
        status, cache_status, _body = await get(http, third)
    assert status == 200 and "fwd=uri-miss" in cache_status
    assert upstream.count(JOB) == 2


async def test_a_purge_redis_cannot_confirm_is_503(
    fleet: Fleet, local_redis: LocalRedis, http: aiohttp.ClientSession
) -> None:
    async with fleet(1, redis_url=local_redis.url, redis_timeout_ms=50, admin_token=TOKEN) as (
        replica,
    ):
        await get(http, replica)
        local_redis.pause()
        try:
            async with http.request("PURGE", replica.url + JOB, headers=ADMIN) as purged:
                status, body = purged.status, await purged.json()
        finally:
            local_redis.resume()
    assert status == 503
    assert body["error"]["code"] == "STORE_UNAVAILABLE"
