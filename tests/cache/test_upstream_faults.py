"""Faulty origins: every fault ends in a clear 502/504 (or a stale entry within grace), nothing
truncated is stored, and the proxy keeps serving.

Byte-level faults (garbage, huge heads, wrong lengths, resets) come from a raw asyncio origin;
the others from an aiohttp origin. Time is a hand-stepped clock wherever freshness matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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
    answer,
    response_bytes,
    serve_proxy,
)

PATH = "/v1/audio/transcribe/trans_0123456789abcdef"
GOOD = response_bytes(200, b'{"status": "completed"}', {"Cache-Control": "public, max-age=60"})


class Clock:
    """Starts at the real time, because the origins stamp a real ``Date``."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def fetch(url: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, dict(response.headers), await response.read()


def envelope_code(body: bytes) -> str:
    import json

    payload = json.loads(body)
    assert payload["success"] is False
    return str(payload["error"]["code"])


@contextlib.asynccontextmanager
async def raw_origin(
    behaviour: Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    **settings: object,
) -> AsyncIterator[tuple[RawUpstream, RunningProxy]]:
    async with (
        RawUpstream(behaviour) as upstream,
        serve_proxy(Settings(upstream=upstream.url, **settings)) as proxy,  # type: ignore[arg-type]
    ):
        yield upstream, proxy


