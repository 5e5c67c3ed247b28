"""Resident memory of the proxy holding N cached completed transcriptions, against their bodies.

The cache is filled through real requests: the simulator creates completed transcriptions, and
each is fetched once through a proxy process, which stores it. The proxy's ``VmRSS`` is read from
``/proc`` after each step, next to the sum of the response bodies it holds and its own
``cacheproxy_cache_entries`` / ``cacheproxy_cache_bytes`` gauges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import client, processes
from bench.processes import Pinning
from proxy.tools.simulator import API_PREFIX

TOKEN = "bench-memory-token"
CONCURRENCY = 32


@dataclass(frozen=True)
class MemoryScale:
    steps: tuple[int, ...]


SCALES = {"tiny": MemoryScale(steps=(100, 500)), "full": MemoryScale(steps=(50_000, 100_000))}
#: What the filling clients accept: gzip, as every common client does (issue 19's setting).
ACCEPT_ENCODING = "gzip"


@dataclass
class MemoryPoint:
    entries: int
    body_bytes: int
    rss_bytes: int
    baseline_rss_bytes: int
    cache_entries_metric: float | None
    cache_bytes_metric: float | None
    fill_seconds: float
    errors: int

    @property
    def added_rss_bytes(self) -> int:
        return self.rss_bytes - self.baseline_rss_bytes

    @property
    def ratio(self) -> float:
        """Resident memory the entries added, per byte of body they hold."""
        return self.added_rss_bytes / self.body_bytes if self.body_bytes else 0.0

    @property
    def ratio_total(self) -> float:
        return self.rss_bytes / self.body_bytes if self.body_bytes else 0.0


async def fill(proxy_url: str, ids: list[str]) -> tuple[int, int]:
    """GET every ID once through the proxy; (body bytes stored, failures)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for transcription_id in ids:
        queue.put_nowait(transcription_id)
    totals = {"bytes": 0, "errors": 0}
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": ACCEPT_ENCODING}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            transcription_id = queue.get_nowait()
            try:
                async with session.get(
                    f"{proxy_url}{API_PREFIX}/{transcription_id}", headers=headers
                ) as response:
                    body = await response.read()  # decoded: the identity bytes
                    stored = "stored" in response.headers.get("Cache-Status", "")
                    if response.status == 200 and stored:
                        totals["bytes"] += len(body)
                    else:
                        totals["errors"] += 1
            except (aiohttp.ClientError, TimeoutError):
                totals["errors"] += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return totals["bytes"], totals["errors"]


def measure(
    workdir: Path, scale_name: str, pinning: Pinning, *, log: Callable[[str], None]
) -> list[MemoryPoint]:
    scale = SCALES[scale_name]
    simulator = processes.start_simulator(
        workdir, ["--queued-seconds", "0", "--processing-seconds", "0", "--seed", "3"], pinning
    )
    points: list[MemoryPoint] = []
    try:
        proxy = processes.start_proxy(
            workdir,
            simulator.url,
            pinning,
            options=["--access-log", "false", "--cache-max-bytes", "16GiB"],
        )
        try:
            for _ in range(100):
                client.http_get(f"{proxy.url}/healthz")
            time.sleep(0.5)
            baseline = processes.rss_bytes(proxy.pid)
            log(f"memory: empty proxy RSS {baseline / 2**20:.1f} MiB")
            held, body_bytes, errors = 0, 0, 0
            for target in scale.steps:
                ids = client.seed(simulator.url, [TOKEN], target - held)
                started = time.monotonic()
                added, failed = asyncio.run(fill(proxy.url, ids))
                elapsed = time.monotonic() - started
                held = target
                body_bytes += added
                errors += failed
                time.sleep(0.5)
                point = MemoryPoint(
                    entries=target,
                    body_bytes=body_bytes,
                    rss_bytes=processes.rss_bytes(proxy.pid),
                    baseline_rss_bytes=baseline,
                    cache_entries_metric=client.metric_value(proxy.url, "cacheproxy_cache_entries"),
                    cache_bytes_metric=client.metric_value(proxy.url, "cacheproxy_cache_bytes"),
                    fill_seconds=elapsed,
                    errors=errors,
                )
                points.append(point)
                log(
                    f"memory: {target} entries, bodies {body_bytes / 2**20:.1f} MiB, RSS "
                    f"{point.rss_bytes / 2**20:.1f} MiB (+{point.added_rss_bytes / 2**20:.1f}), "
                    f"{point.ratio:.2f}x bodies, {errors} errors, filled in {elapsed:.1f} s"
                )
        finally:
            proxy.stop()
    finally:
        simulator.stop()
    return points
