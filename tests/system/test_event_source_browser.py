"""A real browser's ``EventSource`` through the proxy: headless Chromium, same-origin (the page
served through the proxy from the tests' origin) and cross-origin (through the simulator's CORS
mode). The page posts what it received to a collector on the test's own server; the test waits
on that post, then stops the browser. A machine without Chromium fails with one line: a browser
test that skips would hide that browsers were never tried.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from proxy.ops.config import Settings
from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.conftest import MakeHarness, ServeFront

PATH = "/v1/audio/transcribe/trans_page"
#: Listens for every status, reports on ``completed`` (or a connection given up), and closes.
SCRIPT = """
const received = [];
const report = (outcome) => fetch(COLLECT, {method: 'POST', mode: 'no-cors',
  body: JSON.stringify({outcome, received, origin: location.origin})});
const es = new EventSource(URL);
for (const name of ['queued', 'processing', 'completed', 'failed']) {
  es.addEventListener(name, e => {
    received.push({event: e.type, id: e.lastEventId, status: JSON.parse(e.data).data.status});
    if (name === 'completed' || name === 'failed') { es.close(); report('done'); }
  });
}
es.onerror = () => { if (es.readyState === EventSource.CLOSED) report('closed'); };
"""


def page(stream_url: str, collect_url: str) -> bytes:
    script = SCRIPT.replace("COLLECT", json.dumps(collect_url)).replace(
        "URL", json.dumps(stream_url)
    )
    return f"<!doctype html><title>events</title><script>{script}</script>".encode()


class Collector:
    """The test's own server: it serves a page (cross-origin case) and takes the report."""

    def __init__(self) -> None:
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.page = b""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/collect", self.collect)
        app.router.add_get("/page.html", self.serve_page)
        return app

    async def collect(self, request: web.Request) -> web.Response:
        await self.reports.put(json.loads(await request.text()))
        return web.Response(status=204)

    async def serve_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    collector = Collector()
    server = TestServer(collector.app(), host="127.0.0.1")
    await server.start_server()
    yield collector, str(server.make_url("")).rstrip("/")
    await server.close()


async def browse(url: str, reports: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    """Open ``url`` in headless Chromium and return the page's first report."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; scripts/test does)")
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            binary, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}", url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        report = asyncio.ensure_future(reports.get())
        exited = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait((report, exited), timeout=60, return_when="FIRST_COMPLETED")
            if report.done():
                return report.result()
            if exited.done():
                assert process.stderr is not None
                tail = (await process.stderr.read()).decode(errors="replace").strip()
                last = tail.splitlines()[-1] if tail else ""
                pytest.fail(f"chromium could not run (exit {process.returncode}): {last}")
            pytest.fail("chromium ran but the page reported nothing within 60 s")
        finally:
            report.cancel()
            if process.returncode is None:
                process.kill()
            await exited


async def test_an_event_source_on_a_page_served_through_the_proxy(
    make_harness: MakeHarness, collector: tuple[Collector, str]
) -> None:
    inbox, base = collector
    h = await make_harness(sse_heartbeat=1)
    body = json.dumps({"data": {"status": "processing"}})
    first = h.origin.put(PATH, body, cache_control="public, max-age=1")
    h.origin.put("/page.html", page(PATH, base + "/collect"), extra={"Content-Type": "text/html"})
    url = str(h.client.make_url("/page.html"))
    browsing = asyncio.create_task(browse(url, inbox.reports))
    await h.wait_for(lambda: h.metric("cacheproxy_events_sent_total", kind="event") >= 1, 60)
    final = h.origin.put(PATH, json.dumps({"data": {"status": "completed"}}))
    posted = await h.client.post(PATH)  # invalidates: the change is pushed at once
    assert posted.status == 200
    report = await browsing
    assert report["outcome"] == "done", report
    assert report["received"] == [
        {"event": "processing", "id": first.tag, "status": "processing"},
        {"event": "completed", "id": final.tag, "status": "completed"},
    ]


async def test_an_event_source_on_another_origin_through_the_simulators_cors_mode(
    serve_front: ServeFront,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    collector: tuple[Collector, str],
) -> None:
    inbox, base = collector
    config = SimulatorConfig(
        queued_seconds=1.0, processing_seconds=2.0, pending_max_age=1, front=OriginFront(cors=True)
    )
    simulator = Simulator(config)
    transcription = simulator.create("tok-page", "https://example.com/a.mp3")
    origin = await aiohttp_server(create_simulator_app(simulator=simulator))
    upstream = str(origin.make_url("")).rstrip("/")
    proxy = await serve_front(
        Settings(upstream=upstream, sse_heartbeat=1), registry=CollectorRegistry()
    )
    target = f"/v1/audio/transcribe/{transcription.transcription_id}?access_token=tok-page"
    inbox.page = page(str(proxy.make_url(target)), base + "/collect")
    report = await browse(base + "/page.html", inbox.reports)
    assert report["outcome"] == "done", report
    statuses = [item["status"] for item in report["received"]]
    assert statuses[-1] == "completed" and statuses == sorted(set(statuses), key=statuses.index)
    assert set(statuses) <= {"queued", "processing", "completed"}
    assert all(item["event"] == item["status"] for item in report["received"])
    assert report["origin"] == base  # the page was on the collector's origin, not the proxy's
