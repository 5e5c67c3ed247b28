"""The Grafana dashboard and the alert rules, proven against a real Prometheus scraping the proxy.

A real ``prometheus`` scrapes a running proxy (in front of the simulated API) every second while a
short, bounded load goes through it. Then every PromQL expression of every dashboard panel and
every alert rule is evaluated through Prometheus' HTTP API, with the dashboard's variables
substituted as Grafana would, and must be valid and return at least one series.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from proxy.ops.config import Settings
from proxy.tools.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.support.rawkit import serve_proxy

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "cacheproxy.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = ROOT / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
JOB = "cacheproxy"
TOKEN = "dashboard-test-token"
DEADLINE = 30.0
#: What Grafana would put for its built-in interval variables with a 1 s scrape interval.
BUILTINS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}


@pytest.fixture
def prometheus_installed() -> None:
    """A missing prometheus is a failure, not a skip: the proof would prove nothing."""
    assert PROMETHEUS is not None and PROMTOOL is not None, (
        "prometheus/promtool are missing: scripts/test installs Debian's prometheus package"
    )


needs_prometheus = pytest.mark.usefixtures("prometheus_installed")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel, rows included."""
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation: ``$name`` and ``${name}``, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name.lstrip("$") + "}", values[name])
        expr = expr.replace(name, values[name])
    return expr


_THRESHOLD = re.compile(r"(?<![=!~<>])(==|!=|>=|<=|>|<)\s*(?=[0-9.])")


def as_bool(expr: str) -> str:
    """An alert expression with each comparison against a constant made ``bool``.

    Unlike the alert itself, which returns series only while it fires, this returns every series
    the comparison is judged on (0 or 1), so it shows whether the signals exist at all.
    """
    return _THRESHOLD.sub(lambda m: f"{m.group(1)} bool ", expr)


def test_as_bool_rewrites_thresholds_but_not_label_matchers() -> None:
    expr = 'sum(rate(x{result!="bypass",le="0.5"}[5m])) < 0.2 and y > 1 and up == 0'
    rewritten = 'sum(rate(x{result!="bypass",le="0.5"}[5m])) < bool 0.2 and y > bool 1'
    assert as_bool(expr) == rewritten + " and up == bool 0"


def test_dashboard_has_the_panels_operators_asked_for() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    titles = {title for title, _ in panel_targets(board)}
    exprs = " ".join(expr for _, expr in panel_targets(board))

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert {
        "Hit ratio over time",
        "Requests by result",
        "Client requests vs upstream requests",
        "Bandwidth",
        "Upstream latency",
        "Upstream errors by kind",
        "304s answered locally",
        "Coalesced requests",
        "Cache size vs budget",
        "Cache entries",
        "Evictions",
        "Store errors",
        "Long polling",
    } <= titles
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in exprs
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


