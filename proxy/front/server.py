"""Our HTTP/1.1 front: the listener, the connection cap, TLS, draining and the dispatch of a
parsed request to the fast path, a local endpoint or the cache.

It serves every listener of a ``Runtime`` (``proxy.runtime``): the public port, and with
``--admin-port`` the admin one (``/metrics``, purging and the health checks only, no TLS, no
cache). The runtime owns the cache and its parts and is opened and closed by whoever made it;
a ``FrontServer`` only listens, drains and closes its connections.


A connection counts from accept, a TLS one during its handshake too: asyncio's ``ssl=``
listener would hand it over only once the handshake is done, invisible to the cap and the
timeouts, so each admitted connection starts TLS itself. Past ``--max-connections`` the
connection that has waited longest for a request head (an idle keep-alive connection, a slow
head or handshake) is closed to make room; when none is waiting the new connection is refused
with a canned 503. The cap keeps descriptors for the upstream pool, Redis, the admin port and
logs, so ``accept`` never fails for want of one; if it does all the same, asyncio's report of it
is logged once a minute, not once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from multidict import CIMultiDict

from proxy.cache.exchange import ProxyRequest, envelope, send_rejected
from proxy.front.access import AccessLog
from proxy.front.connection import HttpConnection, Parsed
from proxy.front.endpoints import ADMIN, PUBLIC, Endpoints
from proxy.front.h2 import Http2Connection
from proxy.front.prepared import FastPath
from proxy.front.responder import ConnectionResponder
from proxy.front.seams import Client, HttpClient, Reply, Requester
from proxy.ops.config import Settings
from proxy.ops.limits import max_connections
from proxy.ops.timers import DeadlineWheel
from proxy.runtime import Runtime

log = logging.getLogger("proxy.server")

_REFUSED_BODY = envelope("OVERLOADED", "Too many connections; retry.")
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s"
    % (len(_REFUSED_BODY), _REFUSED_BODY)
)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    context.set_alpn_protocols(["h2", "http/1.1"] if settings.http2 else ["http/1.1"])
    return context


class Front:
    """What every connection of the listener shares."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        access: logging.Logger | None,
        scheme: str,
        loop: asyncio.AbstractEventLoop,
        fast: bool = True,
        tls: ssl.SSLContext | None = None,
        role: str = PUBLIC,
    ) -> None:
        proxy = runtime.cache
        self.proxy = proxy
        #: TLS is started by each connection after it is admitted (``HttpConnection``), so a
        #: handshake counts against the cap and is bounded by the header timeout.
        self.tls = tls
        self.metrics = runtime.metrics
        self.settings = settings = runtime.settings
        self.loop = loop
        self.scheme = scheme
        self.credential_names = frozenset(n.lower().encode() for n in settings.credential_headers)
        self.access = AccessLog(access, loop) if access is not None else None
        self.endpoints = Endpoints(runtime, role)
        store_get = getattr(proxy.store, "get_nowait", None)
        self.fast = (
            FastPath(proxy, proxy.store, self.access, proxy.clock, scheme)  # type: ignore[arg-type]
            if fast and role == PUBLIC and store_get is not None
            else None
        )
        self.max_connections = max_connections(settings)
        self.connections: set[Client] = set()
        self.heads = DeadlineWheel(loop)
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        if role == PUBLIC:
            self.metrics.client_connections.set_function(lambda: len(self.connections))

    # -- connections ------------------------------------------------------------------------

    def admit(self, conn: Client) -> bool:
        if self.draining:
            conn.transport.close()
            return False
        if len(self.connections) >= self.max_connections:
            self.metrics.connections_refused.inc()
            waiting = [c for c in self.connections if c.waiting and not c.lost]
            if waiting:
                # A scan only at the cap: on the hit path a connection just flips a flag.
                min(waiting, key=lambda c: c.head_deadline).evict()
            else:
                if self.tls is None:  # before its handshake a TLS client can read no answer
                    conn.transport.write(REFUSED)
                conn.transport.close()
                return False
        self.connections.add(conn)
        return True

    def forget(self, conn: Client) -> None:
        self.connections.discard(conn)

    def track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def busy(self) -> bool:
        """Whether a request is being answered or an answer is still being written."""
        return bool(self.tasks) or any(not conn.idle for conn in self.connections)

    def timed_out(self, phase: str) -> None:
        self.metrics.client_timeouts.labels(phase).inc()

    # -- requests ---------------------------------------------------------------------------

    def http2(self, conn: Client, data: bytes) -> None:
        """``conn`` speaks HTTP/2 from now on: the same transport and place under the cap."""
        transport = conn.transport
        h2 = Http2Connection(self, transport, conn.peer, getattr(conn, "local", ""))
        self.connections.discard(conn)
        self.connections.add(h2)
        transport.set_protocol(h2)
        h2.start(data)

    def http2_error(self, reason: str) -> None:
        self.metrics.http2_errors.labels(reason).inc()

    async def answer(self, conn: HttpClient, parsed: Parsed) -> bool:
        """A request the fast path did not take, on HTTP/1.1. True when its answer is deferred
        (a parked long poll): ``finish`` ends it."""
        return await self.respond(conn, parsed, ConnectionResponder(conn, parsed, self.finish))

    async def respond(self, conn: Requester, parsed: Parsed, responder: Reply) -> bool:
        """Refused, a local endpoint, or the cache: the same for HTTP/1.1 and each HTTP/2
        stream (``conn`` is the stream there, whose responder cannot defer: it is awaited)."""
        path = parsed.target.split("?", 1)[0]
        result = "-"
        if parsed.rejected is not None:
            send_rejected(responder, parsed.rejected)
            result = "error"
        else:
            endpoint = self.endpoints.route(parsed.method, path)
            if endpoint is not None:
                authorization = next(
                    (v for k, v in parsed.headers if k.lower() == "authorization"), ""
                )
                await endpoint(parsed.method, parsed.target, authorization, responder)
            else:
                headers = CIMultiDict(parsed.headers)
                parsed.headers = []  # the request's fields live on in ``headers`` alone
                request = ProxyRequest(
                    parsed.method,
                    parsed.target,
                    headers,
                    parsed.body,
                    conn.peer,
                    self.scheme,
                    parsed.version,
                    parsed.host,
                    conn,
                )
                result = await self.proxy.handle(request, responder)
                if getattr(responder, "deferred", False) and result == "held":
                    return True
                body = parsed.body
                if body is not None and body.rejected is not None:
                    parsed.keep_alive = False
                    if body.rejected.status == 408:
                        self.timed_out("body")
        if self.access is not None and parsed.rejected is None:
            elapsed = time.perf_counter() - parsed.started
            self.access.record(
                parsed.method, path, responder.status, result, elapsed, responder.sent
            )
        return False

    def finish(self, responder: ConnectionResponder, result: str) -> None:
        """A deferred answer was written: log it, and let its connection go on."""
        parsed = responder.request
        if self.access is not None:
            elapsed = time.perf_counter() - parsed.started
            path = parsed.target.split("?", 1)[0]
            self.access.record(
                parsed.method, path, responder.status, result, elapsed, responder.sent
            )
        conn = responder.conn
        assert isinstance(conn, HttpConnection)
        conn.finished(parsed)


