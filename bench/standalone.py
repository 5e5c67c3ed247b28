"""The frame of a standalone bench (``python -m bench.NAME``): parser, meta block, result files.

Each of them used to end its ``main`` with the same meta block and the same two result files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.processes import REPO_ROOT, Pinning


def parser(
    module: str, doc: str | None, *, scales: Collection[str] = ()
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
