"""Floods of every per-key shape stay within --cache-max-bytes plus the documented fixed overhead.

Each test floods the proxy over real sockets with one shape an attacker controls (long
request-targets, long ``Host`` values, anonymous 429s with ``Retry-After``, successful POSTs),
then checks the accounted bytes against their budgets and the memory Python actually allocated
(tracemalloc, the whole process: origin, client and proxy) against the budget plus overhead.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.cache.entries import INVALIDATION_BUDGET
from proxy.cache.fetch import BACKOFF_BUDGET
from proxy.core.headers import format_http_date
from proxy.stores.tables import InvalidationTable
from tests.conftest import FakeClock, Harness, MakeHarness

MiB = 1024 * 1024
BUDGET = 256 * 1024
#: The libraries' own bounded caches that long request-targets fill: yarl and urllib keep up to
#: 128 recent URLs per cache (aiohttp's server and client both parse each target); measured
#: 5.5 MiB for 7 KiB targets. Part of the fixed overhead the README documents.
LIBRARY_CACHES = 8 * MiB
#: Allocation noise (connection buffers, the allocator, cachetools' heap cleanup cycle).
SLACK = 1 * MiB


def plain_origin(clock: Callable[[], float]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Cacheable GETs (dated by the test's clock), 429s under /limited/, successful POSTs."""

    async def handle(request: web.Request) -> web.Response:
        return await answer(request, clock())

    return handle


async def answer(request: web.Request, now: float) -> web.Response:
    if request.method == "POST":
        await request.read()
        return web.json_response({"ok": True})
    if request.path.startswith("/limited/"):
        return web.Response(status=429, body=b"x" * 4000, headers={"Retry-After": "600"})
    return web.Response(
        body=b"{}",
        headers={"Cache-Control": "public, max-age=600", "Date": format_http_date(now)},
    )


@pytest.fixture
async def flooded(make_harness: MakeHarness, clock: FakeClock) -> Harness:
    """A proxy with a small cache budget before ``plain_origin``."""
    return await make_harness(handler=plain_origin(clock), cache_max_bytes=BUDGET, access_log=False)


Send = Callable[[aiohttp.ClientSession, str, int], Awaitable[aiohttp.ClientResponse]]


async def grown_by(h: Harness, count: int, send: Send) -> int:
    """Bytes the process allocated and still holds after ``count`` requests of one shape.

    A plain client session is used, not the test client, which keeps every response until
    teardown; a few requests first warm up the connection pools.
    """
    gate = asyncio.Semaphore(16)
    base = str(h.client.make_url("")).rstrip("/")
    session = aiohttp.ClientSession()

    async def one(n: int) -> None:
        async with gate, await send(session, base, n) as response:
            await response.read()

    await asyncio.gather(*(one(n) for n in range(-20, 0)))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        await asyncio.gather(*(one(n) for n in range(count)))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
        await session.close()
    print(
        f"\n{count} requests: grew {grown / MiB:.2f} MiB; cache {h.proxy.store.bytes} B, "
        f"back-off {h.proxy.fetcher.held_back_bytes} B, "
        f"invalidation {h.proxy.entries.invalidation_bytes} B"
    )
    return grown


def within(grown: int, budget: int, library: int = LIBRARY_CACHES) -> None:
    limit = budget + library + SLACK
    assert grown <= limit, f"grew {grown / MiB:.1f} MiB, more than {limit / MiB:.1f} MiB"


async def test_a_flood_of_long_request_targets_stays_in_the_budget(flooded: Harness) -> None:
    pad = "k" * 7000
    grown = await grown_by(flooded, 2000, lambda s, base, n: s.get(f"{base}/long/{n}/{pad}"))
    assert 0 < flooded.proxy.store.bytes <= BUDGET
    within(grown, BUDGET)


async def test_a_flood_of_long_hosts_stays_in_the_budget(flooded: Harness) -> None:
    def send(s: aiohttp.ClientSession, base: str, n: int) -> Any:
        return s.get(f"{base}/host/{n}", headers={"Host": f"{n}.{'h' * 7000}.example"})

    grown = await grown_by(flooded, 2000, send)
    assert 0 < flooded.proxy.store.bytes <= BUDGET
    # Short targets: the URL caches stay small; yarl's host caches hold 128 long hosts at most.
    within(grown, BUDGET, library=3 * MiB)


@pytest.mark.parametrize(
    ("method", "prefix", "table", "budget"),
    [
        ("GET", "limited", "held_back", BACKOFF_BUDGET),  # anonymous 429s: the back-off table
        ("POST", "post", "invalidation", INVALIDATION_BUDGET),  # successful POSTs: invalidations
    ],
)
async def test_a_flood_of_answers_that_store_nothing_stays_in_its_tables_budget(
    flooded: Harness, method: str, prefix: str, table: str, budget: int
) -> None:
    pad, body = "r" * 7000, b"x" if method == "POST" else None
    grown = await grown_by(
        flooded, 2000, lambda s, base, n: s.request(method, f"{base}/{prefix}/{n}/{pad}", data=body)
    )
    held = {
        "held_back": flooded.proxy.fetcher.held_back_bytes,
        "invalidation": flooded.proxy.entries.invalidation_bytes,
    }[table]
    assert 0 < held <= budget
    assert flooded.metric("cacheproxy_table_bytes", table=table) == held
    within(grown, BUDGET + budget)


def test_an_invalidation_mark_evicted_early_still_stops_an_older_fetch_from_storing() -> None:
    now = [100.0]
    table = InvalidationTable(8 * 1024, lambda: now[0], keep=31.0)
    table.mark("/a", 100.0)
    for n in range(100):
        table.mark(f"/flood/{n}", 100.0 + n / 1000)
    assert table.bytes <= 8 * 1024
    assert table.since("/a", started=99.0)  # evicted, but the floor covers it
    assert not table.since("/b", started=101.0)
