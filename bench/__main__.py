"""``python -m bench``: run the benchmarks, write ``results.md``, ``results.json``, ``fleet.png``.

    python -m bench --mode all --scale full      # the committed results (about 15 minutes)
    python -m bench --mode all --scale tiny      # a few seconds each, as CI's smoke test runs it
    python -m bench --mode coding --scale full   # behind a compressing origin (results/coding)

Every system runs as a real process on loopback ports. nginx, Varnish and wrk are installed from
Debian's packages when missing (``--no-install`` to skip that); a system that cannot run is
reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench import coding, fleet, hit, memory, profile, report
from bench.common import Bench
from bench.processes import REPO_ROOT, Pinning, Unavailable

MODES = ("hit", "fleet", "memory", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the proxy against bare aiohttp, nginx and Varnish on this machine.",
    )
    parser.add_argument("--mode", choices=("all", *MODES, "coding"), default="all")
    parser.add_argument("--scale", choices=("tiny", "full"), default="full")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write results (default bench/results, or bench/results/tmp for tiny)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SYSTEM",
        help="limit hit and fleet runs to this system (repeatable), e.g. 'nginx proxy_cache'",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and load generators to CPUs"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install missing tools"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "bench", *arguments])
    out = args.out or (REPO_ROOT / "bench" / "results" / ("tmp" if args.scale == "tiny" else ""))
    if args.mode == "coding":
        return run_coding(args, command, out)
    modes = MODES if args.mode == "all" else (args.mode,)
    bench = _bench(args)
    workdir, pinning, install, log = bench.workdir, bench.pinning, bench.install, bench.log
    started = datetime.now(UTC)
    load_before = report.load_average()
    log(f"bench: {', '.join(modes)} at scale {args.scale}; {pinning.describe()}; work in {workdir}")
    hits = fleets = points = None
    profiles: list[profile.Profile] | str | None = None
    try:
        if "hit" in modes:
            hits = hit.measure(bench)
        if "fleet" in modes:
            fleets = fleet.measure(bench)
        if "memory" in modes:
            points = memory.measure(workdir, args.scale, pinning, log=log)
        if "profile" in modes:
            seconds = 1.0 if args.scale == "tiny" else 8.0
            try:
                profiles = profile.profile_hits(
                    workdir, pinning, loop="uvloop", seconds=seconds, install=install
                )
            except Unavailable as error:
                profiles = str(error)
                log(f"profile skipped: {error}")
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    written = report.write(
        out,
        command=command,
        scale=args.scale,
        pinning=pinning.describe(),
        load_before=load_before,
        load_after=report.load_average(),
        started=started,
        hits=hits,
        fleets=fleets,
        memory=points,
        profiles=profiles,
        notes=args.note,
    )
    print(written.read_text())
    log(f"bench: wrote {written}")
    return 0


def run_coding(args: argparse.Namespace, command: str, out: Path) -> int:
    """``--mode coding``: its own report, in ``coding/`` under the results directory."""
    bench = _bench(args)
    started = datetime.now(UTC)
    load_before = report.load_average()
    try:
        results = coding.measure(bench)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    header = [
        "# Content coding behind a compressing origin",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} to {datetime.now(UTC):%H:%M} UTC at scale "
        f"`{args.scale}` with:",
        "",
        "```sh",
        command,
        "```",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in report.machine().items()),
        f"| CPU pinning | {bench.pinning.describe()} |",
        f"| load average (1, 5, 15 min) | {load_before} before, {report.load_average()} after |",
        "",
        *args.note,
        "",
        coding.__doc__ or "",
    ]
    written = coding.write(out / "coding", results, header)
    print(written.read_text())
    bench.log(f"bench: wrote {written}")
    return 0


def _bench(args: argparse.Namespace) -> Bench:
    """The run's context from the command line, in a fresh working directory."""
    return Bench(
        workdir=Path(tempfile.mkdtemp(prefix="aitronos-bench-")),
        scale=args.scale,
        pinning=Pinning.choose(not args.no_pin),
        install=not args.no_install,
        only=frozenset(args.only),
    )


if __name__ == "__main__":
    sys.exit(main())
