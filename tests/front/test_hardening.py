"""The second round of attacks (issue 11), each over real sockets against a real origin."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import ConfigError, Settings, parse_settings
from tests.conftest import Harness, MakeHarness
from tests.support.process import spawn_proxy
from tests.support.rawkit import RawUpstream, answer, response_bytes, serve_proxy

ROOT = Path(__file__).resolve().parents[2]


# -- finding 7: waiting for a pooled upstream connection is not connecting -------------------------


async def test_misses_queue_for_a_pooled_connection_beyond_the_connect_timeout(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(upstream_max_connections=2, upstream_connect_timeout=0.2)
    paths = [f"/slow/{n}" for n in range(6)]
    for path in paths:
        h.origin.put(path, path)
    h.origin.gate = asyncio.Event()
    requests = [asyncio.create_task(h.get(path)) for path in paths]
    await h.wait_for(lambda: len(h.origin.requests) == 2)
    # The bound under test is a duration: the queued misses must outlive the connect timeout.
    await asyncio.sleep(0.6)
    assert not any(task.done() for task in requests), "a queued miss failed while waiting"
    h.origin.gate.set()
    statuses = [(await task).status for task in requests]
    assert statuses == [200] * 6


async def test_the_pool_wait_has_its_own_bound(make_harness: MakeHarness) -> None:
    h = await make_harness(upstream_max_connections=1, upstream_pool_timeout=0.2)
    h.origin.put("/a", "a")
    h.origin.put("/b", "b")
    h.origin.gate = asyncio.Event()
    first = asyncio.create_task(h.get("/a"))
    await h.wait_for(lambda: len(h.origin.requests) == 1)
    second = await h.get("/b")
    assert second.status == 504
    h.origin.gate.set()
    assert (await first).status == 200


# -- finding 3: configurations that would share silently -------------------------------------------


def test_default_credential_headers_include_the_official_clients() -> None:
    settings = parse_settings([], {})
    assert settings.credential_headers == (
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "proxy-authorization",
    )


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--credential-headers", ""], {}, "--credential-headers"),
        ([], {"PROXY_CREDENTIAL_HEADERS": ""}, "PROXY_CREDENTIAL_HEADERS"),
        ([], {"PROXY_CREDENTIAL_HEADERS": " , "}, "PROXY_CREDENTIAL_HEADERS"),
    ],
)
def test_empty_credential_headers_under_credential_scope_refuse_to_start(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{named}: empty"):
        parse_settings(argv, env)
    assert parse_settings([*argv, "--cache-scope", "shared"], env).credential_headers == ()


def test_empty_credential_headers_stop_the_process_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--credential-headers", ""],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("aitronos-cache-proxy: error: --credential-headers: empty")


async def test_api_key_callers_do_not_share_entries(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.origin.put("/t/1", "secret-of-a", cache_control="public, max-age=60")
    first = await h.get("/t/1", token=None, **{"api-key": "sk-aaaa"})
    assert await first.read() == b"secret-of-a"
    h.origin.put("/t/1", "what-b-may-see", cache_control="public, max-age=60")
    second = await h.get("/t/1", token=None, **{"api-key": "sk-bbbb"})
    assert await second.read() == b"what-b-may-see"
    assert h.origin.count("/t/1") == 2


async def _startup_log(*flags: str) -> list[str]:
    """The proxy's log lines up to the moment it serves (Redis on a port nobody listens on)."""
    process, log = await spawn_proxy(
        "--port", "0", "--upstream", "http://127.0.0.1:9", "--redis-url", "redis://127.0.0.1:9/0",
        *flags,
    )  # fmt: skip
    try:
        await log.wait_for(r"Running on http://")
        return list(log.lines)
    finally:
        process.kill()
        await process.wait()
        await log.close()


async def test_redis_without_a_scope_secret_starts_with_one_warning() -> None:
    lines = await _startup_log()
    warnings = [line for line in lines if "--scope-secret" in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0]
    assert "guessed tokens" in warnings[0] and "PROXY_SCOPE_SECRET" in warnings[0]
    quiet = await _startup_log("--scope-secret", "s3cret-value")
    assert not [line for line in quiet if "--scope-secret" in line or "s3cret" in line]


# -- finding 1: private and cookie-setting answers never cross callers -----------------------------


class CookieOrigin:
    """An origin whose answers set a new session cookie each (unless ``cookie`` is off)."""

    def __init__(
        self, status: int, headers: dict[str, str], body: bytes = b"{}", *, cookie: bool = True
    ) -> None:
        self.status, self.headers, self.body, self.cookie = status, headers, body, cookie
        self.counter = itertools.count(1)
        self.gate: asyncio.Event | None = None
        self.seen: list[web.Request] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        number = next(self.counter)
        if self.gate is not None:
            await self.gate.wait()
        headers = dict(self.headers)
        if self.cookie:
            headers["Set-Cookie"] = f"session=s{number}"
        return web.Response(status=self.status, body=self.body, headers=headers)


