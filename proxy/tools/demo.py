"""``python -m proxy demo``: the same polling fleet without and with the proxy, side by side.

Everything runs in this process on loopback ports: the simulated API (``proxy.tools.simulator``),
the proxy in front of it, and a fleet of pollers that behave like real clients (a fixed interval
with jitter, ``If-None-Match`` with the last ETag, stopping once the transcription is final). A
third phase runs the same pollers through the proxy as long polls (``Prefer: wait``). Each
phase polls fresh transcriptions, so the columns start from the same state. Upstream load comes
from the simulator's ``/_sim/stats``, cache results from the proxy's ``/metrics``.

The fleet (``run_fleet``) and the table (``format_table``) are reusable so a benchmark can put other
caches (nginx, Varnish) in the same table. Like a real fleet, its clients spell ``Accept-Encoding``
in the ways real HTTP libraries and browsers do (``SPELLINGS``); bytes are counted as received on
the wire, before decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TextIO, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.coding import CodingError, decode
from proxy.ops.config import env_backed_options
from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator import (
    API_PREFIX,
    TERMINAL_STATUSES,
    SimulatorConfig,
    create_simulator_app,
    listening_url,
)

T = TypeVar("T")

DEMO_TOKEN_PREFIX: Final = "demo-token-"
MAX_TOKENS: Final = 10
_SHUTDOWN_GRACE: Final = 2.0
_REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)
#: How clients in the wild spell Accept-Encoding: none, requests/httpx, aiohttp, a hand-written
#: header, an upper-cased one, curl --compressed, Chromium (``shared/api``, "Clients seen").
SPELLINGS: Final = (
    "",
    "gzip",
    "gzip, deflate",
    "gzip,deflate",
    "GZIP, DEFLATE",
    "deflate, gzip, br, zstd",
    "gzip, deflate, br, zstd",
)
#: The front real APIs sit behind: nginx with gzip on, gzip_vary on, Vary: Origin, CORS.
COMPRESSING_FRONT: Final = OriginFront(compress=("gzip",), narrow_304_vary=True, cors=True)
#: Decoded bodies the demo client reads, at most (the simulator's are far smaller).
_MAX_DECODED = 64 * 1024 * 1024


def fleet_session(connections: int, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A client session that sends only the ``Accept-Encoding`` a poller is given and counts
    bodies as they arrive (no decoding by aiohttp), with a connection per poller."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


def decoded(response: aiohttp.ClientResponse, body: bytes) -> bytes:
    """The body without its content coding (as is if aiohttp already decoded it)."""
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    if not coding or coding == "identity":
        return body
    try:
        return decode(coding, body, _MAX_DECODED)
    except CodingError:
        return body


#: The third fleet's ``Prefer: wait`` (RFC 7240): the same pollers, holding one request each.
LONG_POLL_WAIT: Final = 25


@dataclass(frozen=True)
class FleetProgress:
    elapsed: float
    requests: int
    pollers_done: int
    pollers: int


@dataclass(frozen=True)
class FleetResult:
    """What the clients saw, in seconds where timed.

    ``completion_lags``: per poller that saw a final status, how long after the transcription
    became final it noticed; a cache trades this (bounded by ``max-age``) for upstream load.
    """

    pollers: int
    pollers_done: int
    requests: int
    errors: int
    statuses: Mapping[int, int]
    bytes_received: int
    latencies: tuple[float, ...]
    elapsed: float
    completion_lags: tuple[float, ...] = ()

    def percentile(self, q: float) -> float | None:
        """Nearest-rank latency percentile, ``q`` in [0, 100]; ``None`` without any response."""
        return percentile(self.latencies, q)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Tally:
    pollers: int
    requests: int = 0
    errors: int = 0
    done: int = 0
    bytes_received: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    completion_lags: list[float] = field(default_factory=list)


def _final_at(body: bytes) -> float | None:
    """When the transcription became final (epoch seconds), or ``None`` while it is not."""
    try:
        data = json.loads(body)["data"]
        if data["status"] not in TERMINAL_STATUSES:
            return None
        return datetime.fromisoformat(data["completed_at"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


async def _poll(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    deadline: float,
    interval: float,
    jitter: float,
    rng: random.Random,
    tally: _Tally,
    accept_encoding: str | None = None,
    wait: int | None = None,
) -> None:
    """One client: first poll at a random point of the interval, then every interval ± jitter.

    With ``wait`` it long-polls: each request carries ``Prefer: wait`` with its ETag and the next
    one goes out as soon as the answer arrives (after an interval if the wait was not applied).
    """
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {token}"}
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    timeout = aiohttp.ClientTimeout(total=wait + 10.0) if wait else None
    delay = rng.uniform(0.0, interval)
    while True:
        remaining = deadline - loop.time()
        if remaining <= delay:
            return
        await asyncio.sleep(delay)
        if wait and "If-None-Match" in headers:
            headers["Prefer"] = f"wait={wait}"
        started = time.perf_counter()
        try:
            async with session.get(url, headers=headers, timeout=timeout) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
        else:
            tally.latencies.append(time.perf_counter() - started)
            tally.requests += 1
            tally.statuses[response.status] += 1
            tally.bytes_received += len(body)
            if response.status == 200:
                etag = response.headers.get("ETag")
                if etag:
                    headers["If-None-Match"] = etag
                final_at = _final_at(decoded(response, body))
                if final_at is not None:
                    tally.done += 1
                    tally.completion_lags.append(max(0.0, time.time() - final_at))
                    return
            if wait and "Preference-Applied" in response.headers:
                delay = 0.0
                continue
        delay = interval * rng.uniform(1.0 - jitter, 1.0 + jitter)


def assign_pollers(
    transcriptions: Sequence[tuple[str, str]], pollers: int
) -> list[tuple[str, str]]:
    """Spread ``pollers`` evenly over (token, id) pairs: several clients watch each one."""
    if not transcriptions:
        raise ValueError("need at least one transcription")
    return [transcriptions[i % len(transcriptions)] for i in range(pollers)]


async def run_fleet(
    base_url: str,
    tokens_and_ids: Sequence[tuple[str, str]],
    duration: float,
    *,
    session: aiohttp.ClientSession | None = None,
    interval: float = 0.5,
    jitter: float = 0.2,
    seed: int = 0,
    on_progress: Callable[[FleetProgress], None] | None = None,
    progress_every: float = 1.0,
    spellings: Sequence[str | None] = SPELLINGS,
    wait: int | None = None,
) -> FleetResult:
    """Poll until every poller saw a final status or ``duration`` seconds passed.

    One poller per (token, id) element; poller ``i`` sends ``spellings[i % len]`` as its
    ``Accept-Encoding`` (``None``: no such field). Without ``session`` a private one is made
    (``fleet_session``), with enough connections for every poller at once.
    With ``wait`` the pollers long-poll (``Prefer: wait``, RFC 7240) instead.
    """
    if session is None:
        async with fleet_session(len(tokens_and_ids) + 16, _REQUEST_TIMEOUT) as own:
            return await run_fleet(
                base_url,
                tokens_and_ids,
                duration,
                session=own,
                interval=interval,
                jitter=jitter,
                seed=seed,
                on_progress=on_progress,
                progress_every=progress_every,
                spellings=spellings,
                wait=wait,
            )
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    tally = _Tally(pollers=len(tokens_and_ids))
    started = loop.time()
    deadline = started + duration
    base = base_url.rstrip("/")

    def progress() -> FleetProgress:
        return FleetProgress(loop.time() - started, tally.requests, tally.done, tally.pollers)

    pollers = [
        asyncio.create_task(
            _poll(
                session,
                f"{base}{API_PREFIX}/{transcription_id}",
                token,
                deadline,
                interval,
                jitter,
                random.Random(rng.getrandbits(64)),
                tally,
                spellings[index % len(spellings)] if spellings else None,
                wait,
            )
        )
        for index, (token, transcription_id) in enumerate(tokens_and_ids)
    ]
    reporter = asyncio.create_task(_report(progress, on_progress, progress_every))
    try:
        _, late = await asyncio.wait(pollers, timeout=duration + _SHUTDOWN_GRACE)
    finally:
        for task in (*pollers, reporter):
            task.cancel()
        await asyncio.gather(*pollers, reporter, return_exceptions=True)
    tally.errors += len(late)
    if on_progress is not None:
        on_progress(progress())
    return FleetResult(
        pollers=tally.pollers,
        pollers_done=tally.done,
        requests=tally.requests,
        errors=tally.errors,
        statuses=dict(tally.statuses),
        bytes_received=tally.bytes_received,
        latencies=tuple(sorted(tally.latencies)),
        elapsed=loop.time() - started,
        completion_lags=tuple(sorted(tally.completion_lags)),
    )


async def _report(
    progress: Callable[[], FleetProgress],
    on_progress: Callable[[FleetProgress], None] | None,
    every: float,
) -> None:
    if on_progress is None:
        return
    while True:
        await asyncio.sleep(every)
        on_progress(progress())


@dataclass(frozen=True)
class UpstreamStats:
    """The simulator's count of what it served: the load that reached the origin."""

    requests: int
    not_modified: int
    bytes_sent: int

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> UpstreamStats:
        return cls(
            requests=int(payload["requests"]),
            not_modified=int(payload["not_modified"]),
            bytes_sent=int(payload["bytes_sent"]),
        )


