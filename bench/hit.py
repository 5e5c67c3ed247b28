"""The cache-hit path: throughput and latency at a fixed concurrency, measured with wrk.

Every system answers the same request (one completed transcription, one fixed bearer token) from
its cache; the simulator behind them counts upstream requests during the run to prove it.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import client, processes
from bench.processes import Pinning, Service, Unavailable

TOKEN = "bench-hit-token"

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
    start: Callable[[], Service]
    ceiling: str | None = None
    note: str = ""


def measure(
    workdir: Path,
    scale_name: str,
    pinning: Pinning,
    *,
    install: bool,
    log: Callable[[str], None],
    only: frozenset[str] = frozenset(),
) -> list[HitResult]:
    """wrk against every system in turn, ``rounds`` times; ``only`` limits it to named systems."""
    scale = SCALES[scale_name]
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
        proxy_note = "access log off"
        systems = [
            System(
                "aitronos-cache-proxy",
                lambda: processes.start_proxy(
                    workdir,
                    simulator.url,
                    pinning,
                    options=["--access-log", "false", "--event-loop", "asyncio"],
                ),
                ceiling="bare aiohttp",
                note=f"asyncio loop, {proxy_note}",
            ),
            System(
                "bare aiohttp",
                lambda: processes.start_bare(workdir, response_file, pinning, loop="asyncio"),
                note="asyncio loop; replays the proxy's hit response",
            ),
            System(
                "aitronos-cache-proxy (uvloop)",
                lambda: processes.start_proxy(
                    workdir,
                    simulator.url,
                    pinning,
                    name="aitronos-cache-proxy-uvloop",
                    options=["--access-log", "false", "--event-loop", "uvloop"],
                ),
                ceiling="bare aiohttp (uvloop)",
                note=f"uvloop, {proxy_note}",
            ),
            System(
                "bare aiohttp (uvloop)",
                lambda: processes.start_bare(workdir, response_file, pinning, loop="uvloop"),
                note="uvloop; replays the proxy's hit response",
            ),
            System(
                "aitronos-cache-proxy (access log on)",
                lambda: processes.start_proxy(
                    workdir,
                    simulator.url,
                    pinning,
                    name="aitronos-cache-proxy-logging",
                    options=[
                        "--access-log",
                        "true",
                        "--log-level",
                        "info",
                        "--event-loop",
                        "uvloop",
                    ],
                ),
                ceiling="bare aiohttp (uvloop)",
                note="uvloop, JSON access log to a file",
            ),
            System(
                "nginx proxy_cache",
                lambda: processes.start_nginx(workdir, port, pinning, install=install),
                note="1 worker, access log off",
            ),
            System(
                "Varnish",
                lambda: processes.start_varnish(workdir, port, pinning, install=install),
                note="malloc storage, grace 1h",
            ),
        ]
        if only:
            systems = [system for system in systems if system.name in only]
        results = {
            system.name: HitResult(system.name, system.ceiling, system.note, [])
            for system in systems
        }
        services: dict[str, Service] = {}
        try:
            for system in systems:
                try:
                    service = system.start()
                except Unavailable as error:
                    results[system.name].skipped = str(error)
                    log(f"hit: {system.name} skipped: {error}")
                    continue
                services[system.name] = service
                try:
                    for _ in range(2):
                        status, _, _ = client.http_get(service.url + path, headers)
                        if status != 200:
                            raise Unavailable(f"warm-up request answered {status}")
                    if system.name == "aitronos-cache-proxy":
                        capture_response(service.url + path, headers, response_file)
                except (Unavailable, OSError) as error:
                    results[system.name].skipped = f"warm-up failed: {error}"
                    service.stop()
                    del services[system.name]
            for round_number in range(scale.rounds):
                for system in systems:
                    service_or_none = services.get(system.name)
                    if service_or_none is None:
                        continue
                    url = service_or_none.url + path
                    if scale.warmup:
                        run_wrk(
                            wrk,
                            url,
                            headers,
                            duration=scale.warmup,
                            connections=scale.connections,
                            script=script,
                            pinning=pinning,
                        )
                    before = client.stats(simulator.url)["requests"]
                    cpu_before = processes.cpu_seconds(service_or_none.pid)
                    raw = run_wrk(
                        wrk,
                        url,
                        headers,
                        duration=scale.duration,
                        connections=scale.connections,
                        script=script,
                        pinning=pinning,
                    )
                    cpu_after = processes.cpu_seconds(service_or_none.pid)
                    after = client.stats(simulator.url)["requests"]
                    run = WrkRun(
                        requests=raw["requests"],
                        duration_s=raw["duration_us"] / 1e6,
                        bytes=raw["bytes"],
                        p50_ms=raw["p50_us"] / 1000,
                        p90_ms=raw["p90_us"] / 1000,
                        p99_ms=raw["p99_us"] / 1000,
                        max_ms=raw["max_us"] / 1000,
                        errors=sum(
                            raw[k] for k in ("connect", "read", "write", "status", "timeout")
                        ),
                        upstream_requests=after - before,
                        cpu_seconds=cpu_after - cpu_before,
                    )
                    results[system.name].runs.append(run)
                    log(
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


def ratios_to_ceiling(results: list[HitResult]) -> dict[str, float]:
    """Median throughput relative to the ceiling measured in the same run, per system."""
    medians = {r.system: r.median() for r in results}
    ratios: dict[str, float] = {}
    for result in results:
        mine = medians.get(result.system)
        ceiling = medians.get(result.ceiling) if result.ceiling else None
        if mine is not None and ceiling is not None and ceiling.rps:
            ratios[result.system] = mine.rps / ceiling.rps
    return ratios
