"""The demo at a tiny scale, and its reusable parts: the fleet, the metrics reader, the table."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from proxy.ops.metrics import Metrics
from proxy.tools.demo import (
    DemoEndpoints,
    DemoOptions,
    FleetSetting,
    PhaseResult,
    ProxyProcessError,
    ProxyStats,
    UpstreamStats,
    build_parser,
    demo_simulator_config,
    fetch_simulator_stats,
    format_notes,
    format_table,
    main,
    notes,
    parse_proxy_metrics,
    run_demo,
    running_proxy,
    table_rows,
)
from proxy.tools.fleet import (
    SPELLINGS,
    FleetResult,
    assign_pollers,
    run_fleet,
    seed_simulator,
)
from proxy.tools.simulator import SimulatorConfig, create_simulator_app, serving

TINY = ["--pollers", "10", "--transcriptions", "3", "--duration", "2"]
ROW_NAMES = (
    "phase took",
    "client requests",
    "client requests per poller",
    "upstream requests",
    "hit ratio",
    "304s answered locally",
    "bytes sent to clients",
    "bytes fetched from upstream",
    "bandwidth saved",
    "p50 latency",
    "p99 latency",
    "long polls held for (p50, count)",
    "events received per client",
    "completion noticed after (p50)",
    "completion noticed after (max)",
)


def row(table: str, name: str) -> list[str]:
    for line in table.splitlines():
        if line.startswith(name + "  "):
            return re.split(r"\s{2,}", line[len(name) :].strip())
    raise AssertionError(f"no row {name!r} in\n{table}")


#: Runs the demo's CLI in a fresh interpreter, then names every product module it imported.
IN_FRESH_PROCESS = """
import sys
from proxy.tools.demo import main
code = main(sys.argv[1:], {})
product = ("proxy.app", "proxy.server", "proxy.cache", "proxy.front", "proxy.stores")
print("imported:", sorted(m for m in sys.modules if m.startswith(product)))
sys.exit(code)
"""


def test_demo_cli_runs_the_proxy_as_python_m_proxy_and_prints_four_explained_columns() -> None:
    """The proxy is a ``python -m proxy --upstream <sim> --host 127.0.0.1 --port <free>``
    process, not the product run in the demo's own process (none of it is imported there)."""
    done = subprocess.run(
        [sys.executable, "-c", IN_FRESH_PROCESS, *TINY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.rstrip().endswith("imported: []")
    command = re.search(r"^proxy: python -m proxy (.*?) \(pid", out, re.MULTILINE)
    assert command is not None, out
    assert re.fullmatch(
        r"--upstream http://127\.0\.0\.1:\d+ --host 127\.0\.0\.1 --port \d+", command[1]
    )
    header = " ".join(out.split("\n\n")[0].split())
    assert "each ending once every poller saw the final status or after 1s" in header
    for name in ROW_NAMES:
        assert len(row(out, name)) == 4, name
    without, with_proxy, _, streamed = (int(n) for n in row(out, "upstream requests"))
    clients_without, clients_polling, clients_held, subscribers = (
        int(n) for n in row(out, "client requests")
    )
    assert without == clients_without >= 10
    assert with_proxy < without and streamed < without
    assert clients_held < clients_polling
    assert 0 < subscribers <= 10  # one request each at most: every change came on its stream
    assert row(out, "events received per client")[:3] == ["—", "—", "—"]
    assert row(out, "hit ratio")[1].endswith("%")
    for took in row(out, "phase took"):
        assert float(took.removesuffix(" s")) <= 1.0 + 0.2  # at most half of --duration 2
    assert "What the figures mean:" in out
    assert "max-age=5" in out
    assert "pollers done" in done.stderr


def test_help_lists_the_demo_and_simulate_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  demo\s+\S", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  simulate\s+\S", done.stdout, re.MULTILINE), done.stdout
    assert "--upstream URL" in done.stdout


async def test_run_demo_reports_proxy_figures_from_its_metrics() -> None:
    out, err = io.StringIO(), io.StringIO()
    options = DemoOptions(pollers=12, transcriptions=3, duration=2.0)
    results = await run_demo(options, out=out, err=err)
    assert results is not None
    without, with_proxy, long_poll, streamed = results
    # Held requests are answered when the entry's max-age=5 runs out, past this 1 s phase.
    assert long_poll.fleet.requests < with_proxy.fleet.requests
    # A subscriber asks once; its events come on that stream (cut at the phase's end). The
    # proxy counts a stream's request when it ends, which may be after the figures are read.
    assert streamed.events and 0 < streamed.fleet.requests <= 12
    assert streamed.fleet.events >= streamed.fleet.requests
    assert long_poll.proxy is not None and long_poll.proxy.results.get("miss", 0) > 0
    assert without.proxy is None
    assert with_proxy.proxy is not None
    assert without.upstream.requests == without.fleet.requests
    assert with_proxy.upstream.requests < without.upstream.requests
    assert with_proxy.proxy.requests == with_proxy.fleet.requests
    assert with_proxy.proxy.results.get("hit", 0) > 0
    assert with_proxy.proxy.upstream_bytes == with_proxy.upstream.bytes_sent
    assert with_proxy.fleet.bytes_received == with_proxy.proxy.response_bytes


async def test_keep_running_serves_until_stopped_then_cleans_up() -> None:
    stop = asyncio.Event()
    serving_now = asyncio.Event()
    seen: list[DemoEndpoints] = []

    def on_serving(endpoints: DemoEndpoints) -> None:
        seen.append(endpoints)
        serving_now.set()

    out = io.StringIO()
    options = DemoOptions(pollers=4, transcriptions=2, duration=1.0, keep_running=True)
    demo = asyncio.create_task(
        run_demo(options, out=out, err=io.StringIO(), stop=stop, on_serving=on_serving)
    )
    await asyncio.wait_for(serving_now.wait(), timeout=30)
    (endpoints,) = seen
    assert endpoints.proxy_url is not None
    assert endpoints.proxy_pid is not None
    port = endpoints.proxy_url.rsplit(":", 1)[1]
    cmdline = Path(f"/proc/{endpoints.proxy_pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [part.decode() for part in cmdline] == [
        sys.executable, "-m", "proxy", "--upstream", endpoints.simulator_url,
        "--host", "127.0.0.1", "--port", port,
    ]  # fmt: skip
    assert f"{endpoints.proxy_url}/metrics" in out.getvalue()
    assert "curl" in out.getvalue()
    item = f"{endpoints.proxy_url}/v1/audio/transcribe/{endpoints.transcription_id}"
    async with aiohttp.ClientSession() as session:
        async with session.get(
            item, headers={"Authorization": f"Bearer {endpoints.token}"}
        ) as response:
            assert response.status == 200
            assert "aitronos-cache-proxy" in response.headers["Cache-Status"]
        async with session.get(f"{endpoints.proxy_url}/metrics") as response:
            assert "cacheproxy_requests_total" in await response.text()
        stop.set()
        assert await asyncio.wait_for(demo, timeout=30) is not None
        for url in (endpoints.proxy_url, endpoints.simulator_url):
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"{url}/healthz")
    assert not Path(f"/proc/{endpoints.proxy_pid}").exists()  # stopped and reaped


