"""Where a cache hit's CPU goes: py-spy samples the proxy, then the bare handler, under wrk.

``python -m bench.profile [--seconds 8] [--event-loop uvloop] [--out bench/results/profile.md]``

py-spy (``pip install py-spy``, in the ``bench`` extra) samples each server process from outside
while wrk holds 50 connections on the same hit. The report gives, per server, the share of
samples in each function (inclusive: anywhere on the stack; self: on top), and the samples per
request of the handler and of aiohttp's own work, so the two servers can be compared directly.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import client, hit, processes
from bench.processes import Pinning, Service, Unavailable

RATE = 250
HANDLERS = {
    "proxy": "FastPath.answer_head (",  # a remembered head: replayed, or answered anew
    "bare": "create_bare_app.<locals>.handle (bench/bare.py)",
}


@dataclass
class Profile:
    target: str
    loop: str
    requests: int
    seconds: float
    total: int
    inclusive: collections.Counter[str]
    own: collections.Counter[str]

    def us_per_request(self, samples: int) -> float:
        """CPU microseconds per request that ``samples`` stand for (one sample = 1/RATE s)."""
        return 1e6 * samples / RATE / self.requests if self.requests else 0.0


def parse_collapsed(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, inclusive and self sample counts per function from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _short(frame)
            for frame in stack.split(";")
            if not frame.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive, own


def _short(frame: str) -> str:
    """``answer (proxy/front/wire.py:60)`` without the line number, so a function is one row."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def sample(
    py_spy: str,
    wrk: str,
    service: Service,
    url: str,
    headers: dict[str, str],
    *,
    seconds: float,
    script: Path,
    pinning: Pinning,
    raw_path: Path,
) -> int:
    """Sample ``service`` for ``seconds`` while wrk loads it; the requests wrk completed."""
    outcome: dict[str, Any] = {}
    options: dict[str, Any] = {
        "duration": seconds + 2,
        "connections": 50,
        "script": script,
        "pinning": pinning,
    }
    load = threading.Thread(
        target=lambda: outcome.update(hit.run_wrk(wrk, url, headers, **options))
    )
    load.start()
    try:
        subprocess.run(
            [
                py_spy, "record", "--pid", str(service.pid), "--duration", str(round(seconds)),
                "--rate", str(RATE), "--format", "raw", "--output", str(raw_path),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        raise Unavailable(f"py-spy could not sample the server: {error}") from None
    finally:
        load.join()
    requests: int = outcome.get("requests", 0)
    return round(requests * seconds / (seconds + 2))


def profile_hits(
    workdir: Path, pinning: Pinning, *, loop: str, seconds: float, install: bool
) -> list[Profile]:
    """Profile the proxy and the bare handler on the same hit, one after the other."""
    # The venv's own py-spy (bench extra) when its bin directory is not on PATH.
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise Unavailable("py-spy is not installed (pip install py-spy)")
    wrk = processes.ensure_binary("wrk", install=install)
    script = workdir / "profile-report.lua"
    script.write_text(hit.WRK_REPORT)
    profiles = []
    with processes.running(
        processes.start_simulator(
            workdir, ["--queued-seconds", "0", "--processing-seconds", "0"], pinning
        )
    ) as simulator:
        (transcription_id,) = client.seed(simulator.url, [hit.TOKEN], 1)
        path = f"/v1/audio/transcribe/{transcription_id}"
        headers = {"Authorization": f"Bearer {hit.TOKEN}"}
        response_file = workdir / "profile-response.json"
        options = ["--access-log", "false", "--event-loop", loop]
        for target in ("proxy", "bare"):
            if target == "proxy":
                service = processes.start_proxy(
                    workdir, simulator.url, pinning, name="profiled-proxy", options=options
                )
            else:
                service = processes.start_bare(workdir, response_file, pinning, loop=loop)
            with processes.running(service):
                client.http_get(service.url + path, headers)
                if target == "proxy":
                    hit.capture_response(service.url + path, headers, response_file)
                raw_path = workdir / f"profile-{target}.txt"
                requests = sample(
                    py_spy, wrk, service, service.url + path, headers,
                    seconds=seconds, script=script, pinning=pinning, raw_path=raw_path,
                )  # fmt: skip
            total, inclusive, own = parse_collapsed(raw_path.read_text())
            profiles.append(Profile(target, loop, requests, seconds, total, inclusive, own))
    return profiles


def summary(profiles: list[Profile]) -> list[str]:
    """One row per server: its CPU per request and the part of it spent in its handler."""
    lines = [
        "| server | requests sampled | samples | CPU per request | in the handler | per request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in profiles:
        handler = max(
            (n for name, n in p.inclusive.items() if name.startswith(HANDLERS[p.target])),
            default=0,
        )
        lines.append(
            f"| {p.target} ({p.loop}) | {p.requests:,} | {p.total:,} "
            f"| {p.us_per_request(p.total):.1f} µs | {100 * handler / max(p.total, 1):.1f}% "
            f"| {p.us_per_request(handler):.1f} µs |"
        )
    return lines


def render(profiles: list[Profile], command: str) -> str:
    lines = [
        "# Where a cache hit's CPU goes",
        "",
        f"py-spy at {RATE} Hz on each server while wrk holds 50 connections on the same hit, "
        f"measured with `{command}`. Inclusive: samples with the function anywhere on the stack; "
        "self: on top. CPU per request is the server's busy time per answered request, as the "
        "samples count it (py-spy pauses the process to sample it, so absolute figures are "
        "higher than in the hit table).",
        "",
        *summary(profiles),
    ]
    for p in profiles:
        lines += [
            "",
            f"## {p.target} ({p.loop})",
            "",
            "| inclusive | self | µs per request | function |",
            "|---:|---:|---:|---|",
        ]
        for frame, count in p.inclusive.most_common(40):
            lines.append(
                f"| {100 * count / p.total:.1f}% | {100 * p.own[frame] / p.total:.1f}% "
                f"| {p.us_per_request(count):.1f} | `{frame}` |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--event-loop", default="uvloop", choices=("asyncio", "uvloop"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.profile " + " ".join(sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="aitronos-profile-"))
    try:
        profiles = profile_hits(
            workdir,
            Pinning.choose(True),
            loop=args.event_loop,
            seconds=args.seconds,
            install=not args.no_install,
        )
    except Unavailable as error:
        print(f"bench.profile: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(profiles, command.strip())
    if args.out is not None:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
