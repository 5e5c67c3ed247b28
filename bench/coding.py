"""Content coding behind a compressing origin (issue 12): nginx with gzip, Varnish, this proxy.

The origin is the simulator fronted the way nginx fronts real APIs (``--compress gzip
--narrow-304-vary true --cors true``): gzip with ``Vary: Accept-Encoding`` and a weak ``ETag`` on
200s, no ``Vary: Accept-Encoding`` on 304s, ``Vary: Origin`` everywhere. nginx runs with
``gzip on; gzip_vary on``. Three measurements, each system in turn:

- the polling fleet (``bench.fleet``), its clients mixing the 7 ``Accept-Encoding`` spellings;
- one gzip client polling an unchanged completed transcription (``max-age=5``) for a minute,
  with ``If-None-Match``: how many full downloads and how many 304s reached the origin;
- a completed transcription with a 20 KB transcript: the bytes a gzip client and an identity
  client receive, and the server's CPU per hit for each (wrk, the same as ``bench.hit``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import client, fleet, hit, processes
from bench.common import Bench
from bench.processes import Pinning, Service, Unavailable

ORIGIN_OPTIONS = ("--compress", "gzip", "--narrow-304-vary", "true", "--cors", "true")
SYSTEMS = ("no cache", "nginx proxy_cache", "Varnish", "aitronos-cache-proxy")
#: About 20 KB of transcript text (the simulator's vocabulary averages 6.6 bytes a word).
TRANSCRIPT_WORDS = 3050
TOKEN = "bench-coding-token"


@dataclass(frozen=True)
class CodingScale:
    poll_seconds: float
    poll_interval: float
    max_age: int
    wrk: hit.HitScale


SCALES = {
    "tiny": CodingScale(
        3.0, 0.25, 1, hit.HitScale(duration=1.0, warmup=0.0, connections=20, rounds=1)
    ),
    "full": CodingScale(
        60.0, 1.0, 5, hit.HitScale(duration=5.0, warmup=1.0, connections=50, rounds=3)
    ),
}


@dataclass
class PollRun:
    """One client polling one unchanged transcription: what reached the origin."""

    system: str
    seconds: float = 0.0
    client_requests: int = 0
    client_304s: int = 0
    upstream_200: int = 0
    upstream_304: int = 0
    upstream_bytes: int = 0
    skipped: str | None = None


@dataclass
class BytesRun:
    """One large completed transcription: bytes per coding and the CPU a hit costs in each."""

    system: str
    identity_bytes: int = 0
    gzip_bytes: int = 0
    identity_cpu_us: float = 0.0
    gzip_cpu_us: float = 0.0
    identity_rps: float = 0.0
    gzip_rps: float = 0.0
    upstream_during_wrk: int = 0
    skipped: str | None = None

    @property
    def ratio(self) -> float:
        return self.gzip_bytes / self.identity_bytes if self.identity_bytes else 0.0


@dataclass
class CodingResults:
    fleet: list[fleet.FleetRun] = field(default_factory=list)
    polls: list[PollRun] = field(default_factory=list)
    sizes: list[BytesRun] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": [asdict(run) | {"per_window": run.per_window} for run in self.fleet],
            "polls": [asdict(run) for run in self.polls],
            "sizes": [asdict(run) | {"ratio": run.ratio} for run in self.sizes],
        }


def _start(
    system: str, workdir: Path, simulator: Service, pinning: Pinning, install: bool
) -> Service | None:
    if system == "no cache":
        return None
    if system == "nginx proxy_cache":
        return processes.start_nginx(workdir, simulator.port, pinning, install=install, gzip=True)
    if system == "Varnish":
        return processes.start_varnish(workdir, simulator.port, pinning, install=install)
    return processes.start_proxy(
        workdir, simulator.url, pinning, name=f"{system}-coding", options=["--access-log", "false"]
    )


def poll_unchanged(base: str, simulator: Service, scale: CodingScale, system: str) -> PollRun:
    """A browser-like poller: gzip, If-None-Match with the last ETag, once per interval."""
    (transcription_id,) = client.seed(simulator.url, [TOKEN], 1)
    url = f"{base}/v1/audio/transcribe/{transcription_id}"
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
    client.reset_stats(simulator.url)
    run = PollRun(system)
    started = time.monotonic()
    while time.monotonic() - started < scale.poll_seconds:
        status, answer, _ = client.http_get(url, headers)
        run.client_requests += 1
        run.client_304s += status == 304
        etag = dict((k.lower(), v) for k, v in answer).get("etag")
        if status == 200 and etag:
            headers["If-None-Match"] = etag
        time.sleep(scale.poll_interval)
    run.seconds = time.monotonic() - started
    stats = client.stats(simulator.url)
    run.upstream_200 = int(stats["responses"].get("200", 0))
    run.upstream_304 = int(stats["responses"].get("304", 0))
    run.upstream_bytes = int(stats["bytes_sent"])
    return run


def sizes_and_hits(
    service: Service, simulator: Service, scale: CodingScale, workdir: Path, pinning: Pinning
) -> BytesRun:
    """Bytes to an identity and a gzip client, then wrk for each: CPU per hit."""
    (transcription_id,) = client.seed(simulator.url, [TOKEN], 1)
    path = f"/v1/audio/transcribe/{transcription_id}"
    run = BytesRun(service.name)
    wrk = processes.ensure_binary("wrk", install=False)
    script = workdir / "coding-report.lua"
    script.write_text(hit.WRK_REPORT)
    upstream = 0
    for coding in ("identity", "gzip"):
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": coding}
        for _ in range(2):  # a miss, then a hit
            status, _, body = client.http_get(service.url + path, headers)
            if status != 200:
                raise Unavailable(f"{coding} request answered {status}")
        setattr(run, f"{coding}_bytes", len(body))
        cpu, rps = [], []
        for _ in range(scale.wrk.rounds):
            measured = hit.run_once(
                wrk, service, simulator, path, headers, scale.wrk, script, pinning
            )
            cpu.append(measured.cpu_us_per_request)
            rps.append(measured.rps)
            upstream += measured.upstream_requests
        setattr(run, f"{coding}_cpu_us", sorted(cpu)[len(cpu) // 2])
        setattr(run, f"{coding}_rps", sorted(rps)[len(rps) // 2])
    run.upstream_during_wrk = upstream
    return run


def measure(bench: Bench) -> CodingResults:
    scale, workdir, pinning, install = (
        SCALES[bench.scale],
        bench.workdir,
        bench.pinning,
        bench.install,
    )
    results = CodingResults()
    results.fleet = fleet.measure(
        bench,
        origin_options=ORIGIN_OPTIONS,
        systems=SYSTEMS,
        nginx_gzip=True,
    )
    simulator = processes.start_simulator(
        workdir,
        [
            *ORIGIN_OPTIONS,
            "--queued-seconds", "0",
            "--processing-seconds", "0",
            "--final-max-age", str(scale.max_age),
            "--transcript-words", str(TRANSCRIPT_WORDS),
            "--seed", "3",
        ],
        pinning,
    )  # fmt: skip
    try:
        for system in SYSTEMS:
            if not bench.wants(system):
                continue
            try:
                service = _start(system, workdir, simulator, pinning, install)
            except Unavailable as error:
                bench.log(f"coding: {system} skipped: {error}")
                results.polls.append(PollRun(system, skipped=str(error)))
                results.sizes.append(BytesRun(system, skipped=str(error)))
                continue
            try:
                base = service.url if service is not None else simulator.url
                poll = poll_unchanged(base, simulator, scale, system)
                results.polls.append(poll)
                bench.log(
                    f"coding: {system} polled {poll.client_requests} times in "
                    f"{poll.seconds:.0f}s: upstream {poll.upstream_200} x 200, "
                    f"{poll.upstream_304} x 304"
                )
                if service is not None:
                    try:
                        sized = sizes_and_hits(service, simulator, scale, workdir, pinning)
                    except Unavailable as error:
                        sized = BytesRun(system, skipped=str(error))
                    sized.system = system
                    results.sizes.append(sized)
                    bench.log(
                        f"coding: {system} bytes identity {sized.identity_bytes}, gzip "
                        f"{sized.gzip_bytes} ({sized.ratio:.2f}); CPU per hit identity "
                        f"{sized.identity_cpu_us:.1f} us, gzip {sized.gzip_cpu_us:.1f} us"
                    )
            finally:
                if service is not None:
                    service.stop()
    finally:
        simulator.stop()
    return results


def _fleet_table(runs: list[fleet.FleetRun]) -> list[str]:
    lines = [
        "| system | pollers | client requests | upstream requests | per ID per window | "
        "bytes to clients | bytes from upstream |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        if run.skipped:
            lines.append(f"| {run.system} | {run.pollers} | skipped: {run.skipped} | | | | |")
            continue
        lines.append(
            f"| {run.system} | {run.pollers} | {run.client_requests:,} | "
            f"{run.upstream_requests:,} | {run.per_window:.2f} | {run.client_bytes:,} | "
            f"{run.upstream_bytes:,} |"
        )
    return lines


def report(results: CodingResults, header: list[str]) -> str:
    """The markdown report: the machine and command first, then one table per measurement."""
    lines = [*header, "", "## Mixed Accept-Encoding fleet behind the compressing origin", ""]
    lines += _fleet_table(results.fleet)
    lines += [
        "",
        "## Polling one unchanged transcription (gzip client, If-None-Match)",
        "",
        "| system | seconds | client requests | upstream 200s | upstream 304s | "
        "bytes from upstream |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for poll in results.polls:
        if poll.skipped:
            lines.append(f"| {poll.system} | skipped: {poll.skipped} | | | | |")
            continue
        lines.append(
            f"| {poll.system} | {poll.seconds:.0f} | {poll.client_requests} | "
            f"{poll.upstream_200} | {poll.upstream_304} | {poll.upstream_bytes:,} |"
        )
    lines += [
        "",
        "## A completed transcription with a 20 KB transcript, from cache",
        "",
        "| system | bytes, identity client | bytes, gzip client | gzip / identity | "
        "CPU per hit, identity | CPU per hit, gzip | req/s identity | req/s gzip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sized in results.sizes:
        if sized.skipped:
            lines.append(f"| {sized.system} | skipped: {sized.skipped} | | | | | | |")
            continue
        lines.append(
            f"| {sized.system} | {sized.identity_bytes:,} | {sized.gzip_bytes:,} | "
            f"{sized.ratio:.2f} | {sized.identity_cpu_us:.1f} µs | {sized.gzip_cpu_us:.1f} µs | "
            f"{sized.identity_rps:,.0f} | {sized.gzip_rps:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def write(out: Path, results: CodingResults, header: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    path = out / "results.md"
    path.write_text(report(results, header))
    return path
