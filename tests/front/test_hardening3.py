"""The third round of attacks (issue 17, findings 2 to 5), over real sockets.

An answer still being written is busy, not idle (finding 2); TLS connections count from accept
and their handshake is bounded (finding 3); ``Expect: 100-continue`` never holds a request
(finding 4); ``CONNECT`` is never forwarded (finding 5). Finding 1 is in test_scope_lines.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.ops.config import Settings
from tests.support.rawkit import (
    HOST,
    RawRequest,
    RawUpstream,
    RunningProxy,
    answer,
    exchange,
    read_response,
    response_bytes,
    serve_proxy,
)
from tests.support.tls import self_signed
from tests.support.waiting import eventually

BIG = 8 * 1024**2 - 4096  # under --max-entry-bytes, far over what socket buffers hold
LOOPS = ["asyncio", "uvloop"]


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def on_each_loop(test: Callable[..., Awaitable[None]]) -> Any:
    """``test`` (a coroutine function, with any fixtures or parameters of its own) run once on
    a fresh loop of each kind in ``LOOPS``, as a test parametrised by ``loop``."""

    def run(loop: str, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            runner.run(test(**kwargs))

    own = list(inspect.signature(test).parameters.values())
    loop = inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)
    run.__signature__ = inspect.Signature([loop, *own])  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    return pytest.mark.parametrize("loop", LOOPS)(run)


# -- finding 2: an answer being written is busy -----------------------------------------------


def get(path: str, fields: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\n" + fields + b"\r\n"


async def slow_download(
    port: int, fields: bytes = b""
) -> tuple[socket.socket, asyncio.AbstractEventLoop]:
    """A GET of the big entry (stored and memoised first, by ``prime``) on a raw client socket
    with a small receive buffer, so the proxy cannot hand the whole body to the kernel at once."""
    await prime(port)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, (HOST, port))
    await loop.sock_sendall(sock, get("/big", fields))
    return sock, loop


async def read_answer(
    sock: socket.socket, *, pause: float = 0.0, until_eof: bool = False
) -> tuple[int, bytes, bool]:
    """Read one answer (head and Content-Length body) at a paced rate; returns the declared
    length, the body bytes received and whether the proxy closed the connection."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return -1, data, True
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    received = len(body)
    closed = False
    while received < length or until_eof:
        try:
            chunk = await loop.sock_recv(sock, 16 * 1024)
        except ConnectionError:
            chunk = b""
        if not chunk:
            closed = True
            break
        received += len(chunk)
        if pause:
            await asyncio.sleep(pause)  # the pace of a slow reader, not a synchronisation
    return length, b"x" * received, closed


@contextlib.asynccontextmanager
async def big_proxy(**settings: Any) -> AsyncIterator[RunningProxy]:
    """A proxy (``Settings(**settings)``) in front of an origin of one big cacheable body."""
    body = b"b" * BIG
    fixed = answer(response_bytes(200, body, {"Cache-Control": "public, max-age=600"}))
    async with (
        RawUpstream(fixed) as origin,
        serve_proxy(Settings(upstream=origin.url, **settings)) as proxy,
    ):
        yield proxy


async def prime(port: int) -> None:
    """Store the big entry and memoise it, so the next plain GET is answered while parsed."""
    for _ in range(2):
        response = await exchange(port, get("/big"), timeout=30)
        assert response.status == 200 and len(response.body) == BIG


#: Two Accept-Encoding lines take a request off the fast path: the answer is written by the
#: cache's responder instead of the fast path's memo.
FULL_PATH = b"Accept-Encoding: identity\r\nAccept-Encoding: identity\r\n"


