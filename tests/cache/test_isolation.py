"""Cache poisoning and leaks: what one caller sends never changes what another receives.

The origins here are deliberately naive: they reflect request headers into cacheable bodies,
route on ``X-Original-URL``, hand out cookies and answer every token with the same ETag, so a
proxy mistake shows up as a wrong body in another caller's hands.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from tests.conftest import ServeOrigin
from tests.support.rawkit import RunningProxy, serve_proxy

PATH = "/v1/audio/transcribe/trans_00000000000000000000000000000001"
REFLECTED = (
    "host",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
)
POISON = {
    "X-Forwarded-Host": "evil.test",
    "X-Forwarded-Proto": "gopher",
    "X-Original-URL": "/admin/evil",
    "X-Rewrite-URL": "/admin/evil",
    "Forwarded": "host=evil.test;proto=gopher",
}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class NaiveOrigin:
    """Reflects routing headers, honours X-Original-URL, and answers per bearer token."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expected_waiters = 0
        self.not_modified_cookie: str | None = None
        self.fail_with: int | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "") or request.headers.get("X-Api-Key", "")
        self.hits[token] += 1
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="down")
        if self.gate is not None:
            self.waiting += 1
            if self.waiting >= self.expected_waiters:
                self.all_waiting.set()
            await self.gate.wait()
        path = request.headers.get("X-Original-URL", request.path)
        etag = '"same-for-everyone"'
        headers = {"Cache-Control": "public, max-age=60", "ETag": etag}
        if request.query.get("stale") == "1":
            headers["Cache-Control"] = "public, max-age=0"
        if self.not_modified_cookie and request.headers.get("If-None-Match") == etag:
            return web.Response(
                status=304, headers={**headers, "Set-Cookie": self.not_modified_cookie}
            )
        if request.query.get("cookie") == "1":
            headers["Set-Cookie"] = f"session=for-{token or 'anonymous'}-{self.hits[token]}"
        reflected = {name: request.headers.get(name) for name in REFLECTED}
        body = {"path": path, "token": token, "reflected": reflected}
        return web.json_response(body, headers=headers)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def naive(serve_origin: ServeOrigin) -> tuple[NaiveOrigin, str]:
    origin = NaiveOrigin()
    return origin, await serve_origin(origin.handle)


@pytest.fixture
async def proxy(naive: tuple[NaiveOrigin, str], clock: Clock) -> AsyncIterator[RunningProxy]:
    async with serve_proxy(Settings(upstream=naive[1]), clock=clock) as running:
        yield running


async def get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers or {}) as response,
    ):
        body = await response.read()
        payload = json.loads(body) if body else {}
        return response.status, dict(response.headers), payload


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


# -- unkeyed headers -------------------------------------------------------------------------------


