"""Hostile clients, each sent for real over a socket: the exact answer, and the proxy serving on.

Covers request smuggling shapes, oversized parts, slow clients, control characters, path tricks
and cache busting. Bytes are written on raw asyncio streams because aiohttp's client refuses to
send most of these.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from tests.conftest import ServeOrigin
from tests.support.rawkit import (
    HOST,
    RawRequest,
    RawUpstream,
    RunningProxy,
    closed_by_peer,
    exchange,
    get_ok,
    read_response,
    response_bytes,
    serve_proxy,
)

LIMITS = {
    "max_request_line": 1024,
    "max_header_bytes": 4096,
    "max_body_bytes": 1000,
    "client_header_timeout": 5.0,
    "client_body_timeout": 5.0,
}


@dataclass
class EchoOrigin:
    """An origin that answers every request with its raw target, cacheable for a minute."""

    seen: Counter[str] = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen[request.raw_path] += 1
        body = await request.read()
        self.bodies.append(body)
        payload = {"raw_path": request.raw_path, "method": request.method, "length": len(body)}
        return web.json_response(payload, headers={"Cache-Control": "public, max-age=60"})


@pytest.fixture
async def origin(serve_origin: ServeOrigin) -> tuple[EchoOrigin, str]:
    echo = EchoOrigin()
    return echo, await serve_origin(echo.handle)


@pytest.fixture
async def proxy(origin: tuple[EchoOrigin, str]) -> AsyncIterator[RunningProxy]:
    async with serve_proxy(Settings(upstream=origin[1], **LIMITS)) as running:  # type: ignore[arg-type]
        yield running


def request(
    target: bytes = b"/", *lines: bytes, body: bytes = b"", method: bytes = b"GET"
) -> bytes:
    head = [method + b" " + target + b" HTTP/1.1", b"Host: proxy.test", *lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def assert_envelope(response_body: bytes, code: str) -> None:
    payload = json.loads(response_body)
    assert payload["success"] is False
    assert payload["error"]["code"] == code


SMUGGLING = {
    "content-length and transfer-encoding": request(
        b"/", b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", method=b"POST"
    ),
    "transfer-encoding then content-length": request(
        b"/", b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n", method=b"POST"
    ),
    "two different content-lengths": request(
        b"/", b"Content-Length: 5", b"Content-Length: 6", body=b"hello!", method=b"POST"
    ),
    "two equal content-lengths": request(
        b"/", b"Content-Length: 5", b"Content-Length: 5", body=b"hello", method=b"POST"
    ),
    "content-length list": request(b"/", b"Content-Length: 5, 5", body=b"hello", method=b"POST"),
    "negative content-length": request(b"/", b"Content-Length: -5", body=b"hello", method=b"POST"),
    "signed content-length": request(b"/", b"Content-Length: +5", body=b"hello", method=b"POST"),
    "hex content-length": request(b"/", b"Content-Length: 0x5", body=b"hello", method=b"POST"),
    "obsolete line folding (space)": request(b"/", b"X-A: a", b" folded"),
    "obsolete line folding (tab)": request(b"/", b"X-A: a", b"\tfolded"),
    "transfer-encoding not ending in chunked": request(
        b"/", b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n", method=b"POST"
    ),
    "unknown transfer-coding": request(
        b"/", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n", method=b"POST"
    ),
    "space before colon": request(
        b"/", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n", method=b"POST"
    ),
    "transfer-encoding in HTTP/1.0": (
        b"POST / HTTP/1.0\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bare CR in a value": request(b"/", b"X-A: a\rb"),
    "bare LF line endings": b"GET / HTTP/1.1\nHost: proxy.test\nX-A: a\n\n",
    "NUL in a value": request(b"/", b"X-A: a\x00b"),
    "control character in a value": request(b"/", b"X-A: a\x01b"),
    "space in a field name": request(b"/", b"X A: b"),
    "invalid chunk size": request(
        b"/", b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n", method=b"POST"
    ),
    "absolute-form target": request(b"http://evil.test/x"),
    "asterisk-form target": request(b"*", method=b"OPTIONS"),
    "authority-form target": request(b"evil.test:443", method=b"CONNECT"),
    "two Host fields": request(b"/", b"Host: evil.test"),
    "HTTP/0.9 request": b"GET /\r\n\r\n",
    "TLS handshake": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_or_malformed_requests_are_refused_before_the_origin(
    raw: bytes, proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    response = await exchange(proxy.port, raw)
    assert response.status in (400, 505)
    assert_envelope(
        response.body, "BAD_REQUEST" if response.status == 400 else "HTTP_VERSION_NOT_SUPPORTED"
    )
    assert b"evil" not in response.body and b"folded" not in response.body
    assert sum(origin[0].seen.values()) == 0
    assert await get_ok(proxy.url) == 200


async def test_a_request_smuggled_behind_conflicting_framing_never_reaches_the_origin(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    raw = request(
        b"/v1/x",
        b"Content-Length: 0",
        b"Transfer-Encoding: chunked",
        body=b"5\r\nhello\r\n0\r\n\r\n" + smuggled,
        method=b"POST",
    )
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(raw)
    first = await read_response(reader)
    rest = await closed_by_peer(reader)
    writer.close()
    assert first.status == 400
    assert rest == b"", "a second response means the smuggled request was parsed"
    assert "/smuggled" not in origin[0].seen
    assert await get_ok(proxy.url, "/v1/x") == 200


async def test_parse_errors_never_log_the_offending_field(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "Bearer sk-live-0123456789abcdef"
    response = await exchange(
        proxy.port, request(b"/", b"Authorization: " + token.encode() + b"\x00")
    )
    assert response.status == 400
    assert "sk-live" not in caplog.text
    assert b"sk-live" not in response.body
    assert "rejected an unparseable request" in caplog.text


async def test_request_target_longer_than_the_limit_is_414(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    at_limit = b"/" + b"a" * (LIMITS["max_request_line"] - 1)  # type: ignore[operator]
    assert (await exchange(proxy.port, request(at_limit, b"Connection: close"))).status == 200
    response = await exchange(proxy.port, request(at_limit + b"a"))
    assert response.status == 414
    assert_envelope(response.body, "URI_TOO_LONG")
    assert origin[0].seen[at_limit.decode()] == 1 and len(origin[0].seen) == 1
    assert await get_ok(proxy.url) == 200


async def test_one_header_field_larger_than_the_budget_is_431(proxy: RunningProxy) -> None:
    big = b"X-Big: " + b"b" * LIMITS["max_header_bytes"]  # type: ignore[operator]
    response = await exchange(proxy.port, request(b"/", big))
    assert response.status == 431
    assert_envelope(response.body, "HEADERS_TOO_LARGE")
    assert await get_ok(proxy.url) == 200


async def test_many_small_fields_over_the_budget_are_431(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    fields = [b"X-F%d: %s" % (i, b"v" * 90) for i in range(50)]  # ~5 KB in total
    response = await exchange(proxy.port, request(b"/", *fields))
    assert response.status == 431
    assert_envelope(response.body, "HEADERS_TOO_LARGE")
    assert sum(origin[0].seen.values()) == 0


async def test_more_fields_than_the_parser_allows_are_431(proxy: RunningProxy) -> None:
    fields = [b"X-%d: v" % i for i in range(200)]
    response = await exchange(proxy.port, request(b"/", *fields))
    assert response.status == 431
    assert await get_ok(proxy.url) == 200


async def test_declared_body_over_the_limit_is_413_without_contacting_the_origin(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    response = await exchange(
        proxy.port, request(b"/v1/upload", b"Content-Length: 1001", method=b"POST")
    )
    assert response.status == 413
    assert_envelope(response.body, "CONTENT_TOO_LARGE")
    assert response.closed
    assert sum(origin[0].seen.values()) == 0
    assert await get_ok(proxy.url) == 200


async def test_chunked_body_growing_over_the_limit_is_cut_off_with_413(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    raw = request(b"/v1/upload", b"Transfer-Encoding: chunked", method=b"POST", body=chunk * 2)
    response = await exchange(proxy.port, raw + b"0\r\n\r\n")
    assert response.status == 413
    assert_envelope(response.body, "CONTENT_TOO_LARGE")
    assert all(len(body) <= 1000 for body in origin[0].bodies), "the origin got a whole body"
    assert await get_ok(proxy.url) == 200


async def test_body_within_the_limit_is_forwarded_whole(
    proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    body = b"y" * 1000
    response = await exchange(
        proxy.port,
        request(
            b"/v1/upload", b"Content-Length: 1000", b"Connection: close", method=b"POST", body=body
        ),
    )
    assert response.status == 200
    assert response.json()["length"] == 1000
    assert origin[0].bodies == [body]


# -- slow clients ----------------------------------------------------------------------------------


@pytest.fixture
async def impatient_proxy(origin: tuple[EchoOrigin, str]) -> AsyncIterator[RunningProxy]:
    settings = Settings(
        upstream=origin[1],
        **{**LIMITS, "client_header_timeout": 0.5, "client_body_timeout": 0.5},  # type: ignore[arg-type]
    )
    async with serve_proxy(settings) as running:
        yield running


async def slowloris(port: int, stop: asyncio.Event) -> bytes:
    """Send a request head one field at a time, never finishing it; return what came back."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: proxy.test\r\n")
    closed = asyncio.ensure_future(closed_by_peer(reader))
    try:
        while not closed.done() and not stop.is_set():
            writer.write(b"X-Keep: waiting\r\n")
            await asyncio.wait([closed], timeout=0.1)
        return await closed
    finally:
        writer.close()