@needs_prometheus
def test_promtool_accepts_the_scrape_configuration_and_the_rules() -> None:
    assert PROMTOOL is not None
    for command in (
        [PROMTOOL, "check", "config", str(SCRAPE_CONFIG)],
        [PROMTOOL, "check", "rules", str(ALERTS)],
        [PROMTOOL, "test", "rules", str(ALERT_TESTS)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrometheusAPI:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.base}{path}", params=params) as response:
            payload = await response.json()
        return payload

    async def query(self, expr: str) -> Any:
        return await self.get("/api/v1/query", query=expr)

    async def until(self, what: str, check: Callable[[], Awaitable[Any]]) -> Any:
        """Poll ``check`` until it returns something truthy, within the deadline."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not (result := await check()):
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"Prometheus never got there: {what}") from None
        return result


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    simulator = Simulator(SimulatorConfig(queued_seconds=0, processing_seconds=0))
    server = TestServer(create_simulator_app(simulator=simulator), host="127.0.0.1")
    await server.start_server()
    yield simulator, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def proxy(simulator: tuple[Simulator, str]) -> AsyncIterator[str]:
    settings = Settings(upstream=simulator[1], upstream_timeout=2.0)
    async with serve_proxy(settings) as running:
        yield f"127.0.0.1:{running.port}"


@pytest.fixture
async def prometheus(proxy: str, tmp_path: Path) -> AsyncIterator[PrometheusAPI]:
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [proxy]}]}],
            }
        )
    )
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        async with aiohttp.ClientSession() as session:
            api = PrometheusAPI(session, f"http://{address}")

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError((tmp_path / "prometheus.log").read_text())
                try:
                    async with session.get(f"{api.base}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await api.until("ready", ready)
            yield api
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        log.close()


async def drive_load(simulator: Simulator, proxy: str) -> None:
    """A short, bounded mix: misses, hits, local 304s, sub-resources, errors, coalescing, POSTs."""
    ids = simulator.seed_transcriptions(TOKEN, 6)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://{proxy}/v1/audio/transcribe"
    async with aiohttp.ClientSession(headers=auth) as session:

        async def get(path: str, **headers: str) -> int:
            async with session.get(f"{base}/{path}", headers=headers) as response:
                await response.read()
                return response.status

        for transcription_id in ids[:4]:
            assert await get(transcription_id) == 200
            assert await get(transcription_id) == 200
            async with session.get(f"{base}/{transcription_id}") as response:
                etag = response.headers["ETag"]
            assert await get(transcription_id, **{"If-None-Match": etag}) == 304
            assert await get(f"{transcription_id}/paragraphs") == 200
            assert await get(f"{transcription_id}/paragraphs") == 200

        simulator.inject_fault(status=503, count=3)
        simulator.inject_fault(status=429, count=1)
        for _ in range(4):
            assert await get(ids[4]) in (429, 503)

        simulator.inject_fault(delay=0.3, count=1)
        statuses = await asyncio.gather(*(get(ids[5]) for _ in range(4)))
        assert statuses == [200] * 4

        async with session.post(base, json={"audio_url": "https://example.com/a.mp3"}) as created:
            assert created.status == 201


async def scraped_total_is(api: PrometheusAPI, expected: float) -> bool:
    """Whether Prometheus' latest sample of all client requests is ``expected``."""
    answer = await api.query(f'sum(cacheproxy_requests_total{{job="{JOB}"}})')
    result = answer["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == expected


@needs_prometheus
async def test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus(
    simulator: tuple[Simulator, str], proxy: str, prometheus: PrometheusAPI
) -> None:
    api = prometheus

    async def target_up() -> bool:
        targets = (await api.get("/api/v1/targets"))["data"]["activeTargets"]
        return bool(targets) and all(target["health"] == "up" for target in targets)

    await api.until("the proxy target is up", target_up)
    await api.until("a first scrape with the counters", lambda: scraped_total_is(api, 0.0))
    await drive_load(simulator[0], proxy)
    async with aiohttp.ClientSession() as session, session.get(f"http://{proxy}/metrics") as page:
        text = await page.text()
    expected = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cacheproxy_requests_total{")
    )
    await api.until("a scrape after the load", lambda: scraped_total_is(api, expected))

    async def errors_alert_active() -> bool:
        alerts = (await api.get("/api/v1/alerts"))["data"]["alerts"]
        return any(alert["labels"]["alertname"] == "UpstreamErrorsRising" for alert in alerts)

    await api.until("UpstreamErrorsRising pending after the error burst", errors_alert_active)

    board = dashboard()
    values = dict(BUILTINS)
    failures: list[str] = []
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = await label_values(api, substitute(variable["query"]["query"], values))
        if not found:
            failures.append(f"variable ${variable['name']}: no values")
        values["$" + variable["name"]] = "|".join(found) or "none"

    for title, expr in panel_targets(board):
        failures += await check(api, f"panel {title!r}", substitute(expr, values))
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        failures += await check(api, f"alert {name}", rule["expr"], need_series=False)
        failures += await check(api, f"alert {name} (as bool)", as_bool(rule["expr"]))

    rules = (await api.get("/api/v1/rules"))["data"]["groups"]
    for group in rules:
        for rule in group["rules"]:
            if rule["health"] != "ok":
                failures.append(f"rule {rule['name']}: {rule['health']} {rule.get('lastError')}")
    assert len([r for g in rules for r in g["rules"]]) == len(alert_rules())
    assert not failures, "\n".join(failures)

    hit_ratio = substitute(panel_expr(board, "Hit ratio"), values)
    value = float((await api.query(hit_ratio))["data"]["result"][0]["value"][1])
    assert 0 < value < 1


def panel_expr(board: dict[str, Any], title: str) -> str:
    return next(expr for panel_title, expr in panel_targets(board) if panel_title == title)


async def label_values(api: PrometheusAPI, query: str) -> list[str]:
    """Grafana's ``label_values(selector, label)`` through the series API."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, f"unsupported variable query {query!r}"
    selector, label = match.groups()
    answer = await api.get("/api/v1/series", **{"match[]": selector})
    assert answer["status"] == "success", answer
    return sorted({series[label] for series in answer["data"] if label in series})


async def check(api: PrometheusAPI, what: str, expr: str, *, need_series: bool = True) -> list[str]:
    if "$" in expr:
        return [f"{what}: unsubstituted variable in {expr!r}"]
    answer = await api.query(expr)
    if answer["status"] != "success":
        return [f"{what}: {answer.get('error')} in {expr!r}"]
    if need_series and not answer["data"]["result"]:
        return [f"{what}: no series for {expr!r}"]
    return []
