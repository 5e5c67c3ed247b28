"""Every ``cacheproxy_*`` metric moves as it should when real traffic goes through the proxy.

Each test drives requests through real sockets (an aiohttp origin, the proxy, an aiohttp client)
and reads the proxy's own ``/metrics`` page, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.core.models import Record
from proxy.ops.config import Settings
from proxy.ops.metrics import (
    CLIENT_PHASES,
    EVENT_KINDS,
    EVENT_STREAM_OUTCOMES,
    LONG_POLL_OUTCOMES,
    RESULTS,
    ROUTES,
    TABLES,
    UPSTREAM_ERROR_KINDS,
    UPSTREAM_STATUSES,
)
from proxy.stores.base import StoreError
from proxy.stores.memory import MemoryStore
from tests.conftest import FrontClient, ServeFront, ServeOrigin
from tests.support.waiting import eventually

ITEM = "/v1/audio/transcribe/trans_0123456789abcdef"
TOKEN = "Bearer sk-metrics-secret-token"


class FakeClock:
    """Starts at the real time, since the origin's ``Date`` is real, and moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Origin:
    """A scriptable origin: what the next answers to ``/v1/audio/transcribe/{id}`` look like."""

    cache_control: str = "public, max-age=60"
    answer: str = "200"
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    never: asyncio.Event = field(default_factory=asyncio.Event)
    hits: int = 0

    @staticmethod
    def body(name: str) -> bytes:
        return f'{{"id": "{name}", "text": "{"word " * 50}"}}'.encode()

    async def item(self, request: web.Request) -> web.Response:
        self.hits += 1
        name = request.match_info["name"]
        headers = {"Cache-Control": self.cache_control, "ETag": f'"{name}-v1"'}
        if self.answer == "500":
            return web.Response(status=500, text="broken")
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body(name), headers=headers)

    async def status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}", headers={"Retry-After": "0"})

    async def slow(self, request: web.Request) -> web.Response:
        self.hits += 1
        await self.gate.wait()
        return web.Response(body=self.body("slow"), headers={"Cache-Control": "max-age=60"})

    async def hang(self, request: web.Request) -> web.Response:
        await self.never.wait()
        return web.Response()

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"b" * 1500, headers={"Cache-Control": "max-age=60"})

    async def accept(self, request: web.Request) -> web.Response:
        return web.Response(status=201, text="created")


@pytest.fixture
async def origin(serve_origin: ServeOrigin) -> AsyncIterator[tuple[Origin, str]]:
    origin = Origin()
    app = web.Application()
    app.router.add_get("/v1/audio/transcribe/{name}", origin.item)
    app.router.add_get("/v1/audio/transcribe/{name}/paragraphs", origin.item)
    app.router.add_get("/status/{code}", origin.status)
    app.router.add_get("/slow", origin.slow)
    app.router.add_get("/hang", origin.hang)
    app.router.add_get("/big/{n}", origin.big)
    app.router.add_post("/v1/audio/transcribe", origin.accept)
    yield origin, await serve_origin(app)
    origin.gate.set()
    origin.never.set()


