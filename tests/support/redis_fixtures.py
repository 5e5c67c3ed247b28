"""Fixtures for tests against a real Redis, loaded with ``pytest_plugins`` by the modules that
use them (helpers they import live in ``tests.support.redis_support``).

``redis_url`` is ``REDIS_URL`` when set (each test gets its own key prefix, so nothing it
writes touches anything else), otherwise a ``redis-server`` this fixture starts on a free port.
``local_redis`` is always a server of the test's own, for tests that kill or pause it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.ops.config import Settings
from proxy.tools.replicas import LocalRedis, Replica, run_replicas
from tests.support.origin import catch_all
from tests.support.redis_support import CountingUpstream, Fleet


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


@pytest.fixture
def upstream() -> CountingUpstream:
    return CountingUpstream()


@pytest.fixture
async def origin(
    upstream: CountingUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    return await aiohttp_server(catch_all(upstream.handle))


@pytest.fixture
def fleet(origin: TestServer, redis_url: str, redis_prefix: str, redis_admin: Redis) -> Fleet:
    """``fleet(n, **settings)``: n replicas in front of ``origin`` sharing the test's Redis."""

    def start(count: int, **overrides: Any) -> AbstractAsyncContextManager[list[Replica]]:
        options: dict[str, Any] = {
            "upstream": str(origin.make_url("")).rstrip("/"),
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "redis_timeout_ms": 1000,  # a busy CI machine must not make Redis look slow
        }
        return run_replicas(Settings(**(options | overrides)), count)

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
