"""The polling-fleet economy: the same fleet through no cache, nginx, Varnish and this proxy.

The fleet is the demo's (``proxy.tools.fleet``): pollers that send ``If-None-Match`` with the
last ETag and stop once the transcription is final. For each fleet size and system, fresh
transcriptions are seeded, the fleet polls them until every one is final, and the simulator's per-
ID counts say how many requests reached the origin.

The floor of an ideal shared cache for one ID polled from ``t0`` that becomes final at ``F``,
with ``max-age=M`` while pending: one fetch per max-age window while pending, ``ceil((F-t0)/M)``,
plus the one fetch that sees the final status; nothing after that. "Upstream requests per ID per
max-age window" divides what reached the origin by that floor, so an ideal cache scores 1.0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import client, common, processes
from bench.common import Bench
from bench.processes import Service, Unavailable
from proxy.tools.fleet import (
    assign_pollers,
    final_at,
    fleet_session,
    percentile,
    seed_simulator,
    spread_fleet,
)
from proxy.tools.simulator import API_PREFIX


@dataclass(frozen=True)
class FleetScale(common.Staggered):
    sizes: tuple[int, ...]
    tokens: int
    interval: float


SCALES = {
    "tiny": FleetScale(sizes=(2, 6), transcriptions=2, tokens=2, interval=0.15,
                       queued=0.0, processing=0.5, stagger=0.2, max_age=1),
    "full": FleetScale(sizes=(10, 100, 1000), transcriptions=10, tokens=5, interval=1.0,
                       queued=1.0, processing=12.0, stagger=4.0, max_age=5),
}  # fmt: skip

SYSTEMS = (
    "no cache",
    "nginx proxy_cache",
    "Varnish",
    "aitronos-cache-proxy",
    "3 replicas, no Redis",
    "3 replicas + Redis",
    "2 workers",
)
#: Scale-out runs: pollers spread round-robin over this many replicas behind one public name.
REPLICAS = 3


@dataclass
class FleetRun:
    system: str
    pollers: int
    transcriptions: int
    client_requests: int = 0
    client_bytes: int = 0
    client_errors: int = 0
    pollers_done: int = 0
    upstream_requests: int = 0
    upstream_not_modified: int = 0
    upstream_bytes: int = 0
    floor: int = 0
    per_id_ratio_mean: float = 0.0
    per_id_ratio_max: float = 0.0
    upstream_after_final: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    completion_lag_p50_s: float | None = None
    seconds: float = 0.0
    skipped: str | None = None
    per_id: list[dict[str, Any]] = field(default_factory=list)

    @property
    def per_window(self) -> float:
        """Upstream requests per ID per max-age window, over all IDs (1.0 is the floor)."""
        return self.upstream_requests / self.floor if self.floor else 0.0


def id_floors(
    simulator_url: str, created: Sequence[tuple[str, str]], started_wall: float, max_age: int
) -> dict[str, int]:
    """Per final transcription, the ideal shared cache's upstream requests (see the module's
    docstring), from its ``completed_at`` read straight from the simulator."""
    floors = {}
    for token, transcription_id in created:
        status, _, body = client.http_get(
            f"{simulator_url}{API_PREFIX}/{transcription_id}",
            {"Authorization": f"Bearer {token}"},
        )
        became_final = final_at(body) if status == 200 else None
        if became_final is not None:
            floors[transcription_id] = (
                math.ceil(max(0.0, became_final - started_wall) / max_age) + 1
            )
    return floors


async def run_one(
    system: str,
    base_urls: list[str],
    simulator_url: str,
    scale: FleetScale,
    pollers: int,
) -> FleetRun:
    """Seed, poll until all are final, then have every poller read its result once more."""
    timeout = aiohttp.ClientTimeout(total=15.0)
    ids = min(scale.transcriptions, pollers)
    async with fleet_session(pollers + 16, timeout) as session:
        tokens = [f"fleet-{i}" for i in range(min(scale.tokens, ids))]
        created = await seed_simulator(session, simulator_url, tokens, ids)
        client.reset_stats(simulator_url)
        started_wall = time.time()
        duration = scale.poll_seconds(scale.interval)
        assignments = assign_pollers(created, pollers)
        fleet = await spread_fleet(
            base_urls,
            assignments,
            duration,
            session=session,
            interval=scale.interval,
            seed=pollers,
        )
        during = client.stats(simulator_url, per_id=True)
        reread = await spread_fleet(
            base_urls, assignments, 2.0 + scale.interval, session=session, interval=scale.interval
        )
        after = client.stats(simulator_url, per_id=True)
        run = FleetRun(system, pollers, ids)
        run.client_requests = fleet.requests
        run.client_bytes = fleet.bytes_received
        run.client_errors = fleet.errors + reread.errors
        run.pollers_done = fleet.pollers_done
        run.upstream_requests = sum(during["transcription_gets"].values())
        run.upstream_not_modified = during["not_modified"]
        run.upstream_bytes = during["bytes_sent"]
        run.upstream_after_final = sum(after["transcription_gets"].values()) - sum(
            during["transcription_gets"].values()
        )
        run.seconds = fleet.elapsed
        p50, p99 = percentile(fleet.latencies, 50), percentile(fleet.latencies, 99)
        run.p50_ms = None if p50 is None else p50 * 1000
        run.p99_ms = None if p99 is None else p99 * 1000
        lag = percentile(fleet.completion_lags, 50)
        run.completion_lag_p50_s = lag
        ratios = []
        floors = id_floors(simulator_url, created, started_wall, scale.max_age)
        for transcription_id, windows in floors.items():
            got = during["transcription_gets"].get(transcription_id, 0)
            run.floor += windows
            ratios.append(got / windows)
            run.per_id.append({"id_windows": windows, "upstream_requests": got})
        if ratios:
            run.per_id_ratio_mean = sum(ratios) / len(ratios)
            run.per_id_ratio_max = max(ratios)
        return run


def measure(
    bench: Bench,
    *,
    origin_options: Sequence[str] = (),
    systems: Sequence[str] = SYSTEMS,
    nginx_gzip: bool = False,
) -> list[FleetRun]:
    """Every system in turn against one simulator (``origin_options`` added to its flags)."""
    scale, workdir, pinning, install = (
        SCALES[bench.scale],
        bench.workdir,
        bench.pinning,
        bench.install,
    )
    simulator = common.start_staggered(workdir, scale, pinning, origin_options)
    port = simulator.port

    def replicas(shared: bool) -> list[Service]:
        started: list[Service] = []
        try:
            redis_options: list[str] = []
            if shared:
                redis = processes.start_redis(workdir, pinning)
                started.append(redis)
                redis_options = ["--redis-url", f"redis://127.0.0.1:{redis.port}/0"]
            for i in range(REPLICAS):
                started.append(
                    processes.start_proxy(
                        workdir,
                        simulator.url,
                        pinning,
                        name=f"replica-{i}{'-redis' if shared else ''}",
                        options=[
                            "--access-log",
                            "false",
                            *redis_options,
                        ],
                    )
                )
        except BaseException:
            for service in started:
                service.stop()
            raise
        return started

    starters: dict[str, Callable[[], list[Service]]] = {
        "no cache": lambda: [],
        "nginx proxy_cache": lambda: [
            processes.start_nginx(workdir, port, pinning, install=install, gzip=nginx_gzip)
        ],
        "Varnish": lambda: [processes.start_varnish(workdir, port, pinning, install=install)],
        "aitronos-cache-proxy": lambda: [
            processes.start_proxy(
                workdir, simulator.url, pinning, options=["--access-log", "false"]
            )
        ],
        "3 replicas, no Redis": lambda: replicas(shared=False),
        "3 replicas + Redis": lambda: replicas(shared=True),
        "2 workers": lambda: [
            processes.start_proxy(
                workdir,
                simulator.url,
                pinning,
                name="workers",
                options=["--access-log", "false", "--workers", "2"],
            )
        ],
    }
    runs: list[FleetRun] = []
    try:
        for system in systems:
            if not bench.wants(system):
                continue
            try:
                services = starters[system]()
            except Unavailable as error:
                bench.log(f"fleet: {system} skipped: {error}")
                runs += [FleetRun(system, size, 0, skipped=str(error)) for size in scale.sizes]
                continue
            try:
                proxies = [s for s in services if s.name != "redis"]
                base_urls = [s.url for s in proxies] or [simulator.url]
                for size in scale.sizes:
                    run = asyncio.run(run_one(system, base_urls, simulator.url, scale, size))
                    runs.append(run)
                    bench.log(
                        f"fleet: {system} x{size}: {run.client_requests} client requests, "
                        f"{run.upstream_requests} upstream ({run.per_window:.2f} per ID per "
                        f"window, floor {run.floor}), {run.upstream_after_final} after final"
                    )
            finally:
                for service in reversed(services):
                    service.stop()
    finally:
        simulator.stop()
    return runs
