"""Fixtures for tests against a real Redis: imported by the ``test_redis_*`` modules.

``redis_url`` is ``REDIS_URL`` when set (each test gets its own key prefix, so nothing it
writes touches anything else), otherwise a ``redis-server`` this fixture starts on a free port.
``local_redis`` is always a server of the test's own, for tests that kill or pause it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from redis.asyncio import Redis

from proxy.replicas import LocalRedis


@pytest.fixture
async def local_redis() -> AsyncIterator[LocalRedis]:
    async with LocalRedis() as server:
        yield server


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    async with LocalRedis() as server:
        yield server.url


@pytest.fixture
def redis_prefix() -> str:
    return "t" + secrets.token_hex(6)


@pytest.fixture
async def redis_admin(redis_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    """A plain client on the test's Redis; deletes the test's keys afterwards."""
    client = Redis.from_url(redis_url)
    yield client
    async for name in client.scan_iter(match=f"{redis_prefix}:*"):
        await client.delete(name)
    await client.aclose()


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    """Wait until ``condition`` holds, checking on every short tick; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


@dataclass
class CountingUpstream:
    """An origin that counts requests per path and can hold them until released.

    Each GET answers a new ``version`` of the path's document while it has not changed:
    ``max-age=60`` and an ETag, like the transcription API for a finished job.
    """

    requests: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event | None = None
    on_request: Callable[[web.Request], Awaitable[None]] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def count(self, path: str) -> int:
        return self.requests.get(path, 0)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        if request.method != "GET":
            self.versions[path] = self.versions.get(path, 0) + 1
            return web.Response(status=204)
        self.requests[path] = self.count(path) + 1
        self.arrived.set()
        if self.on_request is not None:
            await self.on_request(request)
        if self.gate is not None:
            await self.gate.wait()
        version = self.versions.get(path, 0)
        return web.json_response(
            {"path": path, "version": version},
            headers={"Cache-Control": "max-age=60", "ETag": f'"v{version}"'},
        )
