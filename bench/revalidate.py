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

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import client, common, processes, standalone
from bench.common import PollerRun
from bench.processes import REPO_ROOT, Pinning, Service
from bench.standalone import Standalone
from proxy.tools.fleet import assign_pollers, final_at, percentile
from proxy.tools.simulator import API_PREFIX

#: The browser loop's ``Prefer: wait`` (``docs/long-polling.md``).
WAIT = 25


@dataclass(frozen=True)
class Scale(common.Staggered):
    pollers: int


SCALES = {
    "tiny": Scale(pollers=10, transcriptions=2,
                  queued=0.0, processing=1.0, stagger=0.5, max_age=1),
    "full": Scale(pollers=100, transcriptions=5,
                  queued=1.0, processing=6.0, stagger=4.0, max_age=5),
}  # fmt: skip


@dataclass
class Run(PollerRun):
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
    simulator = common.start_staggered(workdir, scale, pinning)
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
    lines = common.heading(f"Forced revalidations: {meta['label']}", meta, proxy=meta["revision"])
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
    lines += common.table(runs, rows)
    forced = runs[-1]
    goal = forced.upstream_requests <= 20
    lines += [
        "",
        f"Goal (issue 19): the `max-age=0` fleet makes at most 20 upstream requests: "
        f"{forced.upstream_requests}, {'met' if goal else '**not met**'}.",
    ]
    lines += common.machine_lines(meta)
    return "\n".join(lines) + "\n"


_s = common.seconds


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
    parser = standalone.parser("revalidate", __doc__, scales=SCALES)
    parser.add_argument("--label", default="the proxy's defaults")
    parser.add_argument("--proxy-option", action="append", default=[])
    args = parser.parse_args(argv)
    bench = Standalone.start("revalidate", args, argv, label=args.label, revision=_revision())
    with bench.workdir() as workdir:
        runs = measure(workdir, SCALES[args.scale], list(args.proxy_option), bench.pinning)
    payload = {"runs": [asdict(run) for run in runs]}
    return bench.finish(payload, lambda meta: markdown(runs, meta))


if __name__ == "__main__":
    sys.exit(main())