class Scrape:
    """One reading of ``/metrics``: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no series {name}{labels}"
        return self.samples[key]

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


@dataclass
class Proxy:
    client: FrontClient
    clock: FakeClock

    async def scrape(self) -> Scrape:
        response = await self.client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(await response.text())

    async def get(self, path: str, **headers: str) -> tuple[int, bytes, str]:
        response = await self.client.get(path, headers=headers)
        return response.status, await response.read(), response.headers.get("Cache-Status", "")


MakeProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def make_proxy(origin: tuple[Origin, str], serve_front: ServeFront) -> MakeProxy:
    async def make(*, store: Any = None, **overrides: Any) -> Proxy:
        clock = FakeClock()
        settings = Settings(**{"upstream": origin[1], "upstream_timeout": 0.2, **overrides})
        return Proxy(await serve_front(settings, store=store, clock=clock), clock)

    return make


async def test_every_bounded_series_exists_at_zero_before_any_traffic(
    make_proxy: MakeProxy,
) -> None:
    metrics = await (await make_proxy()).scrape()

    for route in ROUTES:
        for result in RESULTS:
            assert metrics("cacheproxy_requests_total", route=route, result=result) == 0
        for status in UPSTREAM_STATUSES:
            assert metrics("cacheproxy_upstream_requests_total", route=route, status=status) == 0
        for kind in UPSTREAM_ERROR_KINDS:
            assert metrics("cacheproxy_upstream_errors_total", route=route, kind=kind) == 0
        assert metrics("cacheproxy_upstream_request_duration_seconds_count", route=route) == 0
    for result in RESULTS:
        assert metrics("cacheproxy_request_duration_seconds_count", result=result) == 0
    for name in (
        "cacheproxy_not_modified_total",
        "cacheproxy_coalesced_requests_total",
        "cacheproxy_cache_evictions_total",
        "cacheproxy_response_bytes_total",
        "cacheproxy_upstream_bytes_total",
        "cacheproxy_bytes_saved_total",
        "cacheproxy_cache_entries",
        "cacheproxy_cache_bytes",
    ):
        assert metrics(name) == 0, name
    assert metrics("cacheproxy_store_errors_total", backend="memory") == 0
    assert metrics("cacheproxy_cache_max_bytes") == Settings().cache_max_bytes
    assert metrics("cacheproxy_build_info", version=__version__) == 1


async def test_miss_hit_and_local_304_count_requests_bytes_and_latency(
    origin: tuple[Origin, str], make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy()
    body = Origin.body("trans_0123456789abcdef")

    assert await proxy.get(ITEM) == (
        200,
        body,
        "aitronos-cache-proxy; fwd=uri-miss; fwd-status=200; stored",
    )
    assert (await proxy.get(ITEM))[:2] == (200, body)
    status, empty, _ = await proxy.get(ITEM, **{"If-None-Match": '"trans_0123456789abcdef-v1"'})
    assert (status, empty) == (304, b"")
    await proxy.get(f"{ITEM}/paragraphs")
    metrics = await proxy.scrape()

    assert metrics("cacheproxy_requests_total", route="transcription", result="miss") == 1
    assert metrics("cacheproxy_requests_total", route="transcription", result="hit") == 2
    assert metrics("cacheproxy_requests_total", route="transcription_resource", result="miss") == 1
    assert metrics("cacheproxy_not_modified_total") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="transcription", status="2xx") == 1
    assert metrics("cacheproxy_upstream_request_duration_seconds_count", route="transcription") == 1
    assert metrics("cacheproxy_request_duration_seconds_count", result="hit") == 2
    assert metrics("cacheproxy_request_duration_seconds_count", result="miss") == 2
    paragraphs = len(Origin.body("trans_0123456789abcdef"))
    assert metrics("cacheproxy_upstream_bytes_total") == len(body) + paragraphs
    assert metrics("cacheproxy_response_bytes_total") == 2 * len(body) + paragraphs
    assert metrics("cacheproxy_bytes_saved_total") == len(body)
    assert metrics("cacheproxy_cache_entries") == 2
    store = proxy.client.runtime.store
    assert metrics("cacheproxy_cache_bytes") == store.bytes > 2 * len(body)
    assert origin[0].hits == 2


async def test_revalidation_and_stale_if_error_are_counted_as_such(
    origin: tuple[Origin, str], make_proxy: MakeProxy
) -> None:
    upstream, _ = origin
    upstream.cache_control = "max-age=1, stale-if-error=60"
    proxy = await make_proxy()
    body = Origin.body("trans_0123456789abcdef")
    await proxy.get(ITEM)

    proxy.clock.now += 2
    assert (await proxy.get(ITEM))[:2] == (200, body)
    revalidated = await proxy.scrape()
    proxy.clock.now += 2
    upstream.answer = "500"
    assert (await proxy.get(ITEM))[:2] == (200, body)
    metrics = await proxy.scrape()

    assert (
        revalidated("cacheproxy_requests_total", route="transcription", result="revalidated") == 1
    )
    assert (
        revalidated("cacheproxy_upstream_requests_total", route="transcription", status="3xx") == 1
    )
    assert revalidated("cacheproxy_bytes_saved_total") == len(body)
    assert revalidated("cacheproxy_upstream_bytes_total") == len(body)
    assert metrics("cacheproxy_requests_total", route="transcription", result="stale") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="transcription", status="5xx") == 1
    assert metrics("cacheproxy_upstream_errors_total", route="transcription", kind="5xx") == 1
    assert metrics("cacheproxy_bytes_saved_total") == 2 * len(body)
    assert metrics("cacheproxy_request_duration_seconds_count", result="stale") == 1


async def test_upstream_errors_are_counted_by_kind(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()

    assert (await proxy.get("/status/503"))[0] == 503
    assert (await proxy.get("/status/429"))[0] == 429
    assert (await proxy.get("/hang"))[0] == 504
    metrics = await proxy.scrape()

    assert metrics("cacheproxy_requests_total", route="other", result="error") == 3
    assert metrics("cacheproxy_upstream_requests_total", route="other", status="5xx") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="other", status="4xx") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="other", status="error") == 1
    assert metrics("cacheproxy_upstream_errors_total", route="other", kind="5xx") == 1
    assert metrics("cacheproxy_upstream_errors_total", route="other", kind="429") == 1
    assert metrics("cacheproxy_upstream_errors_total", route="other", kind="timeout") == 1
    assert metrics("cacheproxy_upstream_errors_total", route="other", kind="refused") == 0
    assert metrics("cacheproxy_upstream_request_duration_seconds_count", route="other") == 2


async def test_refused_connections_are_counted_as_refused(serve_front: ServeFront) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    client = await serve_front(Settings(upstream=f"http://127.0.0.1:{port}"))

    response = await client.get(ITEM)
    metrics = Scrape(await (await client.get("/metrics")).text())

    assert response.status == 502
    assert metrics("cacheproxy_upstream_errors_total", route="transcription", kind="refused") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="transcription", status="error") == 1
    assert metrics("cacheproxy_requests_total", route="transcription", result="error") == 1


async def test_requests_sharing_one_fetch_are_counted_as_coalesced(
    origin: tuple[Origin, str], make_proxy: MakeProxy
) -> None:
    upstream, _ = origin
    callers = 5
    proxy = await make_proxy()
    flights = proxy.client.runtime.cache.flights
    requests = [asyncio.create_task(proxy.get("/slow")) for _ in range(callers)]
    await eventually(lambda: flights.waiting() == callers, what="every caller on the one fetch")
    upstream.gate.set()
    results = await asyncio.gather(*requests)
    metrics = await proxy.scrape()

    collapsed = sum("collapsed" in status for _, _, status in results)
    assert {code for code, _, _ in results} == {200}
    assert upstream.hits == 1
    assert collapsed == callers - 1
    assert metrics("cacheproxy_coalesced_requests_total") == callers - 1
    assert metrics("cacheproxy_upstream_requests_total", route="other", status="2xx") == 1


async def test_evictions_entries_and_bytes_follow_the_byte_budget(make_proxy: MakeProxy) -> None:
    # About two entries: each counts its 1.5 KB body, fields, key and Python's overhead.
    proxy = await make_proxy(cache_max_bytes=12288)

    for n in range(6):
        assert (await proxy.get(f"/big/{n}"))[0] == 200
    metrics = await proxy.scrape()

    store = proxy.client.runtime.store
    assert metrics("cacheproxy_cache_max_bytes") == 12288
    assert metrics("cacheproxy_cache_entries") == store.entries < 6
    assert store.entries > 0
    assert metrics("cacheproxy_cache_bytes") == store.bytes <= 12288
    assert metrics("cacheproxy_cache_evictions_total") == 6 - store.entries


async def test_unsafe_methods_are_counted_as_bypass(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()

    response = await proxy.client.post("/v1/audio/transcribe", json={"audio_url": "x"})
    metrics = await proxy.scrape()

    assert response.status == 201
    assert metrics("cacheproxy_requests_total", route="other", result="bypass") == 1
    assert metrics("cacheproxy_upstream_requests_total", route="other", status="2xx") == 1
    assert metrics("cacheproxy_response_bytes_total") == len(b"created")


class UnreachableStore(MemoryStore):
    """A store whose backend is down: every operation fails as a Redis outage would."""

    backend = "unreachable"

    async def get(self, key: str) -> Record | None:
        raise StoreError("down")

    async def set(self, key: str, record: Record, ttl: float) -> None:
        raise StoreError("down")

    async def ready(self) -> bool:
        raise StoreError("down")


async def test_store_errors_are_counted_by_backend_and_requests_still_answered(
    origin: tuple[Origin, str], make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(store=UnreachableStore(4096, clock=time.time))
    body = Origin.body("trans_0123456789abcdef")

    assert (await proxy.get(ITEM))[:2] == (200, body)
    assert (await proxy.get(ITEM))[:2] == (200, body)
    metrics = await proxy.scrape()

    assert metrics("cacheproxy_store_errors_total", backend="unreachable") >= 4
    assert metrics("cacheproxy_requests_total", route="transcription", result="miss") == 2
    assert origin[0].hits == 2


async def test_labels_never_carry_ids_paths_or_credentials(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()

    await proxy.get(ITEM, Authorization=TOKEN)
    await proxy.get(f"{ITEM}/paragraphs?q=secret-query", Authorization=TOKEN)
    await proxy.get("/status/500?api_key=sk-in-query")
    values = (await proxy.scrape()).label_values()

    allowed = {
        *ROUTES,
        *RESULTS,
        *UPSTREAM_STATUSES,
        *UPSTREAM_ERROR_KINDS,
        *TABLES,
        *LONG_POLL_OUTCOMES,
        *EVENT_STREAM_OUTCOMES,
        *EVENT_KINDS,
        *CLIENT_PHASES,
        "memory",
        __version__,
    }
    assert {value for value in values if not _is_bucket_bound(value)} <= allowed
    assert not [value for value in values if "trans_" in value or "sk-" in value]


def _is_bucket_bound(value: str) -> bool:
    """``le`` values of histogram buckets: numbers, including ``+Inf``."""
    try:
        float(value)
    except ValueError:
        return False
    return True