def reset_after(
    raw: bytes,
) -> Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Write ``raw`` then reset the connection (RST, not FIN)."""

    async def behave(
        request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(raw)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    return behave


async def test_connection_refused_is_a_502() -> None:
    with socket.socket() as placeholder:
        placeholder.bind((HOST, 0))
        port = placeholder.getsockname()[1]
    async with serve_proxy(Settings(upstream=f"http://{HOST}:{port}")) as proxy:
        status, _headers, body = await fetch(proxy.url + PATH)
        assert status == 502
        assert envelope_code(body) == "UPSTREAM_UNAVAILABLE"
        assert (await fetch(proxy.url + "/healthz"))[0] == 200


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            reset_after(
                response_bytes(
                    200, b"x" * 100, {"Cache-Control": "public, max-age=60"}, length=1000
                )
            ),
            id="reset mid-body",
        ),
        pytest.param(
            answer(
                response_bytes(
                    200, b"x" * 100, {"Cache-Control": "public, max-age=60"}, length=1000
                ),
                close=True,
            ),
            id="closed mid-body",
        ),
    ],
)
async def test_a_body_cut_short_is_a_502_and_never_stored(
    fault: Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async with raw_origin(fault) as (upstream, proxy):
        status, _headers, body = await fetch(proxy.url + PATH)
        assert status == 502
        assert envelope_code(body) == "UPSTREAM_INVALID_RESPONSE"
        upstream.behaviour = answer(GOOD)
        status, headers, body = await fetch(proxy.url + PATH)
        assert status == 200 and body == b'{"status": "completed"}'
        assert "stored" in headers["Cache-Status"], "the second fetch went upstream"
        assert len(upstream.requests) == 2


async def test_a_streamed_body_cut_short_aborts_the_client_connection() -> None:
    big = response_bytes(200, b"x" * 70_000, {"Cache-Control": "no-store"}, length=200_000)
    async with raw_origin(reset_after(big)) as (upstream, proxy):
        async with aiohttp.ClientSession() as session, session.get(proxy.url + PATH) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        upstream.behaviour = answer(GOOD)
        assert (await fetch(proxy.url + PATH))[0] == 200


async def test_a_hanging_origin_is_a_504() -> None:
    async def hang(
        request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await asyncio.Event().wait()

    async with raw_origin(hang, upstream_timeout=0.3) as (_upstream, proxy):
        status, _headers, body = await fetch(proxy.url + PATH)
        assert status == 504
        assert envelope_code(body) == "UPSTREAM_TIMEOUT"
        assert (await fetch(proxy.url + "/healthz"))[0] == 200


async def test_an_origin_stalling_mid_body_is_a_504_and_nothing_is_stored() -> None:
    async def stall(
        request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            response_bytes(200, b"x" * 10, {"Cache-Control": "public, max-age=60"}, length=100)
        )
        await writer.drain()
        await asyncio.Event().wait()

    async with raw_origin(stall, upstream_timeout=0.3) as (upstream, proxy):
        status, _headers, body = await fetch(proxy.url + PATH)
        assert status == 504
        assert envelope_code(body) == "UPSTREAM_TIMEOUT"
        upstream.behaviour = answer(GOOD)
        status, headers, _body = await fetch(proxy.url + PATH)
        assert status == 200 and "stored" in headers["Cache-Status"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HELLO THERE\r\n\r\n", id="not HTTP"),
        pytest.param(b"\x00\xff\x13garbage" * 10, id="binary"),
        pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", id="non-numeric status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="two lengths"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length and chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 20_000 + b"\r\nContent-Length: 2\r\n\r\nok",
            id="huge field",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(300))
            + b"Content-Length: 2\r\n\r\nok",
            id="too many fields",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            id="bad chunk",
        ),
    ],
)
async def test_garbage_from_the_origin_is_a_502_and_the_proxy_serves_on(raw: bytes) -> None:
    async with raw_origin(answer(raw, close=True)) as (upstream, proxy):
        status, _headers, body = await fetch(proxy.url + PATH)
        assert status == 502
        assert envelope_code(body) in ("UPSTREAM_INVALID_RESPONSE", "UPSTREAM_UNAVAILABLE")
        upstream.behaviour = answer(GOOD)
        status, _headers, body = await fetch(proxy.url + PATH)
        assert (status, body) == (200, b'{"status": "completed"}')


async def test_bytes_past_content_length_never_become_another_response() -> None:
    """Response-queue poisoning: trailing bytes must not answer the next request."""
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: public, max-age=600\r\n\r\nEVIL"

    async def overlong(
        request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if request.target.endswith(b"/first"):
            writer.write(response_bytes(200, b"ok", {"Cache-Control": "public, max-age=60"}) + evil)
        else:
            writer.write(
                response_bytes(
                    200, b"real:" + request.target, {"Cache-Control": "public, max-age=60"}
                )
            )
        await writer.drain()

    async with raw_origin(overlong) as (upstream, proxy):
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + PATH + "/first") as response:
                assert await response.read() == b"ok"
            for i in range(3):
                async with session.get(f"{proxy.url}{PATH}/next{i}") as response:
                    body = await response.read()
                    assert (response.status, body) == (200, f"real:{PATH}/next{i}".encode())
            for i in range(3):
                async with session.get(f"{proxy.url}{PATH}/next{i}") as response:
                    assert await response.read() != b"EVIL"
        assert upstream.connections >= 2, "the connection with trailing bytes was reused"


@pytest.mark.parametrize(
    "directive",
    [
        "max-age=-1",
        "max-age=abc",
        "max-age=1.5",
        'max-age="',
        "max-age=0, max-age=600",
    ],
)
async def test_invalid_max_age_is_never_served_as_fresh(directive: str) -> None:
    headers = {"Cache-Control": f"public, {directive}", "ETag": '"v1"'}
    async with raw_origin(answer(response_bytes(200, b"body", headers))) as (upstream, proxy):
        for _ in range(3):
            status, got, body = await fetch(proxy.url + PATH)
            assert (status, body) == (200, b"body")
            assert "hit" not in got["Cache-Status"].split("; ")
        assert len(upstream.requests) == 3


@pytest.mark.parametrize("etag", ['"a\x01b"', '"a\x7fb"', '"a\x1bb"'])
async def test_an_etag_with_control_characters_is_dropped_not_served_or_used(etag: str) -> None:
    headers = {"Cache-Control": "public, max-age=0", "ETag": etag, "X-Fine": "yes"}
    async with raw_origin(answer(response_bytes(200, b"body", headers))) as (upstream, proxy):
        for _ in range(2):
            status, got, body = await fetch(proxy.url + PATH)
            assert (status, body) == (200, b"body")
            assert "ETag" not in got and got["X-Fine"] == "yes"
        assert all(r.header("if-none-match") is None for r in upstream.requests)
        assert len(upstream.requests) == 2


# -- 5xx bursts and rate limiting ------------------------------------------------------------------


class ScriptedOrigin:
    """An aiohttp origin answering from a queue of (status, headers, body); default 200."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.hits = 0
        self.release = asyncio.Event()
        self.release.set()
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.arrived.set()
        await self.release.wait()
        if self.script:
            status, headers, body = self.script.pop(0)
        else:
            status, headers, body = (
                200,
                {"Cache-Control": "public, max-age=5", "ETag": '"v1"'},
                b"fresh",
            )
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture
async def scripted(
    serve_origin: ServeOrigin,
) -> AsyncIterator[tuple[ScriptedOrigin, Clock, RunningProxy]]:
    origin = ScriptedOrigin()
    clock = Clock()
    url = await serve_origin(origin.handle)
    async with serve_proxy(Settings(upstream=url, stale_grace=60.0), clock=clock) as proxy:
        yield origin, clock, proxy


