"""``python -m bench.longpoll``: the same fleet polling every 0.5 s and long-polling, same run.

One simulator and one proxy process; two fleets of the demo's pollers (``proxy.tools.fleet``) on
fresh transcriptions each: one polls every ``interval`` through the proxy, the other sends
``Prefer: wait=25`` with ``If-None-Match`` (RFC 7240) and re-asks as soon as it is answered.
Compared: client requests, completion noticed (p50, after ``completed_at``), upstream requests per
ID per ``max-age`` window (1.0 is the floor, as in ``bench.fleet``) and the proxy's CPU time
(``/proc``) per client per minute. Writes ``results.json`` and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import client, common, processes, standalone
from bench.common import PollerRun
from bench.fleet import id_floors
from bench.processes import Pinning, Service
from bench.standalone import Standalone
from proxy.tools.fleet import (
    LONG_POLL_WAIT,
    assign_pollers,
    fleet_session,
    percentile,
    run_fleet,
    seed_simulator,
)

WAIT = LONG_POLL_WAIT


@dataclass(frozen=True)
class Scale(common.Staggered):
    pollers: int
    tokens: int
    interval: float


SCALES = {
    "tiny": Scale(pollers=20, transcriptions=4, tokens=2, interval=0.2,
                  queued=0.0, processing=1.0, stagger=0.5, max_age=1),
    "full": Scale(pollers=1000, transcriptions=50, tokens=10, interval=0.5,
                  queued=1.0, processing=12.0, stagger=4.0, max_age=5),
}  # fmt: skip


@dataclass
class Run(PollerRun):
    floor: int = 0
    completion_lag_p50_s: float | None = None
    completion_lag_p99_s: float | None = None
    proxy_cpu_seconds: float = 0.0
    seconds: float = 0.0
    waiting_peak: float = 0.0
    rss_growth_at_peak: int = 0

    @property
    def bytes_per_held(self) -> float:
        """Resident memory per held request (its connection included), at the peak."""
        return self.rss_growth_at_peak / self.waiting_peak if self.waiting_peak else 0.0

    @property
    def per_window(self) -> float:
        return self.upstream_requests / self.floor if self.floor else 0.0

    @property
    def cpu_per_client_minute_ms(self) -> float:
        minutes = self.seconds / 60
        return 1000 * self.proxy_cpu_seconds / self.pollers / minutes if minutes else 0.0


async def _watch_waiting(proxy: Service, peak: list[float], stop: asyncio.Event) -> None:
    """The highest ``cacheproxy_waiting_requests`` seen while the fleet runs, and the proxy's
    resident memory at that moment."""
    while not stop.is_set():
        value = await asyncio.to_thread(
            client.metric_value, proxy.url, "cacheproxy_waiting_requests"
        )
        if (value or 0.0) > peak[0]:
            peak[0], peak[1] = value or 0.0, processes.rss_bytes(proxy.pid)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)  # scraping costs the proxy CPU too


async def run_one(
    name: str, proxy: Service, simulator_url: str, scale: Scale, wait: int | None
) -> Run:
    timeout = aiohttp.ClientTimeout(total=15.0)
    # The demo's clients: their own Accept-Encoding spellings, bodies counted as received.
    async with fleet_session(scale.pollers + 16, timeout) as session:
        tokens = [f"longpoll-{i}" for i in range(scale.tokens)]
        created = await seed_simulator(session, simulator_url, tokens, scale.transcriptions)
        client.reset_stats(simulator_url)
        started_wall = time.time()
        duration = scale.poll_seconds(scale.interval)
        cpu_before = processes.cpu_seconds(proxy.pid)
        rss_before = processes.rss_bytes(proxy.pid)
        peak, stop = [0.0, float(rss_before)], asyncio.Event()
        watcher = asyncio.create_task(_watch_waiting(proxy, peak, stop))
        fleet = await run_fleet(
            proxy.url,
            assign_pollers(created, scale.pollers),
            duration,
            session=session,
            interval=scale.interval,
            seed=scale.pollers,
            wait=wait,
        )
        cpu = processes.cpu_seconds(proxy.pid) - cpu_before
        stop.set()
        await watcher
        during = client.stats(simulator_url, per_id=True)
    run = Run(name, scale.pollers, scale.transcriptions)
    run.client_requests = fleet.requests
    run.client_errors = fleet.errors
    run.pollers_done = fleet.pollers_done
    run.upstream_requests = sum(during["transcription_gets"].values())
    run.completion_lag_p50_s = percentile(fleet.completion_lags, 50)
    run.completion_lag_p99_s = percentile(fleet.completion_lags, 99)
    run.proxy_cpu_seconds = cpu
    run.seconds = fleet.elapsed
    run.waiting_peak = peak[0]
    run.rss_growth_at_peak = int(peak[1]) - rss_before
    run.floor = sum(id_floors(simulator_url, created, started_wall, scale.max_age).values())
    return run


def measure(workdir: Path, scale: Scale, pinning: Pinning, log: Callable[[str], None]) -> list[Run]:
    simulator = common.start_staggered(workdir, scale, pinning)
    runs = []
    try:
        proxy = processes.start_proxy(
            workdir, simulator.url, pinning, options=["--access-log", "false"]
        )
        try:
            for name, wait in ((f"polling every {scale.interval:g}s", None), ("long poll", WAIT)):
                # uvloop for the fleet, so that the polling clients keep their pace.
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    run = runner.run(run_one(name, proxy, simulator.url, scale, wait))
                runs.append(run)
                log(
                    f"longpoll: {name}: {run.client_requests} client requests, "
                    f"{run.upstream_requests} upstream ({run.per_window:.2f} per ID per window), "
                    f"completion p50 {run.completion_lag_p50_s}, CPU {run.proxy_cpu_seconds:.2f}s"
                )
        finally:
            proxy.stop()
    finally:
        simulator.stop()
    return runs


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def targets(runs: list[Run]) -> list[tuple[str, str, bool]]:
    polling, held = runs
    fewer = polling.client_requests / held.client_requests if held.client_requests else 0.0
    lag_p, lag_h = polling.completion_lag_p50_s, held.completion_lag_p50_s
    cpu_ratio = (
        polling.cpu_per_client_minute_ms / held.cpu_per_client_minute_ms
        if held.cpu_per_client_minute_ms
        else 0.0
    )
    return [
        ("≥ 10x fewer client requests", f"{fewer:.1f}x", fewer >= 10),
        (
            "completion noticed no later (p50)",
            f"{lag_h:.2f} s vs {lag_p:.2f} s" if lag_h is not None and lag_p is not None else "—",
            lag_h is not None and lag_p is not None and lag_h <= lag_p,
        ),
        (
            "≤ 1.0 upstream request per ID per window",
            f"{held.per_window:.2f}",
            held.per_window <= 1.0,
        ),
        ("proxy CPU per client per minute ≥ 5x lower", f"{cpu_ratio:.1f}x", cpu_ratio >= 5),
    ]


def markdown(runs: list[Run], meta: dict[str, Any]) -> str:
    lines = common.heading("Long polling against polling, same run", meta)
    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("pollers / transcriptions", lambda r: f"{r.pollers} / {r.transcriptions}"),
        ("client requests", lambda r: f"{r.client_requests:,}"),
        ("client errors", lambda r: str(r.client_errors)),
        ("pollers that saw completion", lambda r: f"{r.pollers_done}/{r.pollers}"),
        ("completion noticed after (p50)", lambda r: _s(r.completion_lag_p50_s)),
        ("completion noticed after (p99)", lambda r: _s(r.completion_lag_p99_s)),
        ("upstream requests", lambda r: str(r.upstream_requests)),
        ("upstream requests per ID per max-age window", lambda r: f"{r.per_window:.2f}"),
        ("proxy CPU", lambda r: f"{r.proxy_cpu_seconds:.2f} s over {r.seconds:.1f} s"),
        ("proxy CPU per client per minute", lambda r: f"{r.cpu_per_client_minute_ms:.2f} ms"),
        ("held requests (peak)", lambda r: f"{r.waiting_peak:.0f}"),
        (
            "proxy memory per held request (connection included)",
            lambda r: f"{r.bytes_per_held / 1024:.1f} KiB" if r.waiting_peak else "—",
        ),
    ]
    lines += common.table(runs, rows)
    lines += ["", "| goal | measured | |", "|---|---:|---|"]
    for goal, value, ok in targets(runs):
        lines.append(f"| {goal} | {value} | {'met' if ok else '**not met**'} |")
    lines += common.machine_lines(meta)
    return "\n".join(lines) + "\n"


_s = common.seconds


def main(argv: list[str] | None = None) -> int:
    args = standalone.parser("longpoll", __doc__, scales=SCALES).parse_args(argv)
    bench = Standalone.start("longpoll", args, argv)
    with bench.workdir() as workdir:
        runs = measure(workdir, SCALES[args.scale], bench.pinning, common.log_to_stderr)
    payload = {
        "runs": [
            asdict(run)
            | {
                "per_window": run.per_window,
                "cpu_per_client_minute_ms": run.cpu_per_client_minute_ms,
                "bytes_per_held": run.bytes_per_held,
            }
            for run in runs
        ],
        "targets": [{"goal": g, "measured": v, "met": ok} for g, v, ok in targets(runs)],
    }
    return bench.finish(payload, lambda meta: markdown(runs, meta))


if __name__ == "__main__":
    sys.exit(main())