async def test_routing_headers_from_a_client_never_reach_the_origin_or_the_cache(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    status, _headers, attacker = await get(proxy.url + PATH, POISON)
    assert status == 200
    assert attacker["path"] == PATH
    assert "evil" not in json.dumps(attacker) and "gopher" not in json.dumps(attacker)
    status, headers, victim = await get(proxy.url + PATH)
    assert status == 200
    assert headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
    assert victim == attacker
    assert naive[0].hits[""] == 1


@pytest.fixture
async def host_forwarding_proxy(
    naive: tuple[NaiveOrigin, str], clock: Clock
) -> AsyncIterator[RunningProxy]:
    settings = Settings(upstream=naive[1], forward_host=True)
    async with serve_proxy(settings, clock=clock) as running:
        yield running


async def test_a_forged_host_reaches_the_origin_in_no_header_by_default(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    _status, _headers, attacker = await get(proxy.url + PATH, {"Host": "evil.test"})
    assert "evil" not in json.dumps(attacker)
    assert attacker["reflected"]["x-forwarded-host"] is None


async def test_with_forward_host_a_forged_host_only_shapes_its_own_variant(
    host_forwarding_proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    proxy = host_forwarding_proxy
    _status, _headers, attacker = await get(proxy.url + PATH, {"Host": "evil.test"})
    assert attacker["reflected"]["x-forwarded-host"] == "evil.test"
    status, headers, victim = await get(proxy.url + PATH)
    assert status == 200
    assert headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")
    assert "evil" not in json.dumps(victim)
    assert naive[0].hits[""] == 2


async def test_x_original_url_cannot_store_another_resource_under_this_key(
    proxy: RunningProxy,
) -> None:
    _status, _headers, first = await get(proxy.url + PATH, {"X-Original-URL": "/admin/evil"})
    assert first["path"] == PATH


async def test_the_host_a_client_names_is_forwarded_only_as_x_forwarded_host(
    host_forwarding_proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    proxy = host_forwarding_proxy
    _status, _headers, body = await get(proxy.url + PATH, {"Host": "api.example:8080"})
    reflected = body["reflected"]
    assert isinstance(reflected, dict)
    assert reflected["host"] == naive[1].removeprefix("http://")
    assert reflected["x-forwarded-host"] == "api.example:8080"
    assert reflected["x-forwarded-proto"] == "http"


# -- cookies ---------------------------------------------------------------------------------------


async def test_responses_setting_cookies_are_never_shared(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    _s, first, _b = await get(proxy.url + PATH + "?cookie=1")
    _s, second, _b = await get(proxy.url + PATH + "?cookie=1")
    assert first["Set-Cookie"] == "session=for-anonymous-1"
    assert second["Set-Cookie"] == "session=for-anonymous-2"
    assert "stored" not in first["Cache-Status"]
    assert naive[0].hits[""] == 2


async def test_concurrent_callers_never_share_a_cookie_through_coalescing(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    origin = naive[0]
    origin.gate = asyncio.Event()
    origin.expected_waiters = 1
    calls = [asyncio.ensure_future(get(proxy.url + PATH + "?cookie=1")) for _ in range(5)]
    await origin.all_waiting.wait()
    origin.gate.set()
    answers = await asyncio.gather(*calls)
    cookies = [headers.get("Set-Cookie") for _s, headers, _b in answers]
    assert all(cookie is not None for cookie in cookies)
    assert len(set(cookies)) == 5, f"a cookie reached two callers: {cookies}"


async def test_a_304_with_a_cookie_is_not_merged_into_the_shared_entry(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    origin = naive[0]
    _s, first, _b = await get(proxy.url + PATH + "?stale=1")
    assert "Set-Cookie" not in first
    origin.not_modified_cookie = "session=minted-during-revalidation"
    _s, second, _b = await get(proxy.url + PATH + "?stale=1")
    origin.not_modified_cookie = None
    _s, third, _b = await get(proxy.url + PATH + "?stale=1")
    assert "minted" not in second.get("Set-Cookie", "") + third.get("Set-Cookie", "")
    assert origin.hits[""] == 4, "the 304 with a cookie was not replaced by a full fetch"


# -- credentials -----------------------------------------------------------------------------------

CALLERS = [bearer("alice"), bearer("bob"), {"X-Api-Key": "carol-key"}, {}]


def owner(headers: dict[str, str]) -> str:
    return headers.get("Authorization", "") or headers.get("X-Api-Key", "")


async def test_each_credential_only_ever_receives_its_own_response(proxy: RunningProxy) -> None:
    for _ in range(3):
        for caller in CALLERS:
            status, _headers, body = await get(proxy.url + PATH, caller)
            assert status == 200
            assert body["token"] == owner(caller)


async def test_concurrent_requests_with_different_credentials_never_collapse(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str]
) -> None:
    origin = naive[0]
    origin.gate = asyncio.Event()
    origin.expected_waiters = len(CALLERS)
    calls = [
        asyncio.ensure_future(get(proxy.url + PATH, caller)) for caller in CALLERS for _ in range(5)
    ]
    await origin.all_waiting.wait()
    origin.gate.set()
    answers = await asyncio.gather(*calls)
    for index, (status, _headers, body) in enumerate(answers):
        assert status == 200
        assert body["token"] == owner(CALLERS[index // 5])
    assert all(origin.hits[owner(caller)] == 1 for caller in CALLERS)


async def test_revalidation_never_lends_one_credentials_entry_to_another(
    proxy: RunningProxy, naive: tuple[NaiveOrigin, str], clock: Clock
) -> None:
    """Every token gets the same ETag; a stale entry of alice's must not validate bob's fetch."""
    assert (await get(proxy.url + PATH, CALLERS[0]))[2]["token"] == owner(CALLERS[0])
    clock.now += 120
    for caller in CALLERS[1:]:
        status, _headers, body = await get(
            proxy.url + PATH, {**caller, "If-None-Match": '"same-for-everyone"'}
        )
        assert status in (200, 304)
        if status == 200:
            assert body["token"] == owner(caller)
    status, _headers, body = await get(proxy.url + PATH, CALLERS[1])
    assert body["token"] == owner(CALLERS[1])


async def test_a_stale_entry_of_one_credential_never_covers_anothers_upstream_error(
    naive: tuple[NaiveOrigin, str], clock: Clock
) -> None:
    async with serve_proxy(Settings(upstream=naive[1], stale_grace=3600), clock=clock) as proxy:
        assert (await get(proxy.url + PATH, bearer("alice")))[2]["token"] == "Bearer alice"
        clock.now += 120
        naive[0].fail_with = 503
        status, _headers, body = await get(proxy.url + PATH, bearer("alice"))
        assert (status, body["token"]) == (200, "Bearer alice"), "stale-if-error is not active"
        for caller in CALLERS[1:]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(proxy.url + PATH, headers=caller) as response,
            ):
                assert response.status == 503
                assert await response.read() == b"down"


async def test_shared_scope_is_the_only_way_to_share(naive: tuple[NaiveOrigin, str]) -> None:
    async with serve_proxy(Settings(upstream=naive[1], cache_scope="shared")) as proxy:
        assert (await get(proxy.url + PATH, bearer("alice")))[2]["token"] == "Bearer alice"
        _status, headers, body = await get(proxy.url + PATH, bearer("bob"))
        assert body["token"] == "Bearer alice"
        assert headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


# -- the shared-scope warning ----------------------------------------------------------------------


def start_proxy_process(*arguments: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``python -m proxy`` on a free port; returns it and its log lines up to "Running on"."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--port", "0", *arguments],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while not seen or "Running on" not in seen[-1]:
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            process.kill()
            raise AssertionError(f"no 'Running on' line: {seen}") from None
        if not line:
            raise AssertionError(f"the proxy exited: {seen}")
        seen.append(line)
    return process, seen


@pytest.mark.parametrize(("scope", "warned"), [("shared", True), ("credential", False)])
def test_shared_scope_is_announced_as_a_warning_at_start_up(scope: str, warned: bool) -> None:
    process, lines = start_proxy_process("--cache-scope", scope, "--upstream", "http://127.0.0.1:9")
    try:
        assert any("Running on" in line for line in lines), lines
        warnings = [line for line in lines if "WARNING" in line and "shared" in line]
        assert bool(warnings) is warned, lines
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert process.returncode == 0
