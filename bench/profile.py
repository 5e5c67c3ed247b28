"""Profile the proxy's cache-hit path under wrk load with py-spy, and summarise where time goes.

``python -m bench.profile [--seconds 10] [--event-loop asyncio] [--out bench/results/profile.md]``

py-spy samples the running proxy process from outside (``pip install py-spy``); the summary lists
the functions with the most samples, inclusive (anywhere on the stack) and self (on top).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench import client, hit, processes
from bench.processes import Pinning


def parse_collapsed(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, inclusive and self sample counts per frame from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if not frame.startswith("process ")]
        frames = [frame for frame in frames if not frame.startswith("thread ")]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive, own


def _short(frame: str) -> str:
    """``handle (proxy/app.py:160)`` without the line number, so a function is one row."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def render(total: int, inclusive: collections.Counter[str], own: collections.Counter[str]) -> str:
    lines = [
        f"{total} samples.",
        "",
        "| inclusive | self | samples | function |",
        "|---:|---:|---:|---|",
    ]
    for frame, count in inclusive.most_common(45):
        share, own_share = 100 * count / total, 100 * own[frame] / total
        lines.append(f"| {share:.1f}% | {own_share:.1f}% | {count} | `{frame}` |")
    lines += ["", "Top self time:", "", "| self | function |", "|---:|---|"]
    for frame, count in own.most_common(25):
        lines.append(f"| {100 * count / total:.1f}% | `{frame}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--event-loop", default="asyncio", choices=("asyncio", "uvloop"))
    parser.add_argument("--target", default="proxy", choices=("proxy", "bare"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    wrk = processes.ensure_binary("wrk", install=True)
    pinning = Pinning.choose(True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    script = workdir / "report.lua"
    script.write_text(hit.WRK_REPORT)
    simulator = processes.start_simulator(
        workdir, ["--queued-seconds", "0", "--processing-seconds", "0"], pinning
    )
    try:
        (transcription_id,) = client.seed(simulator.url, [hit.TOKEN], 1)
        proxy = processes.start_proxy(
            workdir,
            simulator.url,
            pinning,
            options=["--access-log", "false", "--event-loop", args.event_loop],
        )
        path = f"/v1/audio/transcribe/{transcription_id}"
        headers = {"Authorization": f"Bearer {hit.TOKEN}"}
        client.http_get(proxy.url + path, headers)
        if args.target == "bare":
            response_file = workdir / "hit-response.json"
            hit.capture_response(proxy.url + path, headers, response_file)
            proxy.stop()
            proxy = processes.start_bare(workdir, response_file, pinning, loop=args.event_loop)
        try:
            url = proxy.url + path
            raw_path = workdir / "profile.txt"
            outcome: dict[str, Any] = {}
            load = threading.Thread(
                target=lambda: outcome.update(hit.run_wrk(wrk, url, headers, **wrk_options)),
            )
            wrk_options: dict[str, Any] = dict(
                duration=args.seconds + 2, connections=50, script=script, pinning=pinning
            )
            load.start()
            subprocess.run(
                [
                    py_spy, "record", "--pid", str(proxy.pid), "--duration", str(int(args.seconds)),
                    "--rate", "250", "--format", "raw", "--output", str(raw_path),
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip
            load.join()
            report = (
                f"Target: {args.target} ({args.event_loop}); wrk: {outcome.get('requests', 0)} "
            )
            report += f"requests in {args.seconds + 2:.0f} s.\n\n"
            report += render(*parse_collapsed(raw_path.read_text()))
        finally:
            proxy.stop()
    finally:
        simulator.stop()
    if args.out is not None:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
