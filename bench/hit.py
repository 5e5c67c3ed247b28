"""The cache-hit path: throughput and latency at a fixed concurrency, measured with wrk.

Every system answers the same request (one completed transcription, one fixed bearer token) from
its cache; the simulator behind them counts upstream requests during the run to prove it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import client, container, processes
from bench.common import Bench
from bench.processes import Pinning, Server, Service, Unavailable

TOKEN = "bench-hit-token"
PROXY = "aitronos-cache-proxy"
IMAGE = f"{PROXY} (container image)"

WRK_REPORT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d," ..
    "\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class HitScale:
    duration: float
    warmup: float
    connections: int
    rounds: int


SCALES = {
    "tiny": HitScale(duration=1.0, warmup=0.0, connections=50, rounds=1),
    "full": HitScale(duration=10.0, warmup=2.0, connections=50, rounds=3),
}


@dataclass
class WrkRun:
    requests: int
    duration_s: float
    bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    upstream_requests: int
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU time per answered request: robust to noise that steals wall time."""
        return 1e6 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass
class HitResult:
    system: str
    ceiling: str | None
    note: str
    runs: list[WrkRun]
    skipped: str | None = None

    def median(self) -> WrkRun | None:
        """The run with the median throughput, so one noisy round neither helps nor hurts."""
        if not self.runs:
            return None
        ordered = sorted(self.runs, key=lambda run: run.rps)
        return ordered[(len(ordered) - 1) // 2]

    def to_json(self) -> dict[str, Any]:
        chosen = self.median()
        return {
            "system": self.system,
            "ceiling": self.ceiling,
            "note": self.note,
            "skipped": self.skipped,
            "runs": [_run_json(run) for run in self.runs],
            "median": None if chosen is None else _run_json(chosen),
            "rps_spread": [min(r.rps for r in self.runs), max(r.rps for r in self.runs)]
            if self.runs
            else None,
        }


def _run_json(run: WrkRun) -> dict[str, Any]:
    return asdict(run) | {"rps": run.rps, "cpu_us_per_request": run.cpu_us_per_request}


def run_wrk(
    wrk: str,
    url: str,
    headers: dict[str, str],
    *,
    duration: float,
    connections: int,
    script: Path,
    pinning: Pinning,
) -> dict[str, Any]:
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command += ["-s", str(script), url]
    result = subprocess.run(
        pinning.wrap(command, client=True),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            return parsed
    raise Unavailable(f"wrk failed ({result.returncode}): {result.stderr.strip()[-300:]}")


def run_once(
    wrk: str,
    service: Server,
    simulator: Service,
    path: str,
    headers: dict[str, str],
    scale: HitScale,
    script: Path,
    pinning: Pinning,
) -> WrkRun:
    """One wrk run (after a warm-up), with the server's CPU time and the upstream's count."""
    url = service.url + path
    options: dict[str, Any] = {
        "connections": scale.connections,
        "script": script,
        "pinning": pinning,
    }
    if scale.warmup:
        run_wrk(wrk, url, headers, duration=scale.warmup, **options)
    upstream_before = client.stats(simulator.url)["requests"]
    cpu_before = service.cpu_seconds()
    raw = run_wrk(wrk, url, headers, duration=scale.duration, **options)
    cpu_after = service.cpu_seconds()
    upstream_after = client.stats(simulator.url)["requests"]
    return WrkRun(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        bytes=raw["bytes"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
        upstream_requests=upstream_after - upstream_before,
        cpu_seconds=cpu_after - cpu_before,
    )


def capture_response(url: str, headers: dict[str, str], path: Path) -> None:
    """Save one hit's status, headers and body for the bare-aiohttp ceiling to replay."""
    status, got_headers, body = client.http_get(url, headers)
    path.write_text(
        json.dumps(
            {
                "status": status,
                "headers": got_headers,
                "body": base64.b64encode(body).decode(),
            }
        )
    )


@dataclass
class System:
    name: str
    start: Callable[[], Server]
    ceiling: str | None = None
    note: str = ""
    loop: str = "asyncio"
    #: Measured only when named with ``--only`` (the image takes a podman build the first time).
    opt_in: bool = False


def missing_loop(loop: str) -> str | None:
    """Why a system on ``loop`` cannot run here, if it cannot."""
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install '.[speedups]')"
    return None


def measure(bench: Bench) -> list[HitResult]:
    """wrk against every system in turn, ``rounds`` times; ``bench.only`` limits it to named
    systems."""
    scale, workdir, pinning, install = (
        SCALES[bench.scale],
        bench.workdir,
        bench.pinning,
        bench.install,
    )
    try:
        wrk = processes.ensure_binary("wrk", install=install)
    except Unavailable as error:
        return [HitResult("all systems", None, "", [], skipped=str(error))]
    script = workdir / "report.lua"
    script.write_text(WRK_REPORT)
    simulator = processes.start_simulator(
        workdir, ["--queued-seconds", "0", "--processing-seconds", "0", "--seed", "1"], pinning
    )
    try:
        (transcription_id,) = client.seed(simulator.url, [TOKEN], 1)
        path = f"/v1/audio/transcribe/{transcription_id}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response_file = workdir / "hit-response.json"
        port = simulator.port

        def proxy(
            name: str, loop: str, access_log: bool, workers: int = 1
        ) -> Callable[[], Service]:
            options = ["--event-loop", loop, "--access-log", str(access_log).lower()]
            options += ["--workers", str(workers)]
            if access_log:
                options += ["--log-level", "info"]
            return lambda: processes.start_proxy(
                workdir, simulator.url, pinning, name=name, options=options
            )

        def bare(loop: str, module: str = "bench.bare") -> Callable[[], Service]:
            def start() -> Service:
                if not response_file.exists():
                    with processes.running(proxy("capture", loop, False)()) as capturing:
                        client.http_get(capturing.url + path, headers)
                        capture_response(capturing.url + path, headers, response_file)
                return processes.start_bare(
                    workdir, response_file, pinning, loop=loop, module=module
                )

            return start

        def proxied(
            label: str, name: str, loop: str, access_log: bool, note: str, workers: int = 1
        ) -> System:
            """The proxy as a system, measured against the bare handler on the same loop."""
            ceiling = "bare aiohttp (uvloop)" if loop == "uvloop" else "bare aiohttp"
            start = proxy(name, loop, access_log, workers)
            return System(label, start, ceiling=ceiling, note=note, loop=loop)

        replay = "replays the proxy's hit response"
        systems = [
            proxied(PROXY, PROXY, "asyncio", False, "asyncio loop, access log off"),
            System("bare aiohttp", bare("asyncio"), note=f"asyncio loop; {replay}"),
            proxied(
                f"{PROXY} (uvloop)", f"{PROXY}-uvloop", "uvloop", False, "uvloop, access log off"
            ),
            System(
                "bare aiohttp (uvloop)", bare("uvloop"), note=f"uvloop; {replay}", loop="uvloop"
            ),
            proxied(
                f"{PROXY} (access log on)",
                f"{PROXY}-logging",
                "uvloop",
                True,
                "default settings: uvloop, JSON access log to a file",
            ),
            proxied(
                f"{PROXY} (asyncio, access log on)",
                f"{PROXY}-asyncio-logging",
                "asyncio",
                True,
                "asyncio loop, JSON access log to a file",
            ),
            proxied(
                f"{PROXY} (2 workers, uvloop)",
                f"{PROXY}-workers",
                "uvloop",
                False,
                "--workers 2 (private redis-server), uvloop, access log off; CPU of all "
                "processes, pinned to the same CPU as the others",
                workers=2,
            ),
            System(
                "floor: httptools Protocol (uvloop)",
                bare("uvloop", "bench.floor"),
                note=f"bench/floor.py: asyncio Protocol + httptools, one prepared write; {replay}",
                loop="uvloop",
            ),
            System(
                "floor: httptools Protocol",
                bare("asyncio", "bench.floor"),
                note=f"bench/floor.py on the asyncio loop; {replay}",
            ),
            System(
                "nginx proxy_cache",
                lambda: processes.start_nginx(workdir, port, pinning, install=install),
                note="1 worker, access log off",
            ),
            System(
                "nginx proxy_cache (access log on)",
                lambda: processes.start_nginx(
                    workdir, port, pinning, install=install, access_log=True
                ),
                note="1 worker, JSON access log with the proxy's fields to a file",
            ),
            System(
                IMAGE,
                lambda: container.start_image(workdir, simulator.url, pinning, log=bench.log),
                note="the Dockerfile on the local Debian 12 base (scripts/container-base), its "
                "defaults (JSON access log at info to stderr, kept by podman's k8s-file driver), "
                "host network, --cpuset-cpus; CPU of the container's cgroup and of conmon",
                opt_in=True,
            ),
            System(
                "Varnish",
                lambda: processes.start_varnish(workdir, port, pinning, install=install),
                note="malloc storage, grace 1h, keep 1h",
            ),
        ]
        systems = [
            system
            for system in systems
            if bench.wants(system.name) and (not system.opt_in or system.name in bench.only)
        ]
        results = {
            system.name: HitResult(system.name, system.ceiling, system.note, [])
            for system in systems
        }
        services: dict[str, Server] = {}
        try:
            for system in systems:
                reason = missing_loop(system.loop)
                if reason is not None:
                    results[system.name].skipped = reason
                    bench.log(f"hit: {system.name} skipped: {reason}")
                    continue
                try:
                    service = system.start()
                except Unavailable as error:
                    results[system.name].skipped = str(error)
                    bench.log(f"hit: {system.name} skipped: {error}")
                    continue
                services[system.name] = service
                try:
                    if isinstance(service, container.Container):
                        found = f"{container.contents(service)}; serves on "
                        found += f"{container.event_loop(service)} (from /proc/PID/maps)"
                        results[system.name].note += f"; {found}"
                        bench.log(f"hit: {system.name}: {found}")
                    for _ in range(2):
                        status, _, _ = client.http_get(service.url + path, headers)
                        if status != 200:
                            raise Unavailable(f"warm-up request answered {status}")
                    if system.name == PROXY and not response_file.exists():
                        capture_response(service.url + path, headers, response_file)
                except (Unavailable, OSError) as error:
                    results[system.name].skipped = f"warm-up failed: {error}"
                    service.stop()
                    del services[system.name]
            for round_number in range(scale.rounds):
                for system in systems:
                    running = services.get(system.name)
                    if running is None:
                        continue
                    try:
                        run = run_once(
                            wrk, running, simulator, path, headers, scale, script, pinning
                        )
                    except Unavailable as error:
                        results[system.name].skipped = str(error)
                        running.stop()
                        del services[system.name]
                        continue
                    results[system.name].runs.append(run)
                    bench.log(
                        f"hit: round {round_number + 1}/{scale.rounds} {system.name}: "
                        f"{run.rps:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                        f"{run.cpu_us_per_request:.1f} CPU us/request"
                    )
        finally:
            for service in services.values():
                service.stop()
    finally:
        simulator.stop()
    return list(results.values())


def ratios_to_ceiling(results: list[HitResult]) -> dict[str, tuple[float, float]]:
    """Per system: (median req/s, ceiling's CPU per request / own) relative to its ceiling.

    The second is the throughput each would reach with its CPU to itself. When the machine is
    busy, a starved load generator caps every server's req/s alike and flatters the first.
    """
    medians = {r.system: r.median() for r in results}
    ratios: dict[str, tuple[float, float]] = {}
    for result in results:
        mine = medians.get(result.system)
        ceiling = medians.get(result.ceiling) if result.ceiling else None
        if mine is None or ceiling is None or not ceiling.rps or not mine.cpu_us_per_request:
            continue
        by_rps = mine.rps / ceiling.rps
        by_cpu = ceiling.cpu_us_per_request / mine.cpu_us_per_request
        ratios[result.system] = (by_rps, by_cpu)
    return ratios