@dataclass(frozen=True)
class ProxyStats:
    """The proxy's own counters, read from ``/metrics``; subtract two readings for one phase."""

    results: Mapping[str, int]
    not_modified: int
    response_bytes: int
    upstream_bytes: int
    bytes_saved: int

    @property
    def requests(self) -> int:
        return sum(self.results.values())

    @property
    def hit_ratio(self) -> float | None:
        total = self.requests
        return self.results.get("hit", 0) / total if total else None

    def since(self, earlier: ProxyStats) -> ProxyStats:
        keys = set(self.results) | set(earlier.results)
        return ProxyStats(
            results={k: self.results.get(k, 0) - earlier.results.get(k, 0) for k in keys},
            not_modified=self.not_modified - earlier.not_modified,
            response_bytes=self.response_bytes - earlier.response_bytes,
            upstream_bytes=self.upstream_bytes - earlier.upstream_bytes,
            bytes_saved=self.bytes_saved - earlier.bytes_saved,
        )


_PROXY_COUNTERS: Final = {
    "cacheproxy_not_modified_total": "not_modified",
    "cacheproxy_response_bytes_total": "response_bytes",
    "cacheproxy_upstream_bytes_total": "upstream_bytes",
    "cacheproxy_bytes_saved_total": "bytes_saved",
}