async def test_a_5xx_burst_without_a_stored_entry_passes_through_and_is_not_stored(
    scripted: tuple[ScriptedOrigin, Clock, RunningProxy],
) -> None:
    origin, _clock, proxy = scripted
    origin.script = [(503, {"Content-Type": "application/json"}, b'{"success": false}')] * 5
    for _ in range(5):
        status, headers, body = await fetch(proxy.url + PATH)
        assert status == 503 and body == b'{"success": false}'
        assert "stored" not in headers["Cache-Status"]
    status, _headers, body = await fetch(proxy.url + PATH)
    assert (status, body) == (200, b"fresh")
    assert origin.hits == 6


async def test_a_5xx_burst_is_covered_by_the_stale_entry_within_grace(
    scripted: tuple[ScriptedOrigin, Clock, RunningProxy],
) -> None:
    origin, clock, proxy = scripted
    assert (await fetch(proxy.url + PATH))[2] == b"fresh"
    clock.now += 10  # stale: max-age=5, within the 60 s grace
    origin.script = [(500, {}, b"boom"), (502, {}, b"boom"), (503, {}, b"boom"), (504, {}, b"boom")]
    for status_seen in (500, 502, 503, 504):
        status, headers, body = await fetch(proxy.url + PATH)
        assert (status, body) == (200, b"fresh")
        assert f"fwd-status={status_seen}" in headers["Cache-Status"]
        assert int(headers["Age"]) >= 10
    clock.now += 120  # past the grace: the error shows through
    origin.script = [(503, {}, b"boom")]
    status, _headers, body = await fetch(proxy.url + PATH)
    assert (status, body) == (503, b"boom")


async def test_while_the_origin_rate_limits_at_most_one_request_per_key_goes_upstream(
    scripted: tuple[ScriptedOrigin, Clock, RunningProxy],
) -> None:
    origin, clock, proxy = scripted
    origin.script = [
        (429, {"Retry-After": "30", "Content-Type": "application/json"}, b'{"success": false}')
    ]
    origin.release.clear()
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, str | None]:
            async with session.get(proxy.url + PATH) as response:
                body = await response.read()
                if response.status == 429:
                    assert body == b'{"success": false}'
                return response.status, response.headers.get("Retry-After")

        first = [asyncio.ensure_future(one()) for _ in range(20)]
        await origin.arrived.wait()
        origin.release.set()
        answers = await asyncio.gather(*first)
        assert origin.hits == 1
        assert all(status == 429 and retry is not None for status, retry in answers)
        clock.now += 10
        later = await asyncio.gather(*(one() for _ in range(10)))
        assert origin.hits == 1, "a request went upstream inside the Retry-After window"
        assert all(
            status == 429 and retry is not None and 19 <= int(retry) <= 20
            for status, retry in later
        )
        clock.now += 21
        status, _ = await one()
        assert status == 200 and origin.hits == 2


async def test_rate_limiting_with_a_stale_entry_serves_the_entry(
    scripted: tuple[ScriptedOrigin, Clock, RunningProxy],
) -> None:
    origin, clock, proxy = scripted
    assert (await fetch(proxy.url + PATH))[2] == b"fresh"
    clock.now += 10
    origin.script = [(429, {"Retry-After": "30"}, b"slow down")]
    for _ in range(5):
        status, _headers, body = await fetch(proxy.url + PATH)
        assert (status, body) == (200, b"fresh")
    assert origin.hits == 2


@pytest.mark.parametrize("reason", [b"O\x01K", b"O\x7fK", b"\xff\xfe"])
async def test_a_reason_phrase_with_odd_bytes_never_breaks_the_answer(reason: bytes) -> None:
    raw = GOOD.replace(b"200 X", b"200 " + reason, 1)
    async with raw_origin(answer(raw)) as (_upstream, proxy):
        for _ in range(2):
            status, _headers, body = await fetch(proxy.url + PATH)
            assert status in (200, 502)
            if status == 200:
                assert body == b'{"status": "completed"}'
        assert (await fetch(proxy.url + "/healthz"))[0] == 200
