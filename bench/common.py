"""What the benchmarks share: the run context, the staggered simulator, the standalone CLI frame.

Each bench used to take the same six arguments, start the simulator with the same five flags and
end its ``main`` with the same meta block and the same two result files; they are here once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench import processes, report
from bench.processes import REPO_ROOT, Pinning, Service


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


class Staggered(Protocol):
    """A scale whose transcriptions start ``stagger`` seconds apart in all."""

    @property
    def queued(self) -> float: ...
    @property
    def processing(self) -> float: ...
    @property
    def stagger(self) -> float: ...
    @property
    def transcriptions(self) -> int: ...
    @property
    def max_age(self) -> int: ...


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


def machine_lines(meta: dict[str, Any]) -> list[str]:
    return ["", "Machine:", "", *(f"- {key}: {value}" for key, value in meta["machine"].items())]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def parser(
    module: str, doc: str | None, *, scales: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """A standalone bench's parser with the flags they all take: --out, --no-pin (and --scale
    when it has ``scales``)."""
    parsed = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc)
    if scales:
        parsed.add_argument("--scale", choices=tuple(scales), default="full")
    parsed.add_argument("--out", type=Path, default=None)
    parsed.add_argument("--no-pin", action="store_true")
    return parsed


@dataclass
class Standalone:
    """One run of a standalone bench (``python -m bench.NAME``): its meta block and its results."""

    module: str
    args: argparse.Namespace
    pinning: Pinning
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls, module: str, args: argparse.Namespace, argv: list[str] | None, **extra: Any
    ) -> Standalone:
        arguments = sys.argv[1:] if argv is None else argv
        pinning = Pinning.choose(not args.no_pin)
        meta: dict[str, Any] = {
            "command": shlex.join(["python", "-m", f"bench.{module}", *arguments]),
            **extra,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_before": report.load_average(),
            "pinning": pinning.describe(),
        }
        return cls(module, args, pinning, meta)

    @contextmanager
    def workdir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f"aitronos-{self.module}-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def default_out(self) -> Path:
        """``bench/results/NAME``, or ``bench/results/tmp/NAME`` below full scale."""
        tmp = "tmp/" if getattr(self.args, "scale", "full") != "full" else ""
        return REPO_ROOT / "bench" / "results" / f"{tmp}{self.module}"

    def finish(self, payload: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> int:
        """Write ``results.json`` (meta and ``payload``) and ``results.md``, print the latter."""
        self.meta["load_after"] = report.load_average()
        self.meta["machine"] = report.machine()
        out: Path = self.args.out or self.default_out()
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({**self.meta, **payload}, indent=2) + "\n")
        text = markdown(self.meta)
        (out / "results.md").write_text(text)
        print(text)
        return 0