@pytest.mark.parametrize("fields", [b"", FULL_PATH], ids=["fast", "full"])
@on_each_loop
async def test_a_half_closed_client_gets_the_whole_stored_body(fields: bytes) -> None:
    async with big_proxy() as p:
        sock, _ = await slow_download(p.port, fields)
        sock.shutdown(socket.SHUT_WR)  # RFC 9112 §9.6: the answer is still due
        async with asyncio.timeout(30):
            length, body, closed = await read_answer(sock, until_eof=True)
        sock.close()
        assert length == BIG
        assert len(body) == BIG
        assert closed  # and the connection closes once it is written


@on_each_loop
async def test_a_download_outlasting_the_header_timeout_is_not_cut() -> None:
    async with big_proxy(client_header_timeout=0.3) as p:
        sock, _ = await slow_download(p.port)
        async with asyncio.timeout(60):
            length, body, closed = await read_answer(sock, pause=0.002)
        sock.close()
        assert length == BIG
        assert len(body) == BIG and not closed


@on_each_loop
async def test_a_download_in_progress_is_not_evicted_at_the_connection_cap() -> None:
    async with big_proxy(max_connections=1) as p:
        sock, ev = await slow_download(p.port)
        # The head arrived: the answer is being written.
        first = await ev.sock_recv(sock, 1024)
        assert first.startswith(b"HTTP/1.1 200")
        # A newcomer past the cap is refused rather than cutting the download.
        refused = await exchange(p.port, get("/big"), timeout=10)
        assert refused.status == 503
        async with asyncio.timeout(30):
            received = len(first.partition(b"\r\n\r\n")[2])
            while received < BIG:
                chunk = await ev.sock_recv(sock, 65536)
                assert chunk, f"cut after {received} of {BIG} bytes"
                received += len(chunk)
        sock.close()


# -- finding 4: Expect: 100-continue never holds a request --------------------------------------


