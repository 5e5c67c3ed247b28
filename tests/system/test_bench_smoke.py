"""Every benchmark mode runs end to end at a tiny scale and writes its tables and its chart.

One ``python -m bench --mode all --scale tiny`` run (about half a minute) is shared by the tests
below. They check what each mode produced, never how fast: figures belong in ``bench/results``.
A system is only excused when its binary is missing (``.ci/run`` installs nginx, Varnish and wrk).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.fleet import SYSTEMS

ROOT = Path(__file__).resolve().parents[2]
#: Every system the fleet mode measures, less the bare origin.
CACHES = tuple(system for system in SYSTEMS if system != "no cache")
BINARIES = {
    "nginx proxy_cache": "nginx",
    "Varnish": "varnishd",
    "3 replicas + Redis": "redis-server",
    "2 workers": "redis-server",
    "aitronos-cache-proxy (2 workers, uvloop)": "redis-server",
}
HIT_SYSTEMS = (
    "aitronos-cache-proxy",
    "bare aiohttp",
    "aitronos-cache-proxy (uvloop)",
    "bare aiohttp (uvloop)",
    "aitronos-cache-proxy (access log on)",
    "aitronos-cache-proxy (2 workers, uvloop)",
    "nginx proxy_cache",
    "Varnish",
)


def installed(binary: str) -> bool:
    return bool(shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin"))


def fail_if_skipped(system: str, skipped: str | None) -> None:
    """Fail when the system was skipped, naming the missing binary if that is why (scripts/test
    installs every one: a comparison that silently drops a system proves nothing)."""
    if skipped is None:
        return
    binary = "wrk" if skipped.startswith("wrk") else BINARIES.get(system)
    if binary is not None and not installed(binary):
        pytest.fail(f"{system}: {binary} is not installed (scripts/test installs it)")
    pytest.fail(f"{system} was skipped: {skipped}")


def run_bench(out: Path, *args: str) -> None:
    """``python -m *args --out out``, which must succeed."""
    command = [sys.executable, "-m", *args, "--out", str(out)]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def report(directory: Path) -> tuple[dict[str, Any], str]:
    """The results.json and results.md a bench wrote in ``directory``."""
    text = (directory / "results.md").read_text()
    return json.loads((directory / "results.json").read_text()), text


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bench")
    run_bench(directory, "bench", "--mode", "all", "--scale", "tiny", "--no-install")
    return directory


@pytest.fixture(scope="module")
def results(out: Path) -> dict[str, Any]:
    return report(out)[0]


def test_the_report_has_every_section_the_machine_and_the_command(out: Path) -> None:
    text = (out / "results.md").read_text()
    for heading in ("## Machine", "## Targets", "## Cache-hit path", "## Polling-fleet economy"):
        assert heading in text
    assert "## Memory" in text
    assert "python -m bench --mode all --scale tiny" in text
    for fact in ("| CPU |", "| RAM |", "| kernel |", "| Python |", "| aiohttp |", "| nginx |"):
        assert fact in text


def test_the_fleet_chart_is_a_png(out: Path) -> None:
    assert (out / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("system", HIT_SYSTEMS)
def test_hit_mode_measures_each_system_from_its_cache(results: dict[str, Any], system: str) -> None:
    rows = {row["system"]: row for row in results["hit"]}
    assert system in rows, sorted(rows)
    row = rows[system]
    fail_if_skipped(system, row["skipped"])
    median = row["median"]
    assert median["requests"] > 0
    assert median["errors"] == 0
    assert sum(run["upstream_requests"] for run in row["runs"]) == 0


def test_hit_mode_compares_the_proxy_with_its_ceiling(results: dict[str, Any]) -> None:
    measured = [t["target"] for t in results["targets"]]
    assert any(name.startswith("hit throughput") for name in measured)
    assert any(name.startswith("p99 hit latency") for name in measured)


@pytest.mark.parametrize("system", CACHES)
def test_fleet_mode_shows_each_cache_sparing_the_upstream(
    results: dict[str, Any], system: str
) -> None:
    runs = results["fleet"]
    largest = max(run["pollers"] for run in runs)
    by_system = {run["system"]: run for run in runs if run["pollers"] == largest}
    baseline, cached = by_system["no cache"], by_system[system]
    fail_if_skipped(system, cached["skipped"])
    assert baseline["upstream_requests"] == baseline["client_requests"] > 0
    assert 0 < cached["upstream_requests"] < baseline["upstream_requests"]
    assert cached["pollers_done"] == largest
    assert cached["upstream_after_final"] == 0
    assert cached["per_window"] > 0


def test_replicas_sharing_redis_fetch_less_than_independent_replicas(
    results: dict[str, Any],
) -> None:
    runs = results["fleet"]
    largest = max(run["pollers"] for run in runs)
    by_system = {run["system"]: run for run in runs if run["pollers"] == largest}
    shared, independent = by_system["3 replicas + Redis"], by_system["3 replicas, no Redis"]
    fail_if_skipped("3 replicas + Redis", shared["skipped"])
    assert 0 < shared["upstream_requests"] < independent["upstream_requests"]


def test_memory_mode_fills_the_cache_through_real_requests(results: dict[str, Any]) -> None:
    points = results["memory"]
    assert [p["entries"] for p in points] == [100, 500]
    for point in points:
        assert point["errors"] == 0
        assert point["cache_entries_metric"] == point["entries"]
        assert point["rss_bytes"] > point["baseline_rss_bytes"] > 0
        assert point["body_bytes"] > 0


def test_profile_mode_samples_the_proxy_and_the_bare_handler(out: Path) -> None:
    text = (out / "results.md").read_text()
    assert "## Profile of a hit" in text
    if not (out / "profile.md").exists():
        reason = text.split("## Profile of a hit", 1)[1].strip().splitlines()[0]
        pytest.skip(f"profiling is not possible here: {reason}")
    profile = (out / "profile.md").read_text()
    assert "## proxy (uvloop)" in profile
    assert "## bare (uvloop)" in profile
    # the hit is sampled in the proxy's own fast path (a replayed or a prepared answer)
    assert "`FastPath.replay (" in profile or "`FastPath.answer (" in profile


def test_coding_mode_runs_behind_the_compressing_origin(tmp_path: Path) -> None:
    """``--mode coding`` end to end for the proxy alone: the mixed fleet, the unchanged poll
    (one full download) and the 20 KB transcript (gzip at most a third of identity)."""
    only = ("--only", "aitronos-cache-proxy")
    run_bench(tmp_path, "bench", "--mode", "coding", "--scale", "tiny", "--no-install", *only)
    results, text = report(tmp_path / "coding")
    assert "python -m bench --mode coding --scale tiny" in text
    (poll,) = results["polls"]
    assert poll["system"] == "aitronos-cache-proxy" and poll["upstream_200"] == 1
    assert all(run["upstream_requests"] > 0 for run in results["fleet"])
    (sized,) = results["sizes"]
    if sized["skipped"]:
        fail_if_skipped("aitronos-cache-proxy", sized["skipped"])
    assert 0 < sized["gzip_bytes"] * 3 <= sized["identity_bytes"]


def test_long_poll_bench_runs_both_fleets_and_judges_the_goals(tmp_path: Path) -> None:
    run_bench(tmp_path, "bench.longpoll", "--scale", "tiny")
    results, text = report(tmp_path)
    polling, held = results["runs"]
    assert polling["pollers_done"] == polling["pollers"] == held["pollers_done"]
    assert held["client_requests"] < polling["client_requests"]
    assert held["waiting_peak"] > 0
    assert len(results["targets"]) == 4
    assert "| goal |" in text


def test_revalidate_bench_counts_the_upstream_requests_of_both_fleets(tmp_path: Path) -> None:
    run_bench(tmp_path, "bench.revalidate", "--scale", "tiny")
    results, text = report(tmp_path)
    plain, forced = results["runs"]
    assert plain["pollers_done"] == plain["pollers"] == forced["pollers_done"]
    assert plain["upstream_requests"] > 0 and forced["upstream_requests"] > 0
    # Forced revalidations collapsed: at most one more upstream request per transcription.
    assert forced["upstream_requests"] <= plain["upstream_requests"] + forced["transcriptions"]
    assert "Goal (issue 19)" in text


def test_held_bench_splits_clients_over_processes_and_the_proxy_over_workers(
    tmp_path: Path,
) -> None:
    assert shutil.which("redis-server"), "redis-server is needed for --workers"
    run_bench(tmp_path, "bench.held", "--clients", "300", "--workers", "2",
              "--client-processes", "2", "--max-wait", "30", "--no-pin")  # fmt: skip
    results, text = report(tmp_path)
    (run,) = results["results"]
    # Every answer, from both client processes, is the new 200: about half of them woken in
    # the worker the change did not reach (through Redis).
    assert run["answered"] == run["correct"] == 300
    assert set(run["held_by_worker"]) == {"0", "1"} and sum(run["held_by_worker"].values()) == 300
    assert run["notes"] == []  # one descriptor limit line per worker
    assert run["rss_held"] > run["rss_before"] > 0
    assert "load generator in 2 processes" in text