async def test_slowloris_heads_are_cut_off_while_others_are_served(
    impatient_proxy: RunningProxy,
) -> None:
    stop = asyncio.Event()
    attackers = [asyncio.ensure_future(slowloris(impatient_proxy.port, stop)) for _ in range(50)]
    try:
        assert await get_ok(impatient_proxy.url, "/v1/during-attack") == 200
        async with asyncio.timeout(10):
            received = await asyncio.gather(*attackers)
    finally:
        stop.set()
        await asyncio.gather(*attackers, return_exceptions=True)
    assert all(data == b"" for data in received), "a slow head must get no response, only a close"
    assert await get_ok(impatient_proxy.url) == 200


async def test_a_connection_that_sends_nothing_is_closed(impatient_proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, impatient_proxy.port)
    async with asyncio.timeout(10):
        assert await closed_by_peer(reader) == b""
    writer.close()


async def test_a_stalled_body_is_answered_408_and_nothing_is_kept(
    impatient_proxy: RunningProxy, origin: tuple[EchoOrigin, str]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, impatient_proxy.port)
    writer.write(request(b"/v1/upload", b"Content-Length: 100", method=b"POST", body=b"0123456789"))
    assert await get_ok(impatient_proxy.url, "/v1/meanwhile") == 200
    async with asyncio.timeout(10):
        response = await read_response(reader)
    writer.close()
    assert response.status == 408
    assert_envelope(response.body, "REQUEST_TIMEOUT")
    assert response.closed
    assert all(len(body) < 100 for body in origin[0].bodies)


