"""Fixtures for tests against a real Redis, loaded with ``pytest_plugins`` by the modules that
use them (helpers they import live in ``tests.support.redis_support``).

``redis_url`` is ``REDIS_URL`` when set (each test gets its own key prefix, so nothing it
writes touches anything else), otherwise a ``redis-server`` this fixture starts on a free port.
``local_redis`` is always a server of the test's own, for tests that kill or pause it.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.ops.config import Settings
from proxy.stores.keys import RedisKeys
from proxy.tools.replicas import LocalRedis, Replica, run_replicas
from tests.support.origin import catch_all
from tests.support.redis_support import CountingUpstream, Fleet

ServerT = TypeVar("ServerT")


def server_fixture(start: Callable[[], AbstractAsyncContextManager[ServerT]], name: str) -> Any:
    """A fixture ``name``: servers of the test's own (``start()``), stopped at its end."""

    @pytest.fixture(name=name)
    async def running() -> AsyncIterator[ServerT]:
        async with start() as server:
            yield server

    return running


local_redis = server_fixture(LocalRedis, "local_redis")


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
def redis_holds(redis_admin: Redis, redis_prefix: str) -> Callable[[str], Awaitable[bool]]:
    """``await redis_holds(path)``: whether the test's Redis holds a record for ``path``."""
    keys = RedisKeys(redis_prefix)

    async def holds(path: str) -> bool:
        return bool(await redis_admin.exists(keys.record(path)))

    return holds


@pytest.fixture
def upstream() -> CountingUpstream:
    return CountingUpstream()


@pytest.fixture
async def origin(
    upstream: CountingUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    return await aiohttp_server(catch_all(upstream.handle))


def fleet_at(origin: TestServer, redis_prefix: str) -> Fleet:
    """``fleet(url, n, **settings)``: n replicas in front of ``origin`` sharing Redis at ``url``
    under the test's prefix."""

    def start(url: str, count: int, **overrides: Any) -> AbstractAsyncContextManager[list[Replica]]:
        options: dict[str, Any] = {
            "upstream": str(origin.make_url("")).rstrip("/"),
            "redis_url": url,
            "redis_prefix": redis_prefix,
            "redis_timeout_ms": 1000,  # a busy CI machine must not make Redis look slow
        }
        return run_replicas(Settings(**(options | overrides)), count)

    return start


@pytest.fixture
def fleet(origin: TestServer, redis_url: str, redis_prefix: str, redis_admin: Redis) -> Fleet:
    """``fleet(n, **settings)``: n replicas in front of ``origin`` sharing the test's Redis."""
    return functools.partial(fleet_at(origin, redis_prefix), redis_url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
