"""Graceful shutdown of a real `python -m proxy`: SIGTERM during slow requests cuts none."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from tests.conftest import ServeFront, ServeOrigin
from tests.support.process import DEADLINE, ProcessLog, spawn_proxy
from tests.support.waiting import eventually

SLOW_REQUESTS = 6
CHUNK = b"x" * 65536
CHUNKS = 4


def body_of(name: str) -> bytes:
    return name.encode() + CHUNK * CHUNKS


@dataclass
class SlowUpstream:
    """An origin whose answers wait for ``release``; half before the head, half mid-body."""

    expected: int
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        index = int(name.rsplit("-", 1)[1])
        self.seen += 1
        if self.seen == self.expected:
            self.arrived.set()
        response = web.StreamResponse(headers={"Cache-Control": "no-store"})
        response.content_length = len(body_of(name))
        if index % 2 == 0:
            await self.release.wait()
        await response.prepare(request)
        await response.write(name.encode() + CHUNK)
        await self.release.wait()
        for _ in range(CHUNKS - 1):
            await response.write(CHUNK)
        await response.write_eof()
        return response


@pytest.fixture
async def slow_upstream(serve_origin: ServeOrigin) -> AsyncIterator[tuple[SlowUpstream, str]]:
    upstream = SlowUpstream(expected=SLOW_REQUESTS)
    app = web.Application()
    app.router.add_get("/v1/audio/transcribe/{name}", upstream.handle)
    yield upstream, await serve_origin(app)
    upstream.release.set()


Proxy = tuple[asyncio.subprocess.Process, ProcessLog, str]


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    started: list[tuple[asyncio.subprocess.Process, ProcessLog]] = []

    async def start(upstream_url: str, *flags: str) -> Proxy:
        process, log = await spawn_proxy(
            "--upstream", upstream_url, "--port", "0", "--access-log", "false", *flags
        )
        started.append((process, log))
        match = await log.wait_for(r"Running on (http://\S+)")
        return process, log, match.group(1)

    yield start
    for process, log in started:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await log.close()


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


NAMES = [f"slow-{i}" for i in range(SLOW_REQUESTS)]


@dataclass
class Terminated:
    """A proxy sent SIGTERM while every one of ``requests`` (to ``NAMES``) waits upstream."""

    process: asyncio.subprocess.Process
    log: ProcessLog
    url: str
    upstream: SlowUpstream
    requests: list[asyncio.Task[tuple[int, bytes]]]


Terminate = Callable[[str], contextlib.AbstractAsyncContextManager[Terminated]]


@pytest.fixture
def terminate(
    slow_upstream: tuple[SlowUpstream, str], start_proxy: Callable[..., Awaitable[Proxy]]
) -> Terminate:
    """``async with terminate(drain_seconds) as terminated``: a proxy with that drain time,
    slow requests in flight through it and SIGTERM sent once the upstream has them all."""
    upstream, upstream_url = slow_upstream

    @contextlib.asynccontextmanager
    async def terminated(drain_seconds: str) -> AsyncIterator[Terminated]:
        process, log, url = await start_proxy(upstream_url, "--drain-seconds", drain_seconds)
        async with aiohttp.ClientSession() as session:
            requests = [
                asyncio.create_task(fetch(session, f"{url}/v1/audio/transcribe/{name}"))
                for name in NAMES
            ]
            async with asyncio.timeout(DEADLINE):
                await upstream.arrived.wait()
            process.send_signal(signal.SIGTERM)
            yield Terminated(process, log, url, upstream, requests)

    return terminated


async def test_sigterm_lets_in_flight_requests_finish_then_exits_cleanly(
    terminate: Terminate,
) -> None:
    async with terminate("10") as terminated:
        await terminated.log.wait_for("draining")

        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as late:
                await fetch(late, f"{terminated.url}/healthz")

        terminated.upstream.release.set()
        async with asyncio.timeout(DEADLINE):
            results = await asyncio.gather(*terminated.requests)
            returncode = await terminated.process.wait()

    assert results == [(200, body_of(name)) for name in NAMES]
    assert returncode == 0
    await terminated.log.wait_for("closed the upstream session and the memory store")


async def test_drain_time_bounds_how_long_in_flight_requests_may_hold_shutdown(
    terminate: Terminate,
) -> None:
    async with terminate("0.2") as terminated:
        async with asyncio.timeout(DEADLINE):
            returncode = await terminated.process.wait()
            results = await asyncio.gather(*terminated.requests, return_exceptions=True)

    assert returncode == 0
    assert all(isinstance(result, aiohttp.ClientError) for result in results), results
    await terminated.log.wait_for("closed the upstream session and the memory store")


async def test_readyz_turns_unavailable_once_draining_starts(serve_front: ServeFront) -> None:
    client = await serve_front(Settings(upstream="http://127.0.0.1:9"))
    before = await client.get("/readyz")
    assert before.status == 200

    client.runtime.drain()  # what closing the public listener does first

    after = await client.get("/readyz")
    assert after.status == 503
    assert (await after.json())["status"] == "draining"


async def test_closing_the_public_listener_drains_the_runtime_and_closing_it_closes_the_rest(
    serve_front: ServeFront,
) -> None:
    client = await serve_front(Settings(upstream="http://127.0.0.1:9"))
    runtime = client.runtime
    assert (await runtime.readiness()).status == "ready"

    await client.server.close(drain_seconds=0.1)

    assert (await runtime.readiness()).body() == {
        "status": "draining",
        "upstream_session": "open",
        "store": "memory",
    }
    await runtime.close()
    assert (await runtime.readiness()).upstream_session == "closed"


async def test_sigterm_answers_held_long_polls_with_304_before_the_drain(
    start_proxy: Callable[..., Awaitable[Proxy]], serve_origin: ServeOrigin
) -> None:
    async def document(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "processing"}, headers={"Cache-Control": "max-age=600", "ETag": '"p"'}
        )

    origin = await serve_origin(document)
    process, _log, proxy_url = await start_proxy(origin, "--drain-seconds", "25")
    url = f"{proxy_url}/v1/audio/transcribe/job-1"
    held_headers = {"If-None-Match": '"p"', "Prefer": "wait=30"}

    async def held(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(url, headers=held_headers) as response:
            return response.status, response.headers.get("Preference-Applied", "")

    async def waiting(session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{proxy_url}/metrics") as response:
            return "cacheproxy_waiting_requests 3.0" in await response.text()

    async with aiohttp.ClientSession() as session:
        assert (await fetch(session, url))[0] == 200
        polls = [asyncio.create_task(held(session)) for _ in range(3)]
        await eventually(lambda: waiting(session), within=DEADLINE, what="3 held")
        process.send_signal(signal.SIGTERM)
        # Answered at once, not when the 30 s wait or the 25 s drain runs out.
        async with asyncio.timeout(DEADLINE):
            answers = await asyncio.gather(*polls)
            returncode = await process.wait()
    assert answers == [(304, "wait=30")] * 3
    assert returncode == 0
