"""Shared fixtures: a controllable origin on a real socket and a proxy in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.cache.proxy import CachingProxy
from proxy.core.headers import format_http_date, parse_entity_tag_list, weak_match
from proxy.front.server import FrontServer
from proxy.ops.config import Settings
from proxy.runtime import Runtime
from tests.support import podman_storage
from tests.support.access import AccessLog
from tests.support.origin import Handler, catch_all, serving
from tests.support.waiting import eventually

START = 1_800_000_000.0


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the podman storage the image and compose tests ran with
    (tests/support/podman_storage.py): the machine's default, or inside a container a tests-owned
    fuse-overlayfs or vfs one."""
    if podman_storage.CHOSEN:
        terminalreporter.write_line(f"podman storage: {', '.join(podman_storage.CHOSEN)}")


class FakeClock:
    """A clock the test moves by hand; shared by the origin and the proxy."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Resource:
    body: bytes
    cache_control: str | None = "public, max-age=5"
    status: int = 200
    extra: dict[str, str] = field(default_factory=dict)
    etag: bool = True
    last_modified: float | None = None
    #: Fields a 304 carries instead of the 200's (a 304 contradicting the stored validators).
    not_modified_extra: dict[str, str] = field(default_factory=dict)
    #: The origin answers a single ``Range`` itself with a 206 (as a file server does).
    ranges: bool = False
    #: The body is sent chunked, without ``Content-Length``.
    chunked: bool = False

    @property
    def tag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


class Origin:
    """An aiohttp origin whose resources, failures and pacing a test controls.

    It records every request it receives, so tests can assert what reached the upstream.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.resources: dict[str, Resource] = {}
        #: What one ``Authorization`` value sees instead of ``resources`` (``put(..., token=)``).
        self.scoped: dict[tuple[str, str], Resource] = {}
        self.requests: list[web.Request] = []
        self.received = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.gated_method: str | None = None
        self.fail_status: int | None = None
        self.hang = False
        #: nginx's ``gzip on`` in front: a 200 to a gzip-accepting request is gzipped under a
        #: weakened ``W/"x"``, but the 304 keeps the strong ``"x"`` (304s have no body to gzip).
        self.nginx_gzip = False
        #: The status of every answer sent, in order (200s are full downloads).
        self.sent: list[int] = []

    def put(
        self, path: str, body: bytes | str, *, token: str | None = None, **kwargs: Any
    ) -> Resource:
        """Serve ``body`` at ``path``; with ``token``, only to ``Authorization: Bearer token``."""
        resource = Resource(body.encode() if isinstance(body, str) else body, **kwargs)
        if token is None:
            self.resources[path] = resource
        else:
            self.scoped[f"Bearer {token}", path] = resource
        return resource

    def put_audio(self, path: str, size: int, **kwargs: Any) -> Resource:
        """An audio-like binary resource (not compressible) served with byte ranges, as the
        redacted audio a completed transcription links to."""
        body = bytes((i * 7 + i // 251) % 256 for i in range(size))
        kwargs.setdefault("extra", {"Content-Type": "audio/mpeg"})
        kwargs.setdefault("ranges", True)
        return self.put(path, body, **kwargs)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for request in self.requests
            if (path is None or request.raw_path == path)
            and (method is None or request.method == method)
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.received.set()
        resource = self.scoped.get(
            (request.headers.get("Authorization", ""), request.raw_path)
        ) or self.resources.get(request.raw_path)
        if self.hang:
            await asyncio.Event().wait()
        if self.gate is not None and self.gated_method in (None, request.method):
            await self.gate.wait()
        if self.fail_status is not None:
            return web.json_response(
                {"success": False, "error": {"code": "DOWN", "message": "down"}},
                status=self.fail_status,
            )
        if request.method in ("POST", "PUT", "DELETE", "PATCH"):
            await request.read()
            if request.method == "DELETE":
                self.resources.pop(request.raw_path, None)
            headers = {}
            if "X-Location" in request.headers:
                headers["Location"] = request.headers["X-Location"]
            return web.json_response({"ok": True, "method": request.method}, headers=headers)
        if resource is None:
            return web.json_response({"success": False}, status=404)
        headers = {"Date": format_http_date(self.clock()), **resource.extra}
        if resource.cache_control is not None:
            headers["Cache-Control"] = resource.cache_control
        if resource.etag:
            headers["ETag"] = resource.tag
        if resource.last_modified is not None:
            headers["Last-Modified"] = format_http_date(resource.last_modified)
        if resource.etag and resource.status == 200:
            tags = parse_entity_tag_list(request.headers.get("If-None-Match"))
            if tags and any(weak_match(tag, resource.tag) for tag in tags):
                self.sent.append(304)
                return web.Response(status=304, headers=headers | resource.not_modified_extra)
        body, status = resource.body, resource.status
        if self.nginx_gzip and status == 200 and accepts_gzip(request):
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            if "ETag" in headers:
                headers["ETag"] = "W/" + headers["ETag"]
        if resource.ranges and status == 200:
            headers["Accept-Ranges"] = "bytes"
            part = _origin_range(request.headers.get("Range"), len(body))
            if part is not None:
                first, last = part
                headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
                body, status = body[first : last + 1], 206
        self.sent.append(status)
        if resource.chunked:
            response = web.StreamResponse(status=status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(body), 65536):
                await response.write(body[start : start + 65536])
            await response.write_eof()
            return response
        return web.Response(status=status, body=body, headers=headers)


def accepts_gzip(request: web.Request) -> bool:
    codings = request.headers.get("Accept-Encoding", "").lower()
    return any(item.split(";")[0].strip() == "gzip" for item in codings.split(","))


def _origin_range(value: str | None, length: int) -> tuple[int, int] | None:
    """The one range a simple file server honours (``a-b``, ``a-``, ``-n``); else the 200."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    if not first:
        return (max(0, length - int(last)), length - 1) if last.isdigit() else None
    if not first.isdigit() or (last and not last.isdigit()) or int(first) >= length:
        return None
    return int(first), min(int(last), length - 1) if last else length - 1


class FrontClient:
    """A client of the proxy on our own front, with the request methods tests use."""

    def __init__(self, server: FrontServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.runtime = server.runtime
        self.session = session

    @property
    def port(self) -> int:
        return self.server.port

    def make_url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.server.port}{path}", encoded=True)

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.session.request(method, self.make_url(path), **kwargs)

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("DELETE", path, **kwargs)


@dataclass
class Harness:
    origin: Origin
    origin_server: TestServer
    client: FrontClient
    clock: FakeClock
    registry: CollectorRegistry

    @property
    def proxy(self) -> CachingProxy:
        return self.client.runtime.cache

    @property
    def runtime(self) -> Runtime:
        return self.client.runtime

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def get(self, path: str, token: str | None = "tok-a", **headers: str) -> Any:
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        return await self.client.get(path, headers=headers)

    async def fill(self, path: str, body: bytes | str, **kwargs: Any) -> Any:
        """The origin serves ``body`` at ``path`` (``Origin.put`` options) and the proxy has
        fetched it once: returns that first response."""
        self.origin.put(path, body, **kwargs)
        return await self.get(path)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until a condition on the proxy's state holds (a bounded wait on state, not time)."""
        await eventually(condition, within=timeout)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


ServeFront = Callable[..., Awaitable[FrontClient]]


@pytest.fixture
async def serve_front() -> AsyncIterator[ServeFront]:
    """``await serve_front(settings, **inject)``: a ``Runtime`` (store, registry, clock,
    coordinator injected as given) on our front on a free port, as ``python -m proxy`` serves
    it, and a client of it; everything is closed (listener, then runtime) at the test's end."""
    running: list[tuple[FrontServer, aiohttp.ClientSession | None]] = []

    async def serve(settings: Settings, **inject: Any) -> FrontClient:
        runtime = Runtime(settings, **inject)
        server = FrontServer(runtime, access=None)
        running.append((server, None))
        await runtime.start()
        await server.start("127.0.0.1", 0)
        session = aiohttp.ClientSession()
        running[-1] = (server, session)
        return FrontClient(server, session)

    yield serve
    for server, session in reversed(running):
        if session is not None:
            await session.close()
        await server.close(drain_seconds=1.0)
        await server.runtime.close()


ServeOrigin = Callable[[Handler | web.Application], Awaitable[str]]


class HandlesRequests(Protocol):
    """A test's origin object: it answers every request with ``handle``."""

    async def handle(self, request: web.Request, /) -> web.StreamResponse: ...


OriginT = TypeVar("OriginT", bound=HandlesRequests)


def origin_fixture(make: Callable[[], OriginT], *, name: str = "origin") -> Any:
    """A fixture ``name`` giving ``(made, url)``: a fresh ``make()`` served by ``serve_origin``
    (``origin = origin_fixture(MyOrigin)`` at a test module's top level)."""

    @pytest.fixture(name=name)
    async def served(serve_origin: ServeOrigin) -> tuple[OriginT, str]:
        made = make()
        return made, await serve_origin(made.handle)

    return served


@pytest.fixture
async def serve_origin() -> AsyncIterator[ServeOrigin]:
    """``url = await serve_origin(handler_or_app)``: a test's own origin on a free port, one
    handler for every method and path (or an application with routes of its own); closed at
    the test's end, after the proxies in front of it."""
    async with contextlib.AsyncExitStack() as running:

        async def serve(origin: Handler | web.Application) -> str:
            return await running.enter_async_context(serving(origin))

        yield serve


@pytest.fixture
async def make_harness(
    aiohttp_server: Any, clock: FakeClock, serve_front: ServeFront
) -> MakeHarness:
    """Proxies on our own front (as ``python -m proxy`` serves) before controllable origins:
    the recording ``Origin``, or ``handler=`` (then ``Harness.origin`` records nothing)."""

    async def make(handler: Handler | None = None, **settings: Any) -> Harness:
        origin = Origin(clock)
        origin_server = await aiohttp_server(catch_all(handler or origin.handle))
        registry = CollectorRegistry()
        upstream = settings.pop("upstream", str(origin_server.make_url("")))
        client = await serve_front(
            Settings(upstream=upstream, **settings), registry=registry, clock=clock
        )
        return Harness(origin, origin_server, client, clock, registry)

    return make


@pytest.fixture
async def harness(make_harness: MakeHarness, request: pytest.FixtureRequest) -> Harness:
    """A proxy before the recording origin, with the settings of the test's
    ``@pytest.mark.settings(**settings)`` marker if it has one."""
    marker = request.node.get_closest_marker("settings")
    return await make_harness(**(marker.kwargs if marker else {}))


@pytest.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends only the Accept-Encoding a test gives and never decodes."""
    async with aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
    ) as session:
        yield session


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> AccessLog:
    """The access log's logger (INFO captured) and the lines it writes."""
    return AccessLog(caplog)