# -- paths -----------------------------------------------------------------------------------------

TRICKY_TARGETS = [
    "/v1/audio/transcribe/trans_a/../trans_b",
    "/v1/audio/transcribe/%74rans_b",
    "/v1/audio/transcribe/trans_b/%2e%2e/trans_a",
    "/v1/audio/transcribe/trans_b%2F..%2Ftrans_a",
    "/v1/audio/./transcribe/trans_b",
    "//v1/audio/transcribe/trans_b",
    "/v1/audio/transcribe/trans_b?q=%00&r=../x",
    "/v1/audio/transcribe/trans_b;x=1",
    "/v1/audio/transcribe/trans_b",
]


async def echo_target(
    request: RawRequest, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(response_bytes(200, request.target, {"Cache-Control": "public, max-age=60"}))
    await writer.drain()


async def test_tricky_paths_are_forwarded_byte_for_byte_and_keyed_apart() -> None:
    async with (
        RawUpstream(echo_target) as raw,
        serve_proxy(Settings(upstream=raw.url)) as proxy,
    ):
        for _ in range(2):
            for target in TRICKY_TARGETS:
                response = await exchange(
                    proxy.port, request(target.encode(), b"Connection: close")
                )
                assert response.status == 200
                assert response.body == target.encode(), "served another target's response"
        assert [r.target.decode() for r in raw.requests] == TRICKY_TARGETS


async def test_cache_busting_with_many_ids_stays_within_the_byte_budget(
    serve_origin: ServeOrigin,
) -> None:
    body = b"t" * 1024

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Cache-Control": "public, max-age=600"})

    url = await serve_origin(handle)
    budget = 64 * 1024
    async with (
        serve_proxy(Settings(upstream=url, cache_max_bytes=budget)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        store = proxy.runtime.store
        semaphore = asyncio.Semaphore(16)
        peak = 0

        async def one(i: int) -> None:
            nonlocal peak
            async with (
                semaphore,
                session.get(f"{proxy.url}/v1/audio/transcribe/trans_{i:08x}") as r,
            ):
                assert r.status == 200
                assert await r.read() == body
            peak = max(peak, store.bytes)

        await asyncio.gather(*(one(i) for i in range(1500)))
        assert 0 < store.bytes <= budget and peak <= budget
        assert 0 < store.entries < 1500
        async with session.get(f"{proxy.url}/metrics") as r:
            text = await r.text()
        assert "cacheproxy_cache_evictions_total" in text
        evictions = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("cacheproxy_cache_evictions_total")
        ]
        assert evictions and evictions[0] > 0
        async with session.get(f"{proxy.url}/v1/audio/transcribe/trans_{1499:08x}") as r:
            assert r.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