def parse_proxy_metrics(text: str) -> ProxyStats:
    """The demo's figures out of the proxy's Prometheus text; absent counters read as zero."""
    results: Counter[str] = Counter()
    totals = dict.fromkeys(_PROXY_COUNTERS.values(), 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cacheproxy_requests_total":
                results[sample.labels.get("result", "")] += int(sample.value)
            elif sample.name in _PROXY_COUNTERS:
                totals[_PROXY_COUNTERS[sample.name]] += int(sample.value)
    return ProxyStats(results=dict(results), **totals)


async def fetch_proxy_stats(session: aiohttp.ClientSession, proxy_url: str) -> ProxyStats:
    async with session.get(f"{proxy_url}/metrics") as response:
        response.raise_for_status()
        return parse_proxy_metrics(await response.text())


async def fetch_simulator_stats(session: aiohttp.ClientSession, sim_url: str) -> UpstreamStats:
    async with session.get(f"{sim_url}/_sim/stats") as response:
        response.raise_for_status()
        return UpstreamStats.from_json(await response.json())


async def reset_simulator_stats(session: aiohttp.ClientSession, sim_url: str) -> None:
    async with session.post(f"{sim_url}/_sim/reset-stats") as response:
        response.raise_for_status()


async def seed_simulator(
    session: aiohttp.ClientSession, sim_url: str, tokens: Sequence[str], count: int
) -> list[tuple[str, str]]:
    """Create ``count`` transcriptions over ``tokens`` through the simulator's control plane."""
    payload = {"tokens": list(tokens), "count": count}
    async with session.post(f"{sim_url}/_sim/seed", json=payload) as response:
        response.raise_for_status()
        created = (await response.json())["transcriptions"]
    return [(str(item["token"]), str(item["transcription_id"])) for item in created]


@dataclass(frozen=True)
class PhaseResult:
    """One column of the table: a fleet run through one path to the simulator."""

    label: str
    fleet: FleetResult
    upstream: UpstreamStats
    proxy: ProxyStats | None = None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f} s"


