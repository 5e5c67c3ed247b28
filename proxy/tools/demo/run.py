"""The demo's four phases: the same polling fleet without the proxy, through it, long-polling, and
subscribed to server-sent events.

The simulated API runs in this process on a free loopback port; the proxy runs as
``python -m proxy`` in a process of its own (``proxy.tools.demo.process``), exactly as a user
would start it. Each phase polls transcriptions created when it starts, so the columns start from
the same state. Upstream load comes from the simulator's ``/_sim/stats``, cache results from the
proxy's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO, TypeVar

import aiohttp

from proxy.tools.demo.process import RunningProxy, running_proxy
from proxy.tools.demo.stats import (
    fetch_proxy_stats,
    fetch_simulator_stats,
    reset_simulator_stats,
)
from proxy.tools.demo.table import (
    FleetSetting,
    PhaseResult,
    format_notes,
    format_table,
    wrapped,
)
from proxy.tools.fleet import (
    LONG_POLL_WAIT,
    REQUEST_TIMEOUT,
    SPELLINGS,
    FleetProgress,
    assign_pollers,
    fleet_session,
    run_fleet,
    seed_simulator,
)
from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator import API_PREFIX, SimulatorConfig, create_simulator_app, serving

T = TypeVar("T")

DEMO_TOKEN_PREFIX: Final = "demo-token-"
MAX_TOKENS: Final = 10
#: The front real APIs sit behind: nginx with gzip on, gzip_vary on, Vary: Origin, CORS.
COMPRESSING_FRONT: Final = OriginFront(compress=("gzip",), narrow_304_vary=True, cors=True)


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
        """The longest a phase may last; it ends sooner once every poller saw a final status."""
        return self.duration / 2

    @property
    def tokens(self) -> list[str]:
        return [f"{DEMO_TOKEN_PREFIX}{i:02d}" for i in range(min(MAX_TOKENS, self.transcriptions))]


def demo_simulator_config(options: DemoOptions) -> SimulatorConfig:
    """Timings scaled to the phase: transcriptions become final, staggered, by 60% of it.

    Through the proxy a client may see the final status up to ``max-age=5`` later than without
    it: that is what the upstream's ``Cache-Control`` allows, and the table's notes say so.
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
    proxy_pid: int | None = None


async def run_phase(
    label: str,
    base_url: str,
    sim_url: str,
    options: DemoOptions,
    *,
    proxy_url: str | None = None,
    progress: TextIO | None = None,
    wait: int | None = None,
    events: bool = False,
) -> PhaseResult:
    """Seed fresh transcriptions, zero the upstream counters, run the fleet, collect the figures."""
    async with fleet_session(options.pollers + 16, REQUEST_TIMEOUT) as session:
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
            events=events,
        )
        if progress is not None:
            final = FleetProgress(fleet.elapsed, fleet.requests, fleet.pollers_done, fleet.pollers)
            progress.write(("\r" if live else "") + line(final) + "\n")
            progress.flush()
        upstream = await fetch_simulator_stats(session, sim_url)
        proxy = None
        if proxy_url and before is not None:
            proxy = (await fetch_proxy_stats(session, proxy_url)).since(before)
    return PhaseResult(
        label=label, fleet=fleet, upstream=upstream, proxy=proxy, wait=wait, events=events
    )


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


def _usage(endpoints: DemoEndpoints, proxy: RunningProxy) -> str:
    front = endpoints.proxy_url or endpoints.simulator_url
    item = f"{front}{API_PREFIX}/{endpoints.transcription_id}"
    auth = f"-H 'Authorization: Bearer {endpoints.token}'"
    lines = [
        "",
        f"simulated API: {endpoints.simulator_url}",
        f"proxy:         {endpoints.proxy_url} (pid {proxy.pid}, log {proxy.log_path})",
        "",
        f"try (this transcription was created just now and is final after "
        f"{endpoints.completes_in:.1f}s):",
        f"  curl -si {item} {auth}",
        f"  curl -si {item} {auth} -H 'If-None-Match: <ETag from the previous answer>'",
        f"  curl -si {item} {auth} -H 'If-None-Match: <ETag>' -H 'Prefer: wait=25'",
        f"  curl -sN {item} {auth} -H 'Accept: text/event-stream'",
        f"  curl -s {item}/subtitles/srt {auth}",
        f"  curl -s {endpoints.proxy_url}/metrics | grep '^cacheproxy_'",
        f"  curl -s {endpoints.simulator_url}/_sim/stats",
        "",
        "press Ctrl-C to stop",
    ]
    return "\n".join(lines)