async def test_collapsed_callers_of_a_private_cookie_setting_error_each_get_their_own(
    make_harness: MakeHarness,
) -> None:
    origin = CookieOrigin(503, {"Cache-Control": "private"})
    origin.gate = asyncio.Event()
    h = await make_harness(handler=origin.handle)
    callers = [asyncio.create_task(h.get("/t/1", token=None)) for _ in range(3)]
    await h.wait_for(lambda: h.proxy.flights.waiting() == 3)
    origin.gate.set()
    answers = [await task for task in callers]
    cookies = sorted(answer.headers.get("Set-Cookie") for answer in answers)
    assert cookies == ["session=s1", "session=s2", "session=s3"]
    assert len(origin.seen) == 3


async def test_a_retry_after_answer_setting_a_cookie_is_not_replayed(
    make_harness: MakeHarness,
) -> None:
    origin = CookieOrigin(503, {"Retry-After": "600"})
    h = await make_harness(handler=origin.handle)
    first = await h.get("/t/1", token=None)
    second = await h.get("/t/1", token=None)
    assert first.headers["Set-Cookie"] == "session=s1"
    assert second.headers.get("Set-Cookie") == "session=s2"
    assert len(origin.seen) == 2


async def test_shared_scope_never_replays_one_tokens_429_to_another(
    make_harness: MakeHarness,
) -> None:
    origin = CookieOrigin(429, {"Retry-After": "600"}, cookie=False)
    h = await make_harness(handler=origin.handle, cache_scope="shared")
    assert (await h.get("/t/1", token="tok-a")).status == 429
    origin.status = 200
    origin.headers = {"Cache-Control": "public, max-age=60"}
    second = await h.get("/t/1", token="tok-b")
    assert second.status == 200
    assert [r.headers["Authorization"] for r in origin.seen] == ["Bearer tok-a", "Bearer tok-b"]


async def test_a_held_back_answer_is_replayed_without_a_large_body(
    make_harness: MakeHarness,
) -> None:
    big = b'{"success": false, "pad": "' + b"x" * 65_000 + b'"}'
    origin = CookieOrigin(429, {"Retry-After": "600"}, big, cookie=False)
    h = await make_harness(handler=origin.handle)
    first = await h.get("/t/1", token=None)
    assert await first.read() == big
    replayed = await h.get("/t/1", token=None)
    body = await replayed.read()
    assert replayed.status == 429 and replayed.headers["Retry-After"] in ("599", "600")
    assert len(body) <= 4096 and b"UPSTREAM_RETRY_LATER" in body
    assert "Set-Cookie" not in replayed.headers
    assert len(origin.seen) == 1


# -- finding 4: forwarding headers the proxy owns --------------------------------------------------

OWNED = {
    "X-Forwarded-Port": "1",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Scheme": "javascript",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Uri": "/admin",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "gopher",
    "X-Host": "evil.example",
    "X-Original-Host": "evil.example",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-HTTP-Method": "DELETE",
    "X-HTTP-Method-Override": "DELETE",
    "Forwarded": "host=evil.example;proto=https",
}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_forwarding_headers_from_clients_never_reach_the_origin(
    harness: Harness, method: str
) -> None:
    harness.origin.put("/t/1", "ok")
    sent = {
        **OWNED,
        "X-Forwarded-For": "6.6.6.6",
        "Transfer_Encoding": "chunked",
        "X_Custom": "smuggled",
        "X-Kept": "kept",
    }
    response = await harness.client.request(method, "/t/1", headers=sent)
    assert response.status == 200
    received = harness.origin.requests[-1].headers
    for name, value in OWNED.items():
        assert received.get(name) != value, name
    assert received["X-Forwarded-For"] == "127.0.0.1"
    assert "Transfer_Encoding" not in received and "X_Custom" not in received
    assert received["X-Kept"] == "kept"


# -- finding 5: an upstream error never replaces a good stale entry --------------------------------


async def test_a_cacheable_5xx_does_not_replace_the_stale_entry(harness: Harness) -> None:
    h = harness
    resource = h.origin.put("/t/1", "good", cache_control="public, max-age=5", etag=False)
    assert await (await h.get("/t/1")).read() == b"good"
    h.clock.advance(10)
    resource.status, resource.body = 500, b"error"
    resource.cache_control = "public, max-age=60"
    for _ in range(3):
        answer_ = await h.get("/t/1")
        assert await answer_.read() == b"good"
        assert "fwd-status=500" in answer_.headers["Cache-Status"]
    assert h.origin.count("/t/1") == 4
    resource.status, resource.body = 200, b"recovered"
    assert await (await h.get("/t/1")).read() == b"recovered"


# -- interim responses: 103 Early Hints ------------------------------------------------------------


async def test_an_interim_103_is_never_stored_nor_mistaken_for_the_answer() -> None:
    final = response_bytes(200, b"final", {"Cache-Control": "public, max-age=60"})
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    async with (
        RawUpstream(answer(early + final)) as upstream,
        serve_proxy(Settings(upstream=upstream.url)) as proxy,
    ):
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(proxy.url + "/t/1") as response:
                    assert response.status == 200
                    assert await response.read() == b"final"
                    assert "Link" not in response.headers
        assert len(upstream.requests) == 1


def test_compose_requires_a_scope_secret_for_its_redis_replicas() -> None:
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("proxy-1", "proxy-2"):
        environment = services[name]["environment"]
        assert environment["PROXY_REDIS_URL"]
        assert environment["PROXY_SCOPE_SECRET"].startswith("${PROXY_SCOPE_SECRET:?")
