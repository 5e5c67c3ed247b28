"""Real sockets for hostile tests: the proxy on its production runner, raw clients, raw upstreams.

aiohttp's client refuses to send malformed requests and aiohttp's server refuses to send
malformed responses, so both ends here write bytes on asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from proxy.front.server import FrontServer
from proxy.ops.config import Settings
from proxy.runtime import Runtime
from tests.support.origin import HOST as HOST
from tests.support.origin import serve_app as serve_app


@dataclass
class RunningProxy:
    runtime: Runtime
    port: int
    registry: CollectorRegistry
    admin_port: int | None = None
    server: FrontServer | None = None

    @property
    def connections(self) -> int:
        """Client connections the public listener holds open."""
        assert self.server is not None and self.server.front is not None
        return len(self.server.front.connections)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None
        return f"http://{HOST}:{self.admin_port}"


@contextlib.asynccontextmanager
async def serve_proxy(settings: Settings, **create: Any) -> AsyncIterator[RunningProxy]:
    """The proxy on our front and free ports, as ``python -m proxy`` runs it.

    With ``admin_port`` set (to anything, 0 included) the admin listener runs on a free port.
    """
    registry = create.pop("registry", None) or CollectorRegistry()
    access = create.pop("access", None)
    runtime = Runtime(replace(settings, host=HOST, port=0), registry=registry, **create)
    front = FrontServer(runtime, access=access)
    admin = None
    async with runtime:
        try:
            await front.start(HOST, 0)
            admin_port = None
            if settings.admin_port is not None:
                admin = FrontServer(runtime, access=access, role="admin")
                await admin.start(HOST, 0)
                admin_port = admin.port
            yield RunningProxy(runtime, front.port, registry, admin_port, front)
        finally:
            await front.close(drain_seconds=1.0)
            if admin is not None:
                await admin.close(drain_seconds=1.0)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """One HTTP/1.1 response from a stream: framed by Content-Length, chunked, or close."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    closed = headers.get("connection", "").lower() == "close"
    return RawResponse(status, headers, body, closed)


async def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send raw bytes on a fresh connection and read one response."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Read until the peer closes the connection; returns what it sent meanwhile."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def get_ok(url: str, path: str = "/healthz", **kwargs: Any) -> int:
    """A well-behaved request, to show the proxy still serves others."""
    async with aiohttp.ClientSession() as session, session.get(url + path, **kwargs) as response:
        await response.read()
        return response.status


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


Behaviour = Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """An origin speaking bytes: records every request, answers through ``behaviour``.

    The behaviour may be swapped between requests; ``arrived`` is set on each request so tests
    wait on events, not on time.
    """

    behaviour: Behaviour
    requests: list[RawRequest] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._connection, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = RawRequest(head, b"")
                length = request.header("content-length")
                if length:
                    request.body = await reader.readexactly(int(length))
                self.requests.append(request)
                self.arrived.set()
                await self.behaviour(request, reader, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()


def answer(
    raw: bytes, *, close: bool = False
) -> Callable[[RawRequest, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A behaviour writing fixed bytes (optionally closing the connection after them)."""

    async def behave(
        request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return behave


def response_bytes(
    status: int = 200,
    body: bytes = b"ok",
    headers: dict[str, str] | None = None,
    *,
    length: int | None = None,
) -> bytes:
    """A response with ``Content-Length: length`` (default: the body's real length)."""
    fields = {"Content-Type": "text/plain", **(headers or {})}
    fields["Content-Length"] = str(len(body) if length is None else length)
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body
