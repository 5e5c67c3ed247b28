"""``--workers N``: real ``python -m proxy`` supervisors, their worker processes and private Redis.

Which worker served what is read from the proxy's own outputs (``/metrics``' ``worker`` label,
the access log's ``worker=<slot>`` tag) or, for requests still in flight, from which worker
process owns the connection the origin sees (``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from proxy.ops.config import ConfigError, parse_settings
from proxy.ops.worker_metrics import merge_expositions
from proxy.tools.replicas import LocalRedis
from proxy.tools.simulator import SimulatorConfig, create_simulator_app
from tests.conftest import ServeOrigin
from tests.support.process import DEADLINE, ProcessLog, proxy_env, spawn_proxy
from tests.support.waiting import eventually

pytest_plugins = ["tests.support.redis_fixtures"]

TOKEN = {"Authorization": "Bearer alice"}

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="SO_REUSEPORT balancing and /proc are Linux's"
)


@dataclass
class Fleet:
    process: asyncio.subprocess.Process
    log: ProcessLog
    url: str

    async def pids(self) -> dict[int, int]:
        """The pid serving each slot, as the supervisor last logged it."""
        await self.log.wait_for(r"Running on \S+ \(proxy, \d+ workers\)")
        pids: dict[int, int] = {}
        for line in self.log.lines:
            if match := re.search(r"worker (\d+) \(pid (\d+)\) is serving", line):
                pids[int(match.group(1))] = int(match.group(2))
        return pids


@pytest.fixture
async def start_fleet() -> AsyncIterator[Callable[..., Awaitable[Fleet]]]:
    started: list[Fleet] = []

    async def start(upstream_url: str, *flags: str) -> Fleet:
        process, log = await spawn_proxy("--upstream", upstream_url, "--port", "0", *flags)
        fleet = Fleet(process, log, "")
        started.append(fleet)
        match = await log.wait_for(r"Running on (http://\S+) \(proxy, \d+ workers\)")
        fleet.url = match.group(1)
        return fleet

    yield start
    for fleet in started:
        if fleet.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                fleet.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(DEADLINE):
                await fleet.process.wait()
        async with asyncio.timeout(DEADLINE):  # until every worker let go of stderr
            await fleet.log.close()


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    server = TestServer(create_simulator_app(SimulatorConfig(queued_seconds=3600)))
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def create_transcription(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(
        f"{url}/v1/audio/transcribe",
        json={"audio_url": "https://example.com/a.mp3", "model_key": "m"},
        headers=TOKEN,
    ) as response:
        assert response.status == 201
        transcription_id: str = (await response.json())["data"]["transcription_id"]
        return transcription_id


async def get_once(url: str) -> str:
    """One GET on a connection of its own (so the kernel may pick any worker)."""
    async with aiohttp.ClientSession() as session, session.get(url, headers=TOKEN) as response:
        assert response.status == 200
        await response.read()
        return response.headers["Cache-Status"]


async def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """``cacheproxy_requests_total`` as ``{(worker, route, result): value}``."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cacheproxy_requests_total":
                labels = sample.labels
                values[labels["worker"], labels["route"], labels["result"]] = sample.value
    return values


async def test_workers_share_one_cache_so_the_origin_sees_one_request(
    simulator: str, start_fleet: Callable[..., Awaitable[Fleet]]
) -> None:
    fleet = await start_fleet(simulator, "--workers", "2", "--access-log", "false")
    async with aiohttp.ClientSession() as session:
        transcription = await create_transcription(session, fleet.url)
        path = f"{fleet.url}/v1/audio/transcribe/{transcription}"

        statuses = [await get_once(path) for _ in range(30)]
        counts = await scrape(fleet.url)
        served = {worker: counts[worker, "transcription", "hit"] for worker in ("0", "1")}
        misses = counts["0", "transcription", "miss"] + counts["1", "transcription", "miss"]
        # Both workers served, one fetched: the other's hits are the first one's miss.
        assert served["0"] > 0 and served["1"] > 0, counts
        assert misses == 1
        assert sum("hit" in status for status in statuses) == 29

        together = await create_transcription(session, fleet.url)
        concurrent = await asyncio.gather(
            *(get_once(f"{fleet.url}/v1/audio/transcribe/{together}") for _ in range(40))
        )
        assert len(concurrent) == 40

        async with session.get(f"{simulator}/_sim/stats?per_id=1") as response:
            gets = (await response.json())["transcription_gets"]
    assert gets == {transcription: 1, together: 1}