async def test_stop_before_the_table_interrupts_and_reports_it() -> None:
    stop = asyncio.Event()
    stop.set()
    err = io.StringIO()
    options = DemoOptions(pollers=4, transcriptions=2, duration=30.0)
    result = await asyncio.wait_for(run_demo(options, out=io.StringIO(), err=err, stop=stop), 10)
    assert result is None
    assert "interrupted" in err.getvalue()


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    config = SimulatorConfig(queued_seconds=0.0, processing_seconds=3600.0)
    async with serving(create_simulator_app(config)) as url:
        yield url


async def test_fleet_revalidates_with_the_last_etag(sim_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        created = await seed_simulator(session, sim_url, ["a", "b"], 2)
        fleet = await run_fleet(
            sim_url, assign_pollers(created, 6), 0.6, session=session, interval=0.1
        )
        stats = await fetch_simulator_stats(session, sim_url)
    assert fleet.pollers_done == 0
    assert fleet.errors == 0
    assert fleet.requests == stats.requests > 6
    assert fleet.statuses == {200: 6, 304: fleet.requests - 6}
    assert stats.not_modified == fleet.requests - 6
    assert fleet.bytes_received == stats.bytes_sent
    assert len(fleet.latencies) == fleet.requests


async def test_fleet_stops_polling_once_the_transcription_is_final() -> None:
    config = SimulatorConfig(queued_seconds=0.0, processing_seconds=0.0)
    async with serving(create_simulator_app(config)) as url:
        async with aiohttp.ClientSession() as session:
            created = await seed_simulator(session, url, ["a"], 3)
        fleet = await run_fleet(url, assign_pollers(created, 9), 30.0, interval=0.05)
    assert fleet.requests == 9
    assert fleet.pollers_done == 9
    assert fleet.elapsed < 30.0
    assert len(fleet.completion_lags) == 9


async def test_fleet_counts_errors_and_keeps_polling(sim_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        (pair,) = await seed_simulator(session, sim_url, ["a"], 1)
        await session.post(f"{sim_url}/_sim/faults", json={"status": 503, "count": 2})
        fleet = await run_fleet(sim_url, [pair], 0.5, session=session, interval=0.05)
    assert fleet.statuses[503] == 2
    assert fleet.statuses[200] == 1
    assert fleet.statuses[304] >= 1


async def test_proxy_metrics_are_read_from_the_proxys_own_exposition() -> None:
    metrics = Metrics(CollectorRegistry())
    for _ in range(7):
        metrics.observe_request("transcription", "hit", 0.001)
    metrics.observe_request("transcription", "miss", 0.01)
    metrics.observe_request("other", "bypass", 0.01)
    metrics.not_modified.inc(4)
    metrics.response_bytes.inc(1000)
    metrics.upstream_bytes.inc(300)
    metrics.bytes_saved.inc(700)
    stats = parse_proxy_metrics(generate_latest(metrics.registry).decode())
    assert stats.results["hit"] == 7
    assert stats.requests == 9
    assert stats.hit_ratio == pytest.approx(7 / 9)
    assert (stats.not_modified, stats.response_bytes) == (4, 1000)
    assert (stats.upstream_bytes, stats.bytes_saved) == (300, 700)
    earlier = ProxyStats({"hit": 2}, 1, 100, 100, 0)
    delta = stats.since(earlier)
    assert delta.results["hit"] == 5
    assert delta.not_modified == 3
    assert parse_proxy_metrics("").hit_ratio is None


def phase(
    label: str,
    upstream_bytes: int,
    proxy: ProxyStats | None,
    *,
    requests: int = 100,
    lags: tuple[float, ...] = (0.5, 1.0, 2.0),
    wait: int | None = None,
    held: tuple[float, ...] = (),
) -> PhaseResult:
    fleet = FleetResult(
        pollers=4,
        pollers_done=4,
        requests=requests,
        errors=0,
        statuses={200: requests},
        bytes_received=4096,
        latencies=tuple(i / 1000 for i in range(1, 101)),
        elapsed=1.0,
        completion_lags=lags,
        held=held,
    )
    return PhaseResult(label, fleet, UpstreamStats(100, 0, upstream_bytes), proxy, wait)


def test_table_compares_every_phase_with_the_first() -> None:
    proxy = ProxyStats({"hit": 90, "miss": 10}, 40, 4096, 1024, 3072)
    phases = [phase("without proxy", 4096, None), phase("with proxy", 1024, proxy)]
    cells = dict(table_rows(phases))
    assert cells["phase took"] == ["1.0 s", "1.0 s"]
    assert cells["client requests per poller"] == ["25.0", "25.0"]
    assert cells["hit ratio"] == ["—", "90.0%"]
    assert cells["304s answered locally"] == ["0", "40"]
    assert cells["bandwidth saved"] == ["—", "3.0 KiB (75.0%)"]
    assert cells["p50 latency"] == ["50.0 ms", "50.0 ms"]
    assert cells["p99 latency"] == ["99.0 ms", "99.0 ms"]
    assert cells["completion noticed after (p50)"] == ["1.0 s", "1.0 s"]
    assert cells["completion noticed after (max)"] == ["2.0 s", "2.0 s"]
    assert "client errors" not in cells
    assert "long polls held for (p50, count)" not in cells
    table = format_table(phases)
    assert table.splitlines()[0].split() == ["without", "proxy", "with", "proxy"]
    assert row(table, "bytes fetched from upstream") == ["4.0 KiB", "1.0 KiB"]


def test_the_notes_explain_this_runs_figures() -> None:
    """What newcomers asked: more client requests with the proxy, a long poll's seconds and
    its missing 304s, completion noticed later; each note carries this run's numbers."""
    proxy = ProxyStats({"hit": 90, "miss": 10}, 40, 4096, 1024, 3072)
    phases = [
        phase("without proxy", 4096, None, requests=32, lags=(0.2, 0.3, 0.4)),
        phase("with proxy", 1024, proxy, requests=44, lags=(1.0, 1.8, 3.0)),
        phase("long poll", 1024, proxy, requests=8, lags=(1.0, 1.7, 3.0), wait=25, held=(4.4,)),
    ]
    cells = dict(table_rows(phases))
    assert cells["long polls held for (p50, count)"] == ["—", "—", "4.4 s (1)"]
    explained = dict(notes(phases, FleetSetting(0.5, 7.5, 5)))
    assert "after 7.5 s at most" in explained["phase took"]
    assert "11.0 requests a poller against 8.0 without" in explained["client requests"]
    assert "Prefer: wait=25" in explained["client requests"]
    assert "held instead" in explained["304s answered locally"]
    assert "not held" in explained["p50 latency"]
    completion = explained["completion noticed after"]
    assert "+1.5s with proxy, +1.4s long poll" in completion
    assert "max-age=5" in completion and "RFC 9111" in completion
    text = format_notes(phases, FleetSetting(0.5, 7.5, 5))
    assert all(len(line) <= 100 for line in text.splitlines())


def test_fleet_percentiles_use_nearest_rank() -> None:
    fleet = phase("x", 0, None).fleet
    assert fleet.percentile(50) == 0.05
    assert fleet.percentile(100) == 0.1
    assert fleet.percentile(0) == 0.001
    empty = FleetResult(1, 0, 0, 0, {}, 0, (), 0.0)
    assert empty.percentile(50) is None


def test_pollers_are_spread_over_transcriptions() -> None:
    pairs = [("a", "1"), ("b", "2"), ("a", "3")]
    assigned = assign_pollers(pairs, 7)
    assert assigned == [*pairs, *pairs, pairs[0]]
    with pytest.raises(ValueError):
        assign_pollers([], 1)


def test_simulator_timings_make_every_transcription_final_within_the_phase() -> None:
    options = DemoOptions(duration=15.0, transcriptions=50)
    config = demo_simulator_config(options)
    latest = config.queued_seconds + config.processing_seconds + max(config.start_offsets)
    assert len(config.start_offsets) == 50
    assert latest < options.phase_seconds - 2


def test_flags_and_environment() -> None:
    args = build_parser({"DEMO_POLLERS": "7"}).parse_args(["--duration", "3", "--keep-running"])
    assert (args.pollers, args.duration, args.keep_running) == (7, 3.0, True)
    with pytest.raises(ValueError):
        DemoOptions(pollers=0)
    with pytest.raises(SystemExit):
        main(["--duration", "0"], {})


async def test_serving_shuts_its_app_down() -> None:
    async with serving(web.Application()) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 404
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_behind_a_compressing_origin_the_mixed_fleet_moves_fewer_bytes() -> None:
    """Every spelling of Accept-Encoding is one variant: the proxy fetches no more than
    without spellings, and sends compressed bytes to the clients that accept them."""
    options = DemoOptions(pollers=14, transcriptions=2, duration=3.0, compressing_origin=True)
    results = await run_demo(options, out=io.StringIO(), err=io.StringIO())
    assert results is not None
    without, with_proxy, *_ = results
    assert with_proxy.fleet.errors == 0 and with_proxy.fleet.statuses.get(200, 0) > 0
    assert with_proxy.upstream.requests < without.upstream.requests
    assert with_proxy.upstream.bytes_sent < without.upstream.bytes_sent
    assert with_proxy.fleet.bytes_received == with_proxy.proxy.response_bytes  # type: ignore[union-attr]


def test_the_demo_fleet_mixes_the_spellings_seen_in_the_wild() -> None:
    assert len(set(SPELLINGS)) == 7 and "" in SPELLINGS
    args = build_parser({"DEMO_COMPRESSING_ORIGIN": "true"}).parse_args([])
    assert args.compressing_origin is True
    assert build_parser({}).parse_args([]).compressing_origin is False


async def test_long_polls_through_the_real_proxy_are_held_apart_and_cut_at_the_end(
    tmp_path: Path,
) -> None:
    """Through ``python -m proxy``: a held answer (``Preference-Applied``) is timed as a hold,
    not as latency; a long poll still held when the fleet's time runs out is cut, not an error."""
    config = SimulatorConfig(
        queued_seconds=0.0,
        processing_seconds=0.6,
        pending_max_age=1,
        start_offsets=(0.0, 0.0, 3600.0),  # the third stays queued for an hour
    )
    async with (
        serving(create_simulator_app(config)) as url,
        running_proxy(url, tmp_path / "proxy.log", environ={}) as proxy,
        aiohttp.ClientSession() as session,
    ):
        *changing, never = await seed_simulator(session, url, ["a"], 3)
        woken = await run_fleet(
            proxy.url, assign_pollers(changing, 4), 20.0, session=session, wait=25
        )
        cut = await run_fleet(proxy.url, [never, never], 2.5, session=session, wait=25)
    assert woken.pollers_done == 4 and woken.errors == 0 and woken.cut == 0
    assert len(woken.latencies) == 4  # the first, unconditional request of each
    assert len(woken.held) == 4  # then one held until the copy was stale and the change seen
    assert all(0.2 < seconds < 5.0 for seconds in woken.held)
    assert (cut.cut, cut.errors, cut.pollers_done) == (2, 0, 0)
    assert cut.requests == 2 and cut.held == ()


async def test_a_proxy_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """The user's PROXY_* variables reach the proxy, as they would; a bad one stops the demo
    with the proxy's own error line."""
    with pytest.raises(ProxyProcessError, match="PROXY_CACHE_SCOPE: expected one of") as caught:
        async with running_proxy(
            "http://127.0.0.1:9", tmp_path / "proxy.log", environ={"PROXY_CACHE_SCOPE": "nope"}
        ):
            raise AssertionError("the proxy should not have become ready")
    assert "exited with 2" in str(caught.value)
