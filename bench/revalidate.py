"""``python -m bench.revalidate``: browsers' forced revalidations against the upstream, same run.

Chromium adds ``Cache-Control: max-age=0`` to every script ``fetch()`` that sets
``If-None-Match``, so the README's browser long-poll loop asks the cache to revalidate on every
request. Two fleets of httpx long-pollers (the loop of ``docs/long-polling.md``: the first GET
plain, then ``If-None-Match`` with the last ``ETag`` and ``Prefer: wait``, again as soon as an
answer arrives, until the transcription is final) over fresh transcriptions in one simulator and
one proxy process: one fleet sends the header the way Chromium does, the other does not.
Upstream requests are counted at the origin (the simulator's per-ID counts). Writes
``results.json`` and ``results.md`` under ``--out``.

``--proxy-option`` passes options to the proxy (e.g. ``--proxy-option=--revalidate-window=0``
for the behaviour before the window); ``--label`` names the run in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import client, processes, report
from bench.processes import REPO_ROOT, Pinning, Service
from proxy.tools.fleet import assign_pollers, final_at, percentile
from proxy.tools.simulator import API_PREFIX

#: The browser loop's ``Prefer: wait`` (``docs/long-polling.md``).
WAIT = 25


@dataclass(frozen=True)
class Scale:
    pollers: int
    transcriptions: int
    queued: float
    processing: float
    stagger: float
    max_age: int


SCALES = {
    "tiny": Scale(10, 2, 0.0, 1.0, 0.5, 1),
    "full": Scale(100, 5, 1.0, 6.0, 4.0, 5),
}


@dataclass
class Run:
    fleet: str
    pollers: int
    transcriptions: int
    client_requests: int = 0
    client_errors: int = 0
    pollers_done: int = 0
    upstream_requests: int = 0
    upstream_per_id: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    completion_lag_p50_s: float | None = None
    seconds: float = 0.0


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    done: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)


async def _poll(
    session: httpx.AsyncClient,
    url: str,
    token: str,
    forced: bool,
    deadline: float,
    tally: _Tally,
) -> None:
    """The browser loop: plain first, then conditional long polls until a final status."""
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            response = await session.get(url, headers=headers)
        except httpx.HTTPError:
            tally.errors += 1
            await asyncio.sleep(0.5)
            continue
        tally.requests += 1
        key = str(response.status_code)
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if response.status_code == 304:
            if "Preference-Applied" not in response.headers:
                await asyncio.sleep(0.5)  # not held: back off, as the loop in the docs does
            continue
        if response.status_code != 200:
            tally.errors += 1
            await asyncio.sleep(0.5)
            continue
        became_final = final_at(response.content)
        if became_final is not None:
            tally.done += 1
            tally.lags.append(max(0.0, time.time() - became_final))
            return
        headers["If-None-Match"] = response.headers["ETag"]
        headers["Prefer"] = f"wait={WAIT}"
        if forced:
            headers["Cache-Control"] = "max-age=0"  # what Chromium adds to such a fetch()


async def run_one(name: str, proxy: Service, simulator_url: str, scale: Scale, forced: bool) -> Run:
    limits = httpx.Limits(max_connections=scale.pollers + 16, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=WAIT + 10.0) as session:
        seeded = await session.post(
            f"{simulator_url}/_sim/seed",
            json={"tokens": ["revalidate"], "count": scale.transcriptions},
        )
        seeded.raise_for_status()
        created = [
            (str(item["token"]), str(item["transcription_id"]))
            for item in seeded.json()["transcriptions"]
        ]
        client.reset_stats(simulator_url)
        duration = scale.queued + scale.processing + scale.stagger + scale.max_age + WAIT
        loop = asyncio.get_running_loop()
        started = loop.time()
        tally = _Tally()
        base = proxy.url
        await asyncio.gather(
            *(
                _poll(
                    session,
                    f"{base}{API_PREFIX}/{transcription_id}",
                    token,
                    forced,
                    started + duration,
                    tally,
                )
                for token, transcription_id in assign_pollers(created, scale.pollers)
            )
        )
        elapsed = loop.time() - started
    during = client.stats(simulator_url, per_id=True)["transcription_gets"]
    run = Run(name, scale.pollers, scale.transcriptions)
    run.client_requests = tally.requests
    run.client_errors = tally.errors
    run.pollers_done = tally.done
    run.upstream_per_id = {tid: int(during.get(tid, 0)) for _, tid in created}
    run.upstream_requests = sum(run.upstream_per_id.values())
    run.statuses = tally.statuses
    run.completion_lag_p50_s = percentile(sorted(tally.lags), 50)
    run.seconds = elapsed
    return run


def measure(workdir: Path, scale: Scale, options: list[str], pinning: Pinning) -> list[Run]:
    simulator = processes.start_simulator(
        workdir,
        [
            "--queued-seconds", str(scale.queued),
            "--processing-seconds", str(scale.processing),
            "--pending-max-age", str(scale.max_age),
            "--start-offsets", ",".join(
                f"{scale.stagger * i / scale.transcriptions:.3f}"
                for i in range(scale.transcriptions)
            ),
            "--seed", "7",
        ],
        pinning,
    )  # fmt: skip
    runs = []
    try:
        proxy = processes.start_proxy(
            workdir, simulator.url, pinning, options=["--access-log", "false", *options]
        )
        try:
            for name, forced in (
                ("without Cache-Control", False),
                ("Cache-Control: max-age=0 (Chromium)", True),
            ):
                run = asyncio.run(run_one(name, proxy, simulator.url, scale, forced))
                runs.append(run)
                print(
                    f"revalidate: {name}: {run.client_requests} client requests, "
                    f"{run.upstream_requests} upstream, {run.pollers_done}/{run.pollers} done",
                    file=sys.stderr,
                )
        finally:
            proxy.stop()
    finally:
        simulator.stop()
    return runs


def markdown(runs: list[Run], meta: dict[str, Any]) -> str:
    lines = [
        f"# Forced revalidations: {meta['label']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Proxy: `{meta['revision']}`; started {meta['started']}; load average before "
        f"{meta['load_before']}, after {meta['load_after']}; {meta['pinning']}.",
        "",
        "| | " + " | ".join(run.fleet for run in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("pollers / transcriptions", lambda r: f"{r.pollers} / {r.transcriptions}"),
        ("client requests", lambda r: f"{r.client_requests:,}"),
        (
            "client statuses",
            lambda r: ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())),
        ),
        ("client errors", lambda r: str(r.client_errors)),
        ("pollers that saw completion", lambda r: f"{r.pollers_done}/{r.pollers}"),
        ("completion noticed after (p50)", lambda r: _s(r.completion_lag_p50_s)),
        ("**upstream requests**", lambda r: f"**{r.upstream_requests}**"),
        ("upstream requests per ID", lambda r: " ".join(map(str, r.upstream_per_id.values()))),
        ("seconds", lambda r: f"{r.seconds:.1f}"),
    ]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(run) for run in runs) + " |")
    forced = runs[-1]
    goal = forced.upstream_requests <= 20
    lines += [
        "",
        f"Goal (issue 19): the `max-age=0` fleet makes at most 20 upstream requests: "
        f"{forced.upstream_requests}, {'met' if goal else '**not met**'}.",
        "",
        "Machine:",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in meta["machine"].items()]
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _revision() -> str:
    try:
        import subprocess

        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.revalidate", description=__doc__)
    parser.add_argument("--scale", choices=tuple(SCALES), default="full")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--label", default="the proxy's defaults")
    parser.add_argument("--proxy-option", action="append", default=[])
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    out = args.out or REPO_ROOT / "bench" / "results" / (
        "revalidate" if args.scale == "full" else "tmp/revalidate"
    )
    pinning = Pinning.choose(not args.no_pin)
    workdir = Path(tempfile.mkdtemp(prefix="aitronos-revalidate-"))
    meta: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.revalidate", *arguments]),
        "label": args.label,
        "revision": _revision(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": report.load_average(),
        "pinning": pinning.describe(),
        "machine": report.machine(),
    }
    try:
        runs = measure(workdir, SCALES[args.scale], list(args.proxy_option), pinning)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta["load_after"] = report.load_average()
    out.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "runs": [asdict(run) for run in runs]}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = markdown(runs, meta)
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