async def test_with_redis_url_the_workers_share_that_redis_and_start_none(
    simulator: str, start_fleet: Callable[..., Awaitable[Fleet]], local_redis: LocalRedis
) -> None:
    fleet = await start_fleet(
        simulator,
        "--workers",
        "2",
        "--access-log",
        "false",
        "--redis-url",
        local_redis.url,
        "--redis-prefix",
        "workers",
    )
    async with aiohttp.ClientSession() as session:
        transcription = await create_transcription(session, fleet.url)
        for _ in range(20):
            await get_once(f"{fleet.url}/v1/audio/transcribe/{transcription}")
        async with session.get(f"{simulator}/_sim/stats?per_id=1") as response:
            gets = (await response.json())["transcription_gets"]
    counts = await scrape(fleet.url)
    assert counts["0", "transcription", "hit"] > 0 and counts["1", "transcription", "hit"] > 0
    assert gets == {transcription: 1}
    client = Redis.from_url(local_redis.url)
    try:
        assert [key async for key in client.scan_iter(match="workers:*")]
    finally:
        await client.aclose()
    assert not any("private redis-server" in line for line in fleet.log.lines)


async def test_admin_port_serves_health_and_every_workers_metrics(
    simulator: str, start_fleet: Callable[..., Awaitable[Fleet]]
) -> None:
    fleet = await start_fleet(
        simulator, "--workers", "2", "--admin-port", "0", "--access-log", "false"
    )
    admin = await fleet.log.wait_for(r"Running on (http://\S+) \(admin\)")
    admin_url = admin.group(1)
    async with aiohttp.ClientSession() as session:
        transcription = await create_transcription(session, fleet.url)
        for _ in range(10):
            await get_once(f"{fleet.url}/v1/audio/transcribe/{transcription}")
        async with session.get(f"{admin_url}/healthz") as health:
            assert health.status == 200
        async with session.get(f"{fleet.url}/metrics") as public:
            assert public.status == 404
    for _ in range(5):  # any worker may answer: each must show both
        counts = await scrape(admin_url)
        assert {worker for worker, _route, _result in counts} == {"0", "1"}
        assert sum(counts.values()) == 11  # the POST and ten GETs