async def test_expect_100_continue_is_answered_here_and_not_forwarded() -> None:
    """An origin that never sends 100 Continue (it just waits for the body) gets the body."""
    async with RawUpstream(answer(response_bytes(201, b"made"))) as origin:
        settings = Settings(upstream=origin.url, upstream_timeout=2.0)
        async with serve_proxy(settings) as proxy:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            try:
                writer.write(
                    b"POST /jobs HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                async with asyncio.timeout(10):
                    interim = await reader.readuntil(b"\r\n\r\n")
                    assert interim.startswith(b"HTTP/1.1 100 Continue")
                    writer.write(b"hello")
                    response = await read_response(reader)
            finally:
                writer.close()
            assert response.status == 201
            assert response.body == b"made"
            [forwarded] = origin.requests
            assert forwarded.body == b"hello"
            assert forwarded.header("expect") is None


async def test_an_unknown_expectation_is_refused_with_417() -> None:
    async with (
        RawUpstream(answer(response_bytes(200))) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
    ):
        refused = await exchange(
            proxy.port,
            b"POST /jobs HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1\r\n"
            b"Expect: 100-continue, teapot\r\n\r\nx",
        )
        assert refused.status == 417
        assert origin.requests == []


# -- finding 5: CONNECT is never forwarded -----------------------------------------------------


@pytest.mark.parametrize("target", [b"/e", b"/", b"127.0.0.1:443"])
async def test_connect_is_refused_and_never_forwarded(target: bytes) -> None:
    async with (
        RawUpstream(answer(response_bytes(200))) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
    ):
        refused = await exchange(
            proxy.port, b"CONNECT " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
        )
        if target.startswith(b"/"):
            assert refused.status == 405
            assert "GET" in refused.headers["allow"]
            assert "CONNECT" not in refused.headers["allow"]
        else:
            assert refused.status == 400  # not origin-form: refused before its method
        assert origin.requests == []
        assert await get_ok(proxy.url) == 200


async def get_ok(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
        return response.status


# -- finding 3: TLS handshakes are counted and bounded -----------------------------------------


def tls_settings(tmp_path: Path, origin: str, **overrides: Any) -> Settings:
    cert, key = self_signed(tmp_path)
    return replace(Settings(upstream=origin, tls_cert=str(cert), tls_key=str(key)), **overrides)


async def https_get(port: int, path: str = "/healthz") -> int:
    connector = aiohttp.TCPConnector(ssl=False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://{HOST}:{port}{path}") as response,
    ):
        return response.status


@on_each_loop
async def test_silent_tls_connections_are_counted_and_cut_at_the_header_timeout(
    tmp_path: Path,
) -> None:
    async with RawUpstream(answer(response_bytes(200))) as origin:
        settings = tls_settings(tmp_path, origin.url, max_connections=4, client_header_timeout=1.0)
        async with serve_proxy(settings) as proxy:
            silent = [await asyncio.open_connection(HOST, proxy.port) for _ in range(12)]
            front = proxy.server.front if proxy.server is not None else None
            assert front is not None
            # Counted from accept: the oldest silent ones make room for the newer, so the
            # count settles at the cap however many are silent (on main it stays at 0).
            async with asyncio.timeout(5):
                while len(front.connections) != 4:
                    await asyncio.sleep(0.01)
            # A new HTTPS client gets in past them all.
            assert await https_get(proxy.port) == 200
            # And every silent one is closed by the header timeout (not the 60 s default).
            async with asyncio.timeout(5):
                for reader, _writer in silent:
                    with contextlib.suppress(ConnectionError):
                        assert await reader.read() == b""
            for _reader, writer in silent:
                writer.close()
            assert len(front.connections) == 0


async def test_silent_tls_connections_under_a_descriptor_limit_keep_no_client_out(
    tmp_path: Path,
) -> None:
    """The issue's run: ``python -m proxy`` (uvloop) under RLIMIT_NOFILE 256, 400 silent TLS
    connections, then new HTTPS clients: every one served."""
    import os
    import subprocess
    import sys

    cert, key = self_signed(tmp_path)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
        "from proxy.__main__ import main; sys.exit(main())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env["PYTHONPATH"] = str(root)
    log_path = tmp_path / "proxy.log"
    async with RawUpstream(answer(response_bytes(200))) as origin:
        args = [sys.executable, "-c", code, "--upstream", origin.url, "--port", str(port)]
        args += ["--upstream-max-connections", "32", "--access-log", "false"]
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(args, stderr=log_file, env=env, cwd=root)
        silent = []
        try:

            def listening() -> bool:
                with socket.socket() as sock:
                    return sock.connect_ex((HOST, port)) == 0

            await eventually(listening, within=20, what="the proxy to listen")
            for _ in range(400):
                with contextlib.suppress(OSError):
                    silent.append(await asyncio.open_connection(HOST, port))
            answered = 0
            timeout = aiohttp.ClientTimeout(total=5)
            connector = aiohttp.TCPConnector(ssl=False, force_close=True)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                for _ in range(20):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(f"https://{HOST}:{port}/healthz") as response:
                            answered += response.status == 200
            log = log_path.read_text()[-2000:]
            assert answered == 20, f"{answered} of 20 HTTPS clients served; log: {log}"
        finally:
            for _reader, writer in silent:
                writer.close()
            process.terminate()
            process.wait(timeout=30)
    assert "Traceback" not in log_path.read_text()


# -- the same refusals on aiohttp's server (--front aiohttp) -------------------------------------


async def test_a_tls_newcomer_refused_at_the_cap_gets_no_clear_text(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def held(request: RawRequest, reader: Any, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.write(response_bytes(200))
        await writer.drain()

    async with RawUpstream(held) as origin:
        settings = tls_settings(tmp_path, origin.url, max_connections=1)
        async with serve_proxy(settings) as proxy:
            busy = asyncio.create_task(https_get(proxy.port, "/held"))
            async with asyncio.timeout(5):
                await origin.arrived.wait()  # the only slot is answering a request
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed, no HTTP/1.1 503 in clear text
            writer.close()
            gate.set()
            assert await busy == 200