def _header(options: DemoOptions, proxy: RunningProxy) -> str:
    origin = "a compressing origin (nginx-like)" if options.compressing_origin else "the API"
    proxy_line = (
        f"proxy: python -m proxy {shlex.join(proxy.command[3:])} (pid {proxy.pid}; its default "
        "settings, PROXY_* variables apply)"
    )
    fleet_line = (
        f"polling fleet: {options.pollers} pollers on {options.transcriptions} transcriptions, "
        f"each asking every {options.interval:g}s (±20%), {len(SPELLINGS)} spellings of "
        f"Accept-Encoding, in front of {origin}; four phases (polling without and with the "
        "proxy, long polls, server-sent events), each ending once every poller saw the final "
        f"status or after {options.phase_seconds:g}s"
    )
    return "\n".join([*wrapped(proxy_line), *wrapped(fleet_line)]) + "\n"


async def run_demo(
    options: DemoOptions,
    *,
    out: TextIO,
    err: TextIO,
    stop: asyncio.Event | None = None,
    on_serving: Callable[[DemoEndpoints], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[PhaseResult] | None:
    """The four phases, the table and its notes; ``None`` when ``stop`` interrupted them.

    ``environ`` is the proxy process's environment (its ``PROXY_*`` settings apply). With
    ``keep_running`` the servers stay up after the table until ``stop`` is set.
    """
    config = demo_simulator_config(options)
    with tempfile.TemporaryDirectory(prefix="aitronos-demo-") as workdir:
        async with (
            serving(create_simulator_app(config)) as sim_url,
            running_proxy(sim_url, Path(workdir) / "proxy.log", environ=environ or {}) as proxy,
        ):
            out.write(_header(options, proxy))
            out.flush()
            proxy_url = proxy.url

            async def phases() -> list[PhaseResult]:
                return [
                    await run_phase("without proxy", sim_url, sim_url, options, progress=err),
                    await run_phase(
                        "with proxy", proxy_url, sim_url, options, proxy_url=proxy_url, progress=err
                    ),
                    await run_phase(
                        "long poll",
                        proxy_url,
                        sim_url,
                        options,
                        proxy_url=proxy_url,
                        progress=err,
                        wait=LONG_POLL_WAIT,
                    ),
                    await run_phase(
                        "events (SSE)",
                        proxy_url,
                        sim_url,
                        options,
                        proxy_url=proxy_url,
                        progress=err,
                        events=True,
                    ),
                ]

            results, stopped = await _until(stop, phases())
            if stopped or results is None:
                err.write("\ninterrupted\n")
                return None
            setting = FleetSetting(options.interval, options.phase_seconds, config.pending_max_age)
            out.write("\n" + format_table(results) + "\n\n" + format_notes(results, setting) + "\n")
            out.flush()
            if options.keep_running:
                await _keep_serving(options, sim_url, proxy, out, stop, on_serving)
            return results


async def _keep_serving(
    options: DemoOptions,
    sim_url: str,
    proxy: RunningProxy,
    out: TextIO,
    stop: asyncio.Event | None,
    on_serving: Callable[[DemoEndpoints], None] | None,
) -> None:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        ((token, transcription_id),) = await seed_simulator(session, sim_url, options.tokens[:1], 1)
    config = demo_simulator_config(options)
    completes_in = config.queued_seconds + config.processing_seconds + config.start_offsets[0]
    endpoints = DemoEndpoints(
        sim_url, proxy.url, token, transcription_id, completes_in, proxy_pid=proxy.pid
    )
    out.write(_usage(endpoints, proxy) + "\n")
    out.flush()
    if on_serving is not None:
        on_serving(endpoints)
    await (stop or asyncio.Event()).wait()
