"""Helpers for the tests of replicas sharing Redis: waiting on a condition, a counting origin."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.tools.replicas import Replica, free_port
from tests.support.waiting import eventually

__all__ = [
    "JOB",
    "CountingUpstream",
    "Fleet",
    "assert_fetched_again",
    "collapsed_gets",
    "eventually",
    "get",
    "replica_process",
]

ROOT = Path(__file__).resolve().parents[2]

JOB = "/v1/audio/transcribe/job-1"
#: ``fleet(count, **settings)`` starts replicas sharing the test's Redis (see the fixture).
Fleet = Callable[..., AbstractAsyncContextManager[list[Replica]]]


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
    padding: int = 0

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
        version = self.versions.get(path, 0)  # the answer is made now, sent when released
        self.arrived.set()
        if self.on_request is not None:
            await self.on_request(request)
        if self.gate is not None:
            await self.gate.wait()
        document: dict[str, Any] = {"path": path, "version": version}
        if self.padding:
            document["padding"] = "transcript " * (self.padding // 11 + 1)
        return web.json_response(
            document,
            headers={"Cache-Control": "max-age=60", "ETag": f'"v{version}"'},
        )


async def get(
    http: aiohttp.ClientSession, replica: Replica | str, path: str = JOB
) -> tuple[int, str, dict[str, Any]]:
    """Status, ``Cache-Status`` and JSON body of a GET through a replica (or a base URL)."""
    base = replica if isinstance(replica, str) else replica.url
    async with http.get(base + path) as response:
        return response.status, response.headers.get("Cache-Status", ""), await response.json()


async def collapsed_gets(
    http: aiohttp.ClientSession, replicas: list[Replica], upstream: CountingUpstream
) -> list[tuple[int, str, dict[str, Any]]]:
    """Three concurrent GETs of ``JOB`` through each replica while ``upstream.gate`` (set by the
    test before the fleet starts) holds the one fetch; released, and their answers returned,
    once every other replica waits for the replica fetching and every call is on its replica's
    flight (a call that is merely late, on a busy machine, would hit instead of collapsing)."""
    gate = upstream.gate
    assert gate is not None, "set upstream.gate before starting the fleet"
    calls = [asyncio.create_task(get(http, replica)) for replica in replicas for _ in range(3)]
    await upstream.arrived.wait()
    await eventually(
        lambda: sum(r.proxy.coordinator.waiting for r in replicas) == len(replicas) - 1,  # type: ignore[union-attr]
        what="the other replicas to wait for the one fetching",
    )
    await eventually(
        lambda: sum(r.proxy.flights.waiting() for r in replicas) == len(calls),
        what="every call to wait on its replica's flight",
    )
    gate.set()
    return await asyncio.gather(*calls)


async def assert_fetched_again(
    http: aiohttp.ClientSession, replica: Replica, upstream: CountingUpstream
) -> None:
    """After a DELETE of ``JOB``: ``replica`` forgot it and fetches the origin's new version."""
    status, cache_status, body = await get(http, replica)
    assert status == 200 and "fwd=uri-miss" in cache_status
    assert body["version"] == 1
    assert upstream.count(JOB) == 2


async def readiness(http: aiohttp.ClientSession, replica: Replica) -> tuple[int, dict[str, Any]]:
    async with http.get(replica.url + "/readyz") as response:
        return response.status, await response.json()


@asynccontextmanager
async def replica_process(upstream: str, *options: str) -> AsyncIterator[str]:
    """``python -m proxy --upstream URL OPTIONS...`` on a free port, as an operator starts it;
    yields its base URL once it serves, and stops it (SIGTERM, then SIGKILL) afterwards.
    """
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy",
        "--upstream", upstream, "--port", str(port), "--access-log", "false", *options,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while b"Running on" not in (line := await process.stderr.readline()):
                assert line, "the replica did not start"
        drain = asyncio.create_task(_drain(process.stderr))
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
