"""Our HTTP/1.1 front over real sockets: pipelining, HTTP/1.0, 100-continue, parser edges,
slow readers, the connection cap, TLS and the batched access log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from tests.conftest import origin_fixture
from tests.support import rawkit
from tests.support.access import AccessLog
from tests.support.rawkit import (
    HOST,
    RunningProxy,
    closed_by_peer,
    exchange,
    read_response,
    serve_proxy,
)
from tests.support.tls import self_signed
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
BIG = 4 * 1024 * 1024


class Origin:
    """Cacheable answers naming their target; ``/slow`` waits for ``gate``; ``/big`` is 4 MiB."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[str] = []
        self.forwarded: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        self.forwarded.append(dict(request.headers))
        body = await request.read()
        if request.path == "/slow":
            await self.gate.wait()
        if request.path == "/big":
            return web.Response(body=b"b" * BIG, headers={"Cache-Control": "max-age=600"})
        payload = {"target": request.raw_path, "length": len(body), "method": request.method}
        return web.json_response(payload, headers={"Cache-Control": "max-age=600"})


origin = origin_fixture(Origin)


@pytest.fixture
async def proxy(origin: tuple[Origin, str]) -> AsyncIterator[RunningProxy]:
    settings = Settings(upstream=origin[1], max_body_bytes=1000, client_send_timeout=0.5)
    async with serve_proxy(settings) as running:
        yield running


async def connect(port: int, rcvbuf: int | None = None) -> tuple[Any, Any]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    return await asyncio.open_connection(sock=sock)


def get(target: str, *lines: str, version: str = "1.1") -> bytes:
    head = [f"GET {target} HTTP/{version}", "Host: proxy.test", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


# -- framing ----------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(
    proxy: RunningProxy, origin: tuple[Origin, str]
) -> None:
    assert (await exchange(proxy.port, get("/cached", "Connection: close"))).status == 200
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(get("/slow") + get("/cached") + get("/other") + get("/cached"))
    await eventually(lambda: "/slow" in origin[0].seen, what="the slow request upstream")
    origin[0].gate.set()
    async with asyncio.timeout(10):
        answers = [await read_response(reader) for _ in range(4)]
    writer.close()
    assert [a.json()["target"] for a in answers] == ["/slow", "/cached", "/other", "/cached"]
    assert [a.headers["cache-status"].split(";")[1].strip() for a in answers] == [
        "fwd=uri-miss",
        "hit",
        "fwd=uri-miss",
        "hit",
    ]


async def test_a_memoised_hit_never_overtakes_a_request_before_it(
    proxy: RunningProxy, origin: tuple[Origin, str]
) -> None:
    # A plain hit is answered while it is parsed (connection._answer_inline), but only when
    # nothing before it on the connection is still unanswered.
    for _ in range(2):  # stored, then memoised by its first hit
        assert (await exchange(proxy.port, get("/cached", "Connection: close"))).status == 200
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(get("/slow") + get("/cached"))  # one read: the hit parsed before /slow is sent
    await eventually(lambda: "/slow" in origin[0].seen, what="the slow request upstream")
    writer.write(get("/cached"))  # a later read while /slow is still being answered
    await writer.drain()
    origin[0].gate.set()
    writer.write(get("/other") + get("/cached"))
    async with asyncio.timeout(10):
        answers = [await read_response(reader) for _ in range(5)]
    writer.close()
    targets = [a.json()["target"] for a in answers]
    assert targets == ["/slow", "/cached", "/cached", "/other", "/cached"]


async def test_a_burst_of_pipelined_requests_in_one_write_is_answered_whole(
    proxy: RunningProxy,
) -> None:
    assert (await exchange(proxy.port, get("/cached", "Connection: close"))).status == 200
    burst = get("/cached?first") + get("/cached") * 4000 + get("/cached?last")
    assert len(burst) > 128 * 1024  # far more than one head may take: only a head is bounded
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(burst)
    async with asyncio.timeout(30):
        answers = [await read_response(reader) for _ in range(4002)]
    writer.close()
    targets = [a.json()["target"] for a in answers]
    assert targets == ["/cached?first", *["/cached"] * 4000, "/cached?last"]


