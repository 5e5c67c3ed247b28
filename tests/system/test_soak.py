"""Sustained mixed traffic: every answer correct or a deliberate error, memory flat, nothing leaked.

Marked ``soak`` (about 30 s in all): CI runs it, ``pytest -m "not soak"`` skips it locally.
``PROXY_SOAK_SECONDS`` lengthens the process soak; ``bench/soak.py`` runs it for minutes.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bench.soak import Traffic, seed_owned, simulated_api, soak
from proxy.ops.config import Settings
from tests.support.rawkit import serve_proxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("PROXY_SOAK_SECONDS", "22"))
#: RSS may settle a little after warm-up (allocator arenas, the cache reaching its budget); a
#: leak of even a few hundred bytes per request shows up as far more over tens of thousands.
RSS_TOLERANCE = 4 * 2**20


def must_have_seen(counts: dict[str, int]) -> None:
    for category in (
        "poll hit",
        "poll forwarded",
        "conditional 304",
        "head",
        "create",
        "purge",
        "foreign refused",
        "anonymous refused",
        "unknown",
        "hostile smuggling",
        "hostile huge header",
        "hostile long target",
    ):
        assert counts.get(category, 0) > 0, f"the mix never produced {category!r}: {counts}"
    assert sum(v for k, v in counts.items() if k.endswith("upstream error")) > 0, counts


async def test_a_proxy_process_under_sustained_mixed_traffic_loses_and_leaks_nothing() -> None:
    report = await soak(SECONDS, workers=8)
    summary = report.summary()
    assert report.tally.wrong == [], summary
    must_have_seen(summary["counts"])
    first, second = report.rss_halves()
    assert second - first <= max(RSS_TOLERANCE, 0.05 * first), summary
    assert report.descriptors_after <= report.descriptors_before, summary
    assert report.exit_code == 0


async def test_in_process_no_task_flight_or_connection_outlives_the_traffic() -> None:
    baseline = asyncio.all_tasks()
    async with simulated_api(seed=11) as (sim_url, simulator):
        owned = seed_owned(simulator, per_token=10)
        settings = Settings(
            upstream=sim_url,
            cache_max_bytes=256 * 1024,
            upstream_timeout=1.0,
            stale_grace=2.0,
            admin_token="soak-admin-token",
        )
        async with serve_proxy(settings) as proxy:
            cache = proxy.runtime.cache
            tally = await Traffic(proxy.url, sim_url, owned, seed=11).run(6.0, workers=6)
            assert tally.wrong == [], tally.wrong
            assert tally.counts["poll hit"] > 0 and tally.counts["create"] > 0

            def idle() -> bool:
                return not len(cache.flights) and not proxy.connections

            await eventually(idle, what=lambda: (len(cache.flights), proxy.connections))
            assert cache.store.bytes <= settings.cache_max_bytes
        # The proxy is shut down: its upstream pool closed, so the simulator's side ends too.
        leftover = set[asyncio.Task[object]]()

        def back_to_baseline() -> bool:
            leftover.clear()
            leftover.update(asyncio.all_tasks() - baseline - {asyncio.current_task()})
            return not leftover

        await eventually(back_to_baseline, what=lambda: [task.get_coro() for task in leftover])
