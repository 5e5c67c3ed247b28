"""What the benchmarks share: the run context, the staggered simulator, the standalone CLI frame.

Each bench used to take the same six arguments, start the simulator with the same five flags and
count the same fleet figures; they are here once (the standalone CLI frame is ``bench.standalone``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import processes
from bench.processes import Pinning, Service


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bench:
    """What every ``measure`` is given: where to work, at which scale, pinned how, logging where."""

    workdir: Path
    scale: str
    pinning: Pinning
    log: Callable[[str], None] = log_to_stderr
    install: bool = True
    #: Limits a run to these named systems; empty: every system.
    only: frozenset[str] = frozenset()

    def wants(self, system: str) -> bool:
        """Whether ``only`` leaves ``system`` in the run."""
        return not self.only or system in self.only


@dataclass(frozen=True)
class Staggered:
    """A scale whose ``transcriptions`` start ``stagger`` seconds apart in all, each ``queued``
    then ``processing`` seconds, answered with ``max-age=max_age`` while pending."""

    transcriptions: int
    queued: float
    processing: float
    stagger: float
    max_age: int

    def poll_seconds(self, interval: float) -> float:
        """How long pollers asking every ``interval`` run: until the last job has been final
        for one ``max_age`` window and three intervals, and two seconds more."""
        return self.queued + self.processing + self.stagger + self.max_age + 3 * interval + 2.0


def start_staggered(
    workdir: Path, scale: Staggered, pinning: Pinning, extra: Sequence[str] = ()
) -> Service:
    """The simulator with ``scale``'s staggered jobs (seed 7), ``extra`` added to its flags."""
    jobs = processes.staggered_jobs(
        queued=scale.queued,
        processing=scale.processing,
        max_age=scale.max_age,
        stagger=scale.stagger,
        transcriptions=scale.transcriptions,
    )
    return processes.start_simulator(workdir, [*jobs, *extra], pinning)


@dataclass
class PollerRun:
    """What every polling-fleet run counts, whatever else it measures."""

    fleet: str
    pollers: int
    transcriptions: int
    client_requests: int = 0
    client_errors: int = 0
    pollers_done: int = 0
    upstream_requests: int = 0


def table(runs: Sequence[Any], rows: Sequence[tuple[str, Callable[[Any], str]]]) -> list[str]:
    """A Markdown table with a column per run (headed by its fleet) and a row per ``rows``."""
    lines = [
        "| | " + " | ".join(run.fleet for run in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(run) for run in runs) + " |")
    return lines


def heading(title: str, meta: dict[str, Any], *, proxy: str = "", then: str = "") -> list[str]:
    """A standalone report's title, command and when/load/pinning line (``proxy``: a revision
    before it; ``then``: more after it)."""
    started = f"started {meta['started']}" if proxy else f"Started {meta['started']}"
    return [
        f"# {title}",
        "",
        f"Command: `{meta['command']}`  ",
        f"{f'Proxy: `{proxy}`; ' if proxy else ''}{started}; load average before "
        f"{meta['load_before']}, after {meta['load_after']}; {meta['pinning']}{then}.",
        "",
    ]


def machine_lines(meta: dict[str, Any]) -> list[str]:
    return ["", "Machine:", "", *(f"- {key}: {value}" for key, value in meta["machine"].items())]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"