def _saved(baseline: PhaseResult, phase: PhaseResult) -> str:
    if phase is baseline:
        return "—"
    before, after = baseline.upstream.bytes_sent, phase.upstream.bytes_sent
    share = f" ({(before - after) / before:.1%})" if before else ""
    return human_bytes(before - after) + share


def table_rows(phases: Sequence[PhaseResult]) -> list[tuple[str, list[str]]]:
    """The table's cells; the first phase is the baseline that "bandwidth saved" compares with."""
    if not phases:
        raise ValueError("need at least one phase")
    baseline = phases[0]

    def hit_ratio(p: PhaseResult) -> str:
        ratio = p.proxy.hit_ratio if p.proxy is not None else None
        return "—" if ratio is None else f"{ratio:.1%}"

    rows: list[tuple[str, Callable[[PhaseResult], str]]] = [
        ("client requests", lambda p: str(p.fleet.requests)),
        ("upstream requests", lambda p: str(p.upstream.requests)),
        ("hit ratio", hit_ratio),
        ("304s answered locally", lambda p: str(p.proxy.not_modified if p.proxy else 0)),
        ("bytes sent to clients", lambda p: human_bytes(p.fleet.bytes_received)),
        ("bytes fetched from upstream", lambda p: human_bytes(p.upstream.bytes_sent)),
        ("bandwidth saved", lambda p: _saved(baseline, p)),
        ("p50 latency", lambda p: _ms(p.fleet.percentile(50))),
        ("p99 latency", lambda p: _ms(p.fleet.percentile(99))),
        ("pollers that saw completion", lambda p: f"{p.fleet.pollers_done}/{p.fleet.pollers}"),
        ("completion noticed after (p50)", lambda p: _s(percentile(p.fleet.completion_lags, 50))),
    ]
    if any(p.fleet.errors for p in phases):
        rows.append(("client errors", lambda p: str(p.fleet.errors)))
    return [(name, [cell(p) for p in phases]) for name, cell in rows]


