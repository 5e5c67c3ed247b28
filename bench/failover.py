"""A Sentinel failover under polling load: what clients see, and how soon sharing resumes.

    PYTHONPATH=. python bench/failover.py [--workers 8] [--seconds 3] > failover.json

Two proxy replicas share a Sentinel group (a primary, a replica, three sentinels: real
``redis-server`` processes on loopback ports) in front of a local origin. Pollers ask both
replicas for ever new IDs (each request a miss: a lock, a write and a notice in Redis). For each
scenario (``graceful``: ``SENTINEL FAILOVER``; ``kill``: SIGKILL of the primary) it reports the
answers by status during the window, request latency percentiles, how long the replicas were
degraded, and the seconds from the trigger until a replica's write reaches the new primary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from proxy.ops.config import Settings
from proxy.stores.keys import RedisKeys
from proxy.tools.redis_ha import LocalSentinelGroup
from proxy.tools.replicas import Replica, run_replicas

PREFIX = "bench"


async def origin() -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path}, headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class Pollers:
    def __init__(self, http: aiohttp.ClientSession, replicas: list[Replica], workers: int) -> None:
        self.http = http
        self.replicas = replicas
        self.ids = itertools.count()
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.stopped = asyncio.Event()
        self.tasks = [asyncio.create_task(self.poll()) for _ in range(workers)]

    async def poll(self) -> None:
        while not self.stopped.is_set():
            path = f"/v1/audio/transcribe/bench-{next(self.ids)}"
            for replica in self.replicas:
                started = time.perf_counter()
                try:
                    async with self.http.get(replica.url + path) as response:
                        await response.read()
                        self.statuses[response.status] += 1
                except aiohttp.ClientError:
                    self.statuses[0] += 1
                self.latencies.append(time.perf_counter() - started)

    async def stop(self) -> None:
        self.stopped.set()
        await asyncio.gather(*self.tasks)


def degraded(replica: Replica) -> bool:
    return replica.metric("cacheproxy_store_degraded", {"backend": "redis"}) == 1


async def write_reaches(http: aiohttp.ClientSession, replica: Replica, port: int, n: int) -> bool:
    path = f"/v1/audio/transcribe/probe-{n}"
    async with http.get(replica.url + path) as response:
        await response.read()
    async with Redis(port=port) as admin:
        return bool(await admin.exists(RedisKeys(PREFIX).record(path)))


async def scenario(name: str, upstream: str, workers: int, seconds: float) -> dict[str, Any]:
    async with LocalSentinelGroup() as group:
        settings = Settings(
            upstream=upstream,
            redis_url=group.url,
            redis_prefix=PREFIX,
            redis_timeout_ms=100,
            access_log=False,
        )
        async with run_replicas(settings, 2) as replicas, aiohttp.ClientSession() as http:
            before = await group.primary_port()
            assert before is not None
            pollers = Pollers(http, replicas, workers)
            await asyncio.sleep(seconds)  # a steady state to compare against
            steady = sum(pollers.statuses.values())
            pollers.statuses.clear()
            pollers.latencies.clear()
            triggered = time.perf_counter()
            if name == "graceful":
                failover = asyncio.create_task(group.failover(demoted=False))
            else:
                group.servers[before].kill()
                failover = asyncio.create_task(_promoted(group, before))
            degraded_for = 0.0
            probes = itertools.count()
            last = triggered
            while True:
                tick = time.perf_counter()
                if any(degraded(replica) for replica in replicas):
                    degraded_for += tick - last
                last = tick
                if failover.done():
                    after = failover.result()
                    if await write_reaches(http, replicas[0], after, next(probes)):
                        break
                await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - tick)))
                if time.perf_counter() - triggered > 60:
                    raise TimeoutError("writes never reached the new primary")
            followed = time.perf_counter() - triggered
            await asyncio.sleep(seconds)
            await pollers.stop()
    latencies = sorted(pollers.latencies)
    return {
        "scenario": name,
        "requests_steady_state": steady,
        "requests_from_trigger": sum(pollers.statuses.values()),
        "statuses": {str(status): count for status, count in sorted(pollers.statuses.items())},
        "writes_reach_new_primary_after_s": round(followed, 3),
        "degraded_s": round(degraded_for, 2),
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 2),
            "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
            "max": round(1000 * latencies[-1], 2),
        },
    }


async def _promoted(group: LocalSentinelGroup, before: int) -> int:
    while True:
        port = await group.primary_port()
        if port is not None and port != before:
            return port
        await asyncio.sleep(0.02)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/failover.py")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    runner, upstream = await origin()
    try:
        results = [
            await scenario(name, upstream, args.workers, args.seconds)
            for name in ("graceful", "kill")
        ]
    finally:
        await runner.cleanup()
    machine = {"nproc": os.cpu_count(), "loadavg": os.getloadavg()}
    print(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
