"""The machine's description, the markdown tables, the chart, and the targets of issue 3."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.fleet import SYSTEMS, FleetRun
from bench.hit import HitResult, ratios_to_ceiling
from bench.memory import MemoryPoint
from bench.processes import binary_version
from bench.profile import Profile
from bench.profile import render as render_profile
from bench.profile import summary as profile_summary

NONE = "n/a"
TARGET_RATIO = 0.8
TARGET_P99_MS = 3.0
TARGET_PER_WINDOW = 1.0
#: Issue 19: resident memory added per identity byte of the bodies held, gzip clients, defaults.
TARGET_MEMORY_RATIO = 0.6
PROXY = "aitronos-cache-proxy"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the numbers were measured on, from ``/proc`` and the tools' own version output."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable)",
        "RAM": f"{mem_kib / 2**20:.1f} GiB",
        "OS": os_name,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": _package_version("aiohttp"),
        "uvloop": _package_version("uvloop"),
        "nginx": binary_version(["nginx", "-v"]),
        "Varnish": binary_version(["varnishd", "-V"]),
        "wrk": binary_version(["wrk", "-v"]),
    }


def load_average() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3]) or "unknown"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f} ms"


def _mib(value: float | None) -> str:
    return NONE if value is None else f"{value / 2**20:,.1f} MiB"


def _bytes(value: float) -> str:
    if value >= 2**20:
        return f"{value / 2**20:,.1f} MiB"
    if value >= 2**10:
        return f"{value / 2**10:,.1f} KiB"
    return f"{value:,.0f} B"


def _verdict(ok: bool | None) -> str:
    return NONE if ok is None else ("met" if ok else "**not met**")


def targets(
    hits: list[HitResult] | None, fleets: list[FleetRun] | None, memory: list[MemoryPoint] | None
) -> list[tuple[str, str, bool | None]]:
    """Each target of issue 3, what this run measured for it, and whether it is met."""
    rows: list[tuple[str, str, bool | None]] = []
    if hits is not None:
        ratios = ratios_to_ceiling(hits)
        proxies = [h for h in hits if h.system.startswith(PROXY) and "access log" not in h.system]
        for result in proxies:
            if result.system in ratios:
                by_rps, by_cpu = ratios[result.system]
                rows.append(
                    (
                        f"hit throughput ≥ {TARGET_RATIO}x {result.ceiling} (same run)",
                        f"{by_rps:.2f}x by req/s, {by_cpu:.2f}x by CPU per request "
                        f"({result.system}); judged on the lower",
                        min(by_rps, by_cpu) >= TARGET_RATIO,
                    )
                )
        for result in proxies:
            median = result.median()
            if median is not None:
                rows.append(
                    (
                        f"p99 hit latency ≤ {TARGET_P99_MS:g} ms at 50 connections",
                        f"{median.p99_ms:.2f} ms ({result.system})",
                        median.p99_ms <= TARGET_P99_MS,
                    )
                )
    if fleets:
        largest = max(run.pollers for run in fleets)
        for run in fleets:
            if run.system == PROXY and run.pollers == largest and not run.skipped:
                rows.append(
                    (
                        f"≤ {TARGET_PER_WINDOW:g} upstream request per ID per max-age window "
                        f"at {largest} pollers",
                        f"{run.per_window:.2f} (worst ID {run.per_id_ratio_max:.2f})",
                        run.per_window <= TARGET_PER_WINDOW,
                    )
                )
    for point in memory or ():
        rows.append(
            (
                f"resident memory ≤ {TARGET_MEMORY_RATIO:g}x identity body bytes at "
                f"{point.entries:,} entries",
                f"{point.ratio:.2f}x above the empty proxy ({point.ratio_total:.2f}x in total)",
                point.ratio <= TARGET_MEMORY_RATIO,
            )
        )
    return rows


def hit_table(hits: list[HitResult]) -> list[str]:
    ratios = ratios_to_ceiling(hits)
    lines = [
        "| system | req/s | p50 | p99 | server CPU per request | vs ceiling (req/s / CPU) "
        "| upstream requests "
        "during runs | bytes per response | setup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in hits:
        median = result.median()
        if result.skipped or median is None:
            lines.append(f"| {result.system} | skipped: {result.skipped} | | | | | | | |")
            continue
        spread = (
            f" ({min(r.rps for r in result.runs):,.0f} to {max(r.rps for r in result.runs):,.0f})"
        )
        ratio = ratios.get(result.system)
        versus = "" if ratio is None else f"{ratio[0]:.2f}x / {ratio[1]:.2f}x"
        lines.append(
            f"| {result.system} | {median.rps:,.0f}{spread if len(result.runs) > 1 else ''} "
            f"| {_ms(median.p50_ms)} | {_ms(median.p99_ms)} "
            f"| {median.cpu_us_per_request:.1f} µs "
            f"| {versus} "
            f"| {sum(r.upstream_requests for r in result.runs)} "
            f"| {median.bytes / median.requests if median.requests else 0:,.0f} "
            f"| {result.note}{'; ' + str(median.errors) + ' errors' if median.errors else ''} |"
        )
    return lines


def fleet_table(runs: list[FleetRun]) -> list[str]:
    lines = [
        "| pollers (IDs) | system | client requests | upstream requests | per ID per max-age "
        "window (worst ID) | upstream 304s | bytes from upstream | upstream requests for "
        "re-reads after final | client p50 | client p99 | final status seen after (p50) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: (r.pollers, SYSTEMS.index(r.system))):
        if run.skipped:
            lines.append(f"| {run.pollers} | {run.system} | skipped: {run.skipped} |||||||||")
            continue
        lag = NONE if run.completion_lag_p50_s is None else f"{run.completion_lag_p50_s:.1f} s"
        lines.append(
            f"| {run.pollers} ({run.transcriptions}) | {run.system} | {run.client_requests:,} "
            f"| {run.upstream_requests:,} | {run.per_window:.2f} ({run.per_id_ratio_max:.2f}) "
            f"| {run.upstream_not_modified:,} | {_bytes(run.upstream_bytes)} "
            f"| {run.upstream_after_final:,} of {run.pollers:,} | {_ms(run.p50_ms)} "
            f"| {_ms(run.p99_ms)} | {lag} |"
        )
    return lines


def memory_table(points: list[MemoryPoint]) -> list[str]:
    lines = [
        "| cached transcriptions | body bytes held | RSS | RSS of the empty proxy | RSS added "
        "| added / bodies | RSS / bodies | `cacheproxy_cache_bytes` | fill time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.entries:,} | {_mib(p.body_bytes)} | {_mib(p.rss_bytes)} "
            f"| {_mib(p.baseline_rss_bytes)} | {_mib(p.added_rss_bytes)} | {p.ratio:.2f}x "
            f"| {p.ratio_total:.2f}x | {_mib(p.cache_bytes_metric)} | {p.fill_seconds:.1f} s |"
        )
    return lines


def chart(runs: list[FleetRun], path: Path) -> None:
    """Upstream requests vs fleet size, one line per system (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (total, ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"no cache": "o", "nginx proxy_cache": "s", "Varnish": "^", PROXY: "D"}
    styles = {"Varnish": "--", PROXY: ":"}
    for system in SYSTEMS:
        points = sorted(
            (r.pollers, r.upstream_requests, r.per_window)
            for r in runs
            if r.system == system and not r.skipped
        )
        if not points:
            continue
        sizes = [p[0] for p in points]
        marker = markers.get(system, "o")
        style = {"marker": marker, "label": system, "linestyle": styles.get(system, "-")}
        total.plot(sizes, [max(p[1], 0.5) for p in points], **style)
        ratio.plot(sizes, [max(p[2], 0.01) for p in points], **style)
    for axis in (total, ratio):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("pollers in the fleet")
        axis.grid(True, which="both", alpha=0.3)
    total.set_ylabel("requests that reached the upstream")
    total.set_title("Upstream requests for one fleet run")
    ratio.axhline(TARGET_PER_WINDOW, color="grey", linestyle="--", linewidth=1)
    ratio.set_ylabel("upstream requests per ID per max-age window")
    ratio.set_title("Relative to an ideal shared cache (1.0)")
    ratio.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(
    out: Path,
    *,
    command: str,
    scale: str,
    pinning: str,
    load_before: str,
    load_after: str,
    started: datetime,
    hits: list[HitResult] | None,
    fleets: list[FleetRun] | None,
    memory: list[MemoryPoint] | None,
    profiles: list[Profile] | str | None,
    notes: list[str],
) -> Path:
    """Write ``results.md``, ``results.json`` and (with fleet results) ``fleet.png`` to ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    described = machine()
    finished = datetime.now(UTC)
    lines = [
        "# Benchmark results",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} to {finished:%H:%M} UTC at scale `{scale}` with:",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in described.items()),
        f"| CPU pinning | {pinning} |",
        f"| load average (1, 5, 15 min) | {load_before} before, {load_after} after |",
        "",
        *notes,
    ]
    rows = targets(hits, fleets, memory)
    if rows:
        lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {_verdict(ok)} |" for name, value, ok in rows]
    if hits is not None:
        lines += [
            "",
            "## Cache-hit path",
            "",
            "One completed transcription requested with the same bearer token by wrk "
            "(`wrk -t1 -c50 --latency`), every system answering from its cache; each row is the "
            "median round by throughput (range in brackets). Server CPU per request is the "
            "server's user + system CPU time over the run (all its processes) divided by "
            "requests answered, which other load on the machine disturbs less than req/s. "
            '"vs ceiling" compares with bare aiohttp on the same event loop, by req/s and by '
            "CPU per request (the ceiling's CPU per request over the system's: the throughput "
            "ratio each would reach with a core to itself).",
            "",
            *hit_table(hits),
        ]
    if fleets is not None:
        if any(not run.skipped for run in fleets):
            chart(fleets, out / "fleet.png")
            lines += ["", "## Polling-fleet economy", "", "![fleet](fleet.png)", ""]
        else:
            lines += ["", "## Polling-fleet economy", ""]
        lines += [
            "The demo's fleet (`proxy.tools.fleet.run_fleet`): pollers with `If-None-Match`, "
            "stopping at a final status, spread evenly over fresh transcriptions that stay pending "
            '(`max-age` short) for a while and then complete (`max-age=86400`). "Per ID per '
            'max-age window" divides the requests that reached the origin by the floor of an '
            "ideal shared cache: one fetch per max-age window while pending plus the one fetch "
            "that sees the final status. After the run every poller reads its result once more; "
            "a cache answers those without the origin.",
            "",
            *fleet_table(fleets),
        ]
    if memory is not None:
        lines += [
            "",
            "## Memory",
            "",
            "Completed transcriptions fetched once each by gzip-accepting clients through one "
            "proxy process (memory store, default coding settings, budget large enough for no "
            "evictions); RSS is `VmRSS` from `/proc/PID/status`, body bytes are the identity "
            "bytes of the response bodies the clients received (decoded).",
            "",
            *memory_table(memory),
        ]
    if isinstance(profiles, str):
        lines += ["", "## Profile of a hit", "", f"Skipped: {profiles}."]
    elif profiles:
        (out / "profile.md").write_text(render_profile(profiles, command))
        lines += [
            "",
            "## Profile of a hit",
            "",
            "py-spy samples of the proxy and of the bare handler on uvloop under the same wrk "
            "load; the full tables are in [profile.md](profile.md).",
            "",
            *profile_summary(profiles),
        ]
    markdown = out / "results.md"
    markdown.write_text("\n".join(lines) + "\n")
    payload: dict[str, Any] = {
        "command": command,
        "scale": scale,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "machine": described,
        "pinning": pinning,
        "load_average": {"before": load_before, "after": load_after},
        "targets": [{"target": n, "measured": v, "met": ok} for n, v, ok in rows],
        "hit": None if hits is None else [h.to_json() for h in hits],
        "fleet": None
        if fleets is None
        else [asdict(run) | {"per_window": run.per_window} for run in fleets],
        "memory": None
        if memory is None
        else [asdict(p) | {"ratio": p.ratio, "ratio_total": p.ratio_total} for p in memory],
        "python": sys.version,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    return markdown