def format_table(phases: Sequence[PhaseResult]) -> str:
    """A plain-text table, one column per phase, aligned for a terminal."""
    rows = table_rows(phases)
    labels = [p.label for p in phases]
    name_width = max(len(name) for name, _ in rows)
    widths = [
        max(len(label), *(len(cells[i]) for _, cells in rows)) for i, label in enumerate(labels)
    ]
    header = " " * name_width + "".join(
        f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for name, cells in rows:
        lines.append(
            f"{name:<{name_width}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class DemoOptions:
    pollers: int = 200
    transcriptions: int = 50
    duration: float = 15.0
    interval: float = 0.5
    keep_running: bool = False
    seed: int = 0
    compressing_origin: bool = False

    def __post_init__(self) -> None:
        if self.pollers < 1 or self.transcriptions < 1:
            raise ValueError("--pollers and --transcriptions must be at least 1")
        if self.duration <= 0 or self.interval <= 0:
            raise ValueError("--duration and --interval must be positive")

    @property
    def phase_seconds(self) -> float:
        return self.duration / 2

    @property
    def tokens(self) -> list[str]:
        return [f"{DEMO_TOKEN_PREFIX}{i:02d}" for i in range(min(MAX_TOKENS, self.transcriptions))]


def demo_simulator_config(options: DemoOptions) -> SimulatorConfig:
    """Timings scaled to the phase: transcriptions become final, staggered, by 60% of it.

    Through the proxy a client may see the final status up to ``max-age=5`` later than without
    it: that is what the upstream's ``Cache-Control`` allows, and the table shows it.
    """
    phase = options.phase_seconds
    count = options.transcriptions
    return SimulatorConfig(
        queued_seconds=0.1 * phase,
        processing_seconds=0.25 * phase,
        seed=options.seed,
        start_offsets=tuple(0.25 * phase * i / count for i in range(count)),
        front=COMPRESSING_FRONT if options.compressing_origin else OriginFront(),
    )


@dataclass(frozen=True)
class DemoEndpoints:
    simulator_url: str
    proxy_url: str | None
    token: str
    transcription_id: str
    completes_in: float


@asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port for the block's duration; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield listening_url(runner)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _serving_proxy(upstream: str) -> AsyncIterator[str | None]:
    """The proxy in front of ``upstream`` on our front, or ``None`` when it is not importable."""
    try:
        from proxy.front.server import FrontServer
        from proxy.ops.config import Settings
        from proxy.runtime import Runtime
    except ImportError:
        yield None
        return
    async with Runtime(Settings(upstream=upstream)) as runtime:
        server = FrontServer(runtime, access=None)
        try:
            await server.start("127.0.0.1", 0)
            yield f"http://127.0.0.1:{server.port}"
        finally:
            await server.close(drain_seconds=1.0)


async def run_phase(
    label: str,
    base_url: str,
    sim_url: str,
    options: DemoOptions,
    *,
    proxy_url: str | None = None,
    progress: TextIO | None = None,
    wait: int | None = None,
) -> PhaseResult:
    """Seed fresh transcriptions, zero the upstream counters, run the fleet, collect the figures."""
    async with fleet_session(options.pollers + 16, _REQUEST_TIMEOUT) as session:
        created = await seed_simulator(session, sim_url, options.tokens, options.transcriptions)
        await reset_simulator_stats(session, sim_url)
        before = await fetch_proxy_stats(session, proxy_url) if proxy_url else None

        live = progress is not None and progress.isatty()

        def line(p: FleetProgress) -> str:
            return (
                f"  {label:<14} {p.elapsed:5.1f}s  requests {p.requests:>7}"
                f"  pollers done {p.pollers_done:>5}/{p.pollers}"
            )

        def show(p: FleetProgress) -> None:
            if live and progress is not None:
                progress.write("\r" + line(p))
                progress.flush()

        fleet = await run_fleet(
            base_url,
            assign_pollers(created, options.pollers),
            options.phase_seconds,
            session=session,
            interval=options.interval,
            seed=options.seed,
            on_progress=show,
            wait=wait,
        )
        if progress is not None:
            final = FleetProgress(fleet.elapsed, fleet.requests, fleet.pollers_done, fleet.pollers)
            progress.write(("\r" if live else "") + line(final) + "\n")
            progress.flush()
        upstream = await fetch_simulator_stats(session, sim_url)
        proxy = None
        if proxy_url and before is not None:
            proxy = (await fetch_proxy_stats(session, proxy_url)).since(before)
    return PhaseResult(label=label, fleet=fleet, upstream=upstream, proxy=proxy)


async def _until(stop: asyncio.Event | None, work: Awaitable[T]) -> tuple[T | None, bool]:
    """Run ``work`` unless ``stop`` is set first; returns (result, stopped)."""
    task = asyncio.ensure_future(work)
    if stop is None:
        return await task, False
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if task.cancelled():
        return None, True
    return task.result(), False


def _usage(endpoints: DemoEndpoints) -> str:
    front = endpoints.proxy_url or endpoints.simulator_url
    item = f"{front}{API_PREFIX}/{endpoints.transcription_id}"
    auth = f"-H 'Authorization: Bearer {endpoints.token}'"
    lines = [
        "",
        f"simulated API: {endpoints.simulator_url}",
    ]
    if endpoints.proxy_url:
        lines.append(f"proxy:         {endpoints.proxy_url}")
    lines += [
        "",
        f"try (this transcription was created just now and is final after "
        f"{endpoints.completes_in:.1f}s):",
        f"  curl -si {item} {auth}",
        f"  curl -si {item} {auth} -H 'If-None-Match: <ETag from the previous answer>'",
        f"  curl -s {item}/subtitles/srt {auth}",
    ]
    if endpoints.proxy_url:
        lines.append(f"  curl -s {endpoints.proxy_url}/metrics | grep '^cacheproxy_'")
    lines += [
        f"  curl -s {endpoints.simulator_url}/_sim/stats",
        "",
        "press Ctrl-C to stop",
    ]
    return "\n".join(lines)


async def run_demo(
    options: DemoOptions,
    *,
    out: TextIO,
    err: TextIO,
    stop: asyncio.Event | None = None,
    on_serving: Callable[[DemoEndpoints], None] | None = None,
) -> list[PhaseResult] | None:
    """The three phases and the table; ``None`` when ``stop`` interrupted them.

    With ``keep_running`` the servers stay up after the table until ``stop`` is set.
    """
    async with serving(create_simulator_app(demo_simulator_config(options))) as sim_url:  # noqa: SIM117
        async with _serving_proxy(sim_url) as proxy_url:
            if proxy_url is None:
                err.write("proxy core not importable: running the fleet without the proxy only\n")
            origin = (
                "a compressing origin (nginx-like)" if options.compressing_origin else "the API"
            )
            out.write(
                f"polling fleet: {options.pollers} pollers, {options.transcriptions} "
                f"transcriptions, {options.phase_seconds:g}s per phase, every "
                f"{options.interval:g}s, {len(SPELLINGS)} spellings of Accept-Encoding, "
                f"in front of {origin}\n"
            )
            out.flush()

            async def phases() -> list[PhaseResult]:
                results = [
                    await run_phase("without proxy", sim_url, sim_url, options, progress=err)
                ]
                if proxy_url is not None:
                    results.append(
                        await run_phase(
                            "with proxy",
                            proxy_url,
                            sim_url,
                            options,
                            proxy_url=proxy_url,
                            progress=err,
                        )
                    )
                    results.append(
                        await run_phase(
                            "long poll",
                            proxy_url,
                            sim_url,
                            options,
                            proxy_url=proxy_url,
                            progress=err,
                            wait=LONG_POLL_WAIT,
                        )
                    )
                return results

            results, stopped = await _until(stop, phases())
            if stopped or results is None:
                err.write("\ninterrupted\n")
                return None
            out.write("\n" + format_table(results) + "\n")
            out.flush()
            if options.keep_running:
                await _keep_serving(options, sim_url, proxy_url, out, stop, on_serving)
            return results


async def _keep_serving(
    options: DemoOptions,
    sim_url: str,
    proxy_url: str | None,
    out: TextIO,
    stop: asyncio.Event | None,
    on_serving: Callable[[DemoEndpoints], None] | None,
) -> None:
    async with aiohttp.ClientSession(timeout=_REQUEST_TIMEOUT) as session:
        ((token, transcription_id),) = await seed_simulator(session, sim_url, options.tokens[:1], 1)
    config = demo_simulator_config(options)
    completes_in = config.queued_seconds + config.processing_seconds + config.start_offsets[0]
    endpoints = DemoEndpoints(sim_url, proxy_url, token, transcription_id, completes_in)
    out.write(_usage(endpoints) + "\n")
    out.flush()
    if on_serving is not None:
        on_serving(endpoints)
    await (stop or asyncio.Event()).wait()


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for ``python -m proxy demo``; each also defaults from ``DEMO_<FLAG>``."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m proxy demo",
        description="Run the simulated API, the proxy and a polling fleet, and compare.",
    )

    option = env_backed_options(parser, environ, "DEMO_")
    option("--pollers", int, defaults.pollers, "concurrent polling clients")
    option("--transcriptions", int, defaults.transcriptions, "transcriptions they poll")
    option(
        "--duration",
        float,
        defaults.duration,
        "seconds for the first two phases at most (the long-poll phase takes half of it again); "
        "a phase ends once every poller saw a final status",
    )
    option("--interval", float, defaults.interval, "seconds between a client's polls (±20%%)")
    option("--seed", int, defaults.seed, "random seed for the simulator and the fleet")
    parser.add_argument(
        "--compressing-origin",
        action="store_true",
        default=environ.get("DEMO_COMPRESSING_ORIGIN", "").lower() in ("1", "true", "yes", "on"),
        help="put the simulated API behind an nginx-like front: gzip with Vary: Accept-Encoding "
        "on 200s only, Vary: Origin and CORS ($DEMO_COMPRESSING_ORIGIN)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the table, keep the proxy and the simulator up until Ctrl-C",
    )
    return parser


async def _main(options: DemoOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        results = await run_demo(options, out=sys.stdout, err=sys.stderr, stop=stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 130 if results is None else 0


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """``python -m proxy demo``: no network, no credentials; exits 0 after cleaning up."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    try:
        options = DemoOptions(
            pollers=args.pollers,
            transcriptions=args.transcriptions,
            duration=args.duration,
            interval=args.interval,
            keep_running=args.keep_running,
            seed=args.seed,
            compressing_origin=args.compressing_origin,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_main(options))