async def test_a_field_that_never_ends_is_431_once_over_the_budget(proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: proxy.test\r\nX-Endless: " + b"a" * 100_000)
    async with asyncio.timeout(5):
        response = await read_response(reader)
    writer.close()
    assert response.status == 431 and response.closed


async def test_http10_closes_unless_asked_to_keep_alive(proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(get("/a", version="1.0"))
    first = await read_response(reader)
    assert first.status == 200 and first.closed
    assert await closed_by_peer(reader) == b""
    writer.close()
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(get("/a", "Connection: keep-alive", version="1.0"))
    kept = await read_response(reader)
    assert kept.headers["connection"].lower() == "keep-alive"
    writer.write(get("/a", version="1.0"))
    assert (await read_response(reader)).headers["cache-status"].split("; ")[1] == "hit"
    writer.close()


async def test_expect_100_continue_invites_the_body_then_answers(proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    head = (
        b"POST /upload HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    writer.write(head)
    async with asyncio.timeout(10):
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        response = await read_response(reader)
    writer.close()
    assert response.status == 200 and response.json()["length"] == 5


# -- parser edges (issue 11, finding 6) -------------------------------------------------------


async def test_an_http09_request_line_is_refused_at_once(proxy: RunningProxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(b"GET /x\r\n")
    async with asyncio.timeout(5):  # the header timeout is 30 s: no waiting for it
        response = await read_response(reader)
    writer.close()
    assert response.status in (400, 505) and response.closed


async def test_a_transfer_coding_before_chunked_is_not_implemented(
    proxy: RunningProxy, origin: tuple[Origin, str]
) -> None:
    raw = (
        b"POST /x HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    response = await exchange(proxy.port, raw)
    assert response.status == 501
    assert response.json()["error"]["code"] == "NOT_IMPLEMENTED"
    assert origin[0].seen == []


async def test_expect_100_continue_with_a_body_over_the_limit_is_413_without_100(
    proxy: RunningProxy, origin: tuple[Origin, str]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(5):
        response = await read_response(reader)
    writer.close()
    assert response.status == 413 and response.closed
    assert origin[0].seen == []


# -- slow readers -------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_clients_that_never_read_are_cut_after_the_send_timeout_in_bounded_memory(
    proxy: RunningProxy,
) -> None:
    assert (await exchange(proxy.port, get("/big", "Connection: close"))).status == 200
    before = rss()
    clients = [await connect(proxy.port, rcvbuf=4096) for _ in range(20)]
    for _reader, writer in clients:
        writer.write(get("/big"))
    registry = proxy.registry

    def cut() -> float:
        value = registry.get_sample_value("cacheproxy_client_timeouts_total", {"phase": "send"})
        return value or 0.0

    await eventually(lambda: cut() == 20, within=20, what=lambda: f"{cut()} cut")
    await eventually(lambda: proxy.connections == 0, what="the connections to close")
    grown = rss() - before
    for _reader, writer in clients:
        writer.close()
    # A copy of the body per client would be 80 MiB; slices of it are 64 KiB each.
    assert grown < 24 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


async def test_a_streamed_upstream_body_is_released_when_the_client_stops_reading() -> None:
    released = asyncio.Event()

    async def endless(
        request: rawkit.RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % 2**30
        )
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            released.set()
            writer.close()

    async with rawkit.RawUpstream(endless) as upstream:
        settings = Settings(upstream=upstream.url, client_send_timeout=0.5)
        async with serve_proxy(settings) as running:
            _reader, writer = await connect(running.port, rcvbuf=4096)
            writer.write(get("/stream"))
            async with asyncio.timeout(20):
                await released.wait()
            writer.close()


# -- the connection cap -------------------------------------------------------------------------


async def test_past_the_connection_cap_normal_requests_are_still_answered(
    origin: tuple[Origin, str], tmp_path: Path
) -> None:
    """A real ``python -m proxy`` with RLIMIT_NOFILE 256: 400 slow heads, then normal requests."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "proxy.log"
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
        "from proxy.__main__ import main; sys.exit(main())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", code, "--upstream", origin[1], "--port", str(port)]
    args += ["--upstream-max-connections", "32", "--access-log", "false"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, stderr=log_file, env=env, cwd=ROOT)
    try:
        url = f"http://{HOST}:{port}"
        await eventually(lambda: _up(port), within=20, what="the proxy to listen")
        slow = []
        for _ in range(400):
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\n")
                slow.append(writer)
        answered = 0
        async with aiohttp.ClientSession() as session:
            for i in range(50):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/normal/{i % 5}") as response:
                        await response.read()
                        answered += response.status == 200
        for writer in slow:
            writer.close()
        assert answered >= 45, f"{answered} of 50 answered; log: {log_path.read_text()[-2000:]}"
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert len(text) < 100_000


def _up(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


# -- TLS ----------------------------------------------------------------------------------------


async def test_tls_end_to_end_with_an_https_base_url(
    origin: tuple[Origin, str], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(upstream=origin[1], tls_cert=str(cert), tls_key=str(key))
    async with serve_proxy(settings) as running:
        context = ssl.create_default_context(cafile=str(cert))
        base = f"https://localhost:{running.port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            statuses = []
            for _ in range(2):
                async with session.get(f"{base}/secure") as r:
                    assert r.status == 200
                    assert (await r.json())["target"] == "/secure"
                    statuses.append(r.headers["Cache-Status"])
        assert "fwd=uri-miss" in statuses[0] and "; hit" in statuses[1]
        assert origin[0].forwarded[0]["X-Forwarded-Proto"] == "https"


# -- access log ---------------------------------------------------------------------------------


async def test_the_access_log_is_batched_with_the_same_fields_and_no_secrets(
    origin: tuple[Origin, str], access_log: AccessLog
) -> None:
    async with serve_proxy(Settings(upstream=origin[1]), access=access_log.logger) as running:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                url = f"{running.url}/log?token=secret"
                headers = {"X-Api-Key": "very-secret-token"}
                async with session.get(url, headers=headers) as response:
                    await response.read()
        await access_log.count(2)
    first, second = access_log.lines()
    assert {k: v for k, v in first.items() if k != "duration_ms"} == {
        "method": "GET",
        "path": "/log",
        "status": 200,
        "cache": "miss",
        "bytes": first["bytes"],
    }
    assert second["cache"] == "hit" and second["bytes"] == first["bytes"] > 0
    assert "secret" not in access_log.caplog.text


async def test_the_proxy_object_is_the_one_behind_the_front(proxy: RunningProxy) -> None:
    assert proxy.server is not None and proxy.server.front is not None
    assert proxy.server.front.proxy is proxy.runtime.cache