@dataclass
class HeldOrigin:
    """An origin holding every answer until ``release``, noting the proxy's connection ports."""

    ports: list[int] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        await self.release.wait()
        return web.Response(
            body=b"done " + request.path.encode(), headers={"Cache-Control": "no-store"}
        )


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def owner_of_local_port(port: int, pids: dict[int, int]) -> int | None:
    """The slot whose process owns the TCP socket with local ``port`` (from /proc/net/tcp).
    Other sockets on the machine may have that local port on another address: every one is
    looked for among the workers' sockets."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            if int(columns[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(columns[9])
    for slot, pid in pids.items():
        if inodes & socket_inodes(pid):
            return slot
    return None


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_zero(
    start_fleet: Callable[..., Awaitable[Fleet]], serve_origin: ServeOrigin
) -> None:
    origin = HeldOrigin()
    upstream = await serve_origin(origin.handle)
    try:
        fleet = await start_fleet(upstream, "--workers", "2", "--drain-seconds", "10")
        pids = await fleet.pids()
        holders: list[int | None] = []
        requests: list[asyncio.Task[str]] = []

        async def slow(index: int) -> str:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{fleet.url}/slow/{index}") as response,
            ):
                return f"{response.status} {(await response.read()).decode()}"

        # Open slow requests on fresh connections until each worker holds at least two.
        while min(holders.count(0), holders.count(1)) < 2:
            assert len(requests) < 60, holders
            requests.append(asyncio.create_task(slow(len(requests))))
            await eventually(lambda: len(origin.ports) == len(requests), within=DEADLINE)
            holders.append(owner_of_local_port(origin.ports[-1], pids))

        fleet.process.send_signal(signal.SIGTERM)
        for slot in (0, 1):
            await fleet.log.wait_for(rf"worker={slot} draining")
        origin.release.set()
        async with asyncio.timeout(DEADLINE):
            results = await asyncio.gather(*requests)
            returncode = await fleet.process.wait()
    finally:
        origin.release.set()
    assert results == [f"200 done /slow/{i}" for i in range(len(requests))]
    assert returncode == 0
    await fleet.log.wait_for("all workers stopped")


async def test_a_worker_that_dies_is_reported_and_replaced(
    simulator: str, start_fleet: Callable[..., Awaitable[Fleet]]
) -> None:
    fleet = await start_fleet(simulator, "--workers", "2", "--access-log", "false")
    victim = (await fleet.pids())[1]
    os.kill(victim, signal.SIGKILL)
    await fleet.log.wait_for(rf"worker 1 \(pid {victim}\) was killed by SIGKILL unexpectedly")

    def replaced() -> bool:
        return any(
            re.search(r"worker 1 \(pid (\d+)\) is serving", line) and f"pid {victim})" not in line
            for line in fleet.log.lines
        )

    await eventually(replaced, within=DEADLINE, what="a new worker 1")
    async with aiohttp.ClientSession() as session:
        transcription = await create_transcription(session, fleet.url)
    for _ in range(20):
        await get_once(f"{fleet.url}/v1/audio/transcribe/{transcription}")
    counts = await scrape(fleet.url)
    assert {worker for worker, _route, _result in counts} == {"0", "1"}
    fleet.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(DEADLINE):
        assert await fleet.process.wait() == 0


async def test_workers_and_the_private_redis_do_not_outlive_a_killed_supervisor(
    simulator: str, start_fleet: Callable[..., Awaitable[Fleet]]
) -> None:
    fleet = await start_fleet(simulator, "--workers", "2", "--access-log", "false")
    pids = list((await fleet.pids()).values())
    redis = await fleet.log.wait_for(r"private redis-server \(pid (\d+)")
    pids += [int(redis.group(1)), fleet.process.pid]
    # Not ``process.wait()``: on Python 3.11 it also waits for every holder of the stderr pipe.
    fleet.process.kill()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    await eventually(
        lambda: not any(alive(pid) for pid in pids),
        within=DEADLINE,
        what=lambda: [pid for pid in pids if alive(pid)],
    )
    # The supervisor had no chance to remove its directory (sockets only): the test does.
    shared = await fleet.log.wait_for(r"through redis at unix://(\S+)/redis\.sock")
    shutil.rmtree(shared.group(1), ignore_errors=True)


def test_workers_auto_is_the_number_of_usable_cpus() -> None:
    assert parse_settings(["--workers", "auto"], {}).workers == len(os.sched_getaffinity(0))
    assert parse_settings([], {"PROXY_WORKERS": "3"}).workers == 3
    assert parse_settings([], {}).workers == 1


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "100000", ""])
def test_a_bad_worker_count_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--workers: expected"):
        parse_settings(["--workers", value], {})
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--workers", value],
        env=proxy_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--workers: expected" in result.stderr


def test_several_workers_without_redis_server_are_refused_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--workers", "2", "--port", "0"],
        env=proxy_env(PATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "redis-server is not on PATH" in result.stderr and "--redis-url" in result.stderr


def test_merged_exposition_labels_every_sample_with_its_worker() -> None:
    text = (
        "# HELP cacheproxy_requests_total Client requests.\n"
        "# TYPE cacheproxy_requests_total counter\n"
        'cacheproxy_requests_total{result="hit"} {value}\n'
        "# HELP cacheproxy_cache_bytes Bytes.\n"
        "# TYPE cacheproxy_cache_bytes gauge\n"
        "cacheproxy_cache_bytes {value}\n"
    )
    merged = merge_expositions(
        [("0", text.replace("{value}", "3.0")), ("1", text.replace("{value}", "4.0"))]
    ).decode()
    assert merged.count("# TYPE cacheproxy_requests_total counter") == 1
    assert 'cacheproxy_requests_total{result="hit",worker="0"} 3.0' in merged
    assert 'cacheproxy_requests_total{result="hit",worker="1"} 4.0' in merged
    assert 'cacheproxy_cache_bytes{worker="1"} 4.0' in merged