class FrontServer:
    """One listener of the ``runtime``: the public port (``role="public"``) or the admin one."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        access: logging.Logger | None,
        fast: bool = True,
        role: str = PUBLIC,
    ) -> None:
        if role not in (PUBLIC, ADMIN):
            raise ValueError(f"a listener is {PUBLIC!r} or {ADMIN!r}, not {role!r}")
        self.runtime = runtime
        self.settings = runtime.settings
        self.role = role
        self._access = access
        self._fast = fast
        self.front: Front | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        context = tls_context(self.settings) if self.role == PUBLIC else None
        self.front = front = Front(
            self.runtime,
            access=self._access,
            scheme="https" if context is not None else "http",
            loop=loop,
            fast=self._fast,
            tls=context,
            role=self.role,
        )
        _quiet_accept_errors(loop)
        self.server = await loop.create_server(
            lambda: HttpConnection(front),
            host,
            port,
            backlog=1024,
            reuse_port=reuse_port or None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self, drain_seconds: float | None = None) -> None:
        """Stop listening, let requests in flight finish (up to the drain time), then close.

        The listener closes, the public one marks the runtime draining (``/readyz`` answers
        503, held long polls are answered), answers in flight are finished and written out,
        then the rest is cut. The runtime stays open: its owner closes it after every listener.
        """
        front, self.front = self.front, None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.role == PUBLIC:
            self.runtime.drain()
        if front is not None:
            front.draining = True
            for conn in list(front.connections):
                conn.drain()
            seconds = self.settings.drain_seconds if drain_seconds is None else drain_seconds
            deadline = front.loop.time() + seconds
            while front.busy() and front.loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(front.connections):
                conn.abort()
            front.heads.close()
            if front.access is not None:
                front.access.flush()


_last_accept_report = 0.0


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Report asyncio's ``accept`` failures (EMFILE and the like) at most once a minute."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        global _last_accept_report
        if "accept" in str(context.get("message", "")):
            now = time.monotonic()
            if now - _last_accept_report < 60:
                return
            _last_accept_report = now
            log.error("accepting a connection failed: %s", context.get("exception"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
