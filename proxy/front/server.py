"""Our HTTP/1.1 front: the listener, the connection cap, TLS, draining and the dispatch of a
parsed request to the fast path, a local endpoint or the cache.

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
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.exchange import ProxyRequest, envelope, send_rejected
from proxy.cache.proxy import CachingProxy
from proxy.front.access import AccessLog
from proxy.front.connection import HttpConnection, Parsed
from proxy.front.endpoints import Endpoints
from proxy.front.prepared import FastPath
from proxy.front.responder import ConnectionResponder
from proxy.ops.admin import Purger
from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics

log = logging.getLogger("proxy.server")

#: Descriptors kept besides client connections: listeners, admin connections, logs, Redis.
RESERVE = 64
_REFUSED_BODY = envelope("OVERLOADED", "Too many connections; retry.")
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s"
    % (len(_REFUSED_BODY), _REFUSED_BODY)
)


def default_max_connections(settings: Settings) -> int:
    """RLIMIT_NOFILE less the upstream pool, Redis's pool and a fixed reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    reserve = RESERVE + settings.upstream_max_connections
    if settings.redis_url:
        reserve += settings.redis_max_connections + 2
    return max(16, soft - reserve)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Front:
    """What every connection of the listener shares."""

    def __init__(
        self,
        proxy: CachingProxy,
        metrics: Metrics,
        settings: Settings,
        purger: Purger | None,
        *,
        access: logging.Logger | None,
        scheme: str,
        loop: asyncio.AbstractEventLoop,
        fast: bool = True,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.proxy = proxy
        #: TLS is started by each connection after it is admitted (``HttpConnection``), so a
        #: handshake counts against the cap and is bounded by the header timeout.
        self.tls = tls
        self.metrics = metrics
        self.settings = settings
        self.loop = loop
        self.scheme = scheme
        self.credential_names = frozenset(n.lower().encode() for n in settings.credential_headers)
        self.access = AccessLog(access, loop) if access is not None else None
        self.endpoints = Endpoints(
            proxy,
            metrics,
            purger,
            admin_elsewhere=settings.admin_port is not None,
            exposition=exposition,
        )
        store_get = getattr(proxy.store, "get_nowait", None)
        self.fast = (
            FastPath(proxy, proxy.store, self.access, proxy.clock, scheme)  # type: ignore[arg-type]
            if fast and store_get is not None
            else None
        )
        self.max_connections = settings.max_connections or default_max_connections(settings)
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        metrics.client_connections.set_function(lambda: len(self.connections))

    # -- connections ------------------------------------------------------------------------

    def admit(self, conn: HttpConnection) -> bool:
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

    def forget(self, conn: HttpConnection) -> None:
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

    async def answer(self, conn: HttpConnection, parsed: Parsed) -> None:
        """A request the fast path did not take: refused, a local endpoint, or the cache."""
        responder = ConnectionResponder(conn, parsed)
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
                request = ProxyRequest(
                    parsed.method,
                    parsed.target,
                    CIMultiDict(parsed.headers),
                    parsed.body,
                    conn.peer,
                    self.scheme,
                    parsed.version,
                    parsed.host,
                    conn,
                )
                result = await self.proxy.handle(request, responder)
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


class FrontServer:
    """Runs the proxy ``app``'s objects behind our front: lifecycle, listener, drain."""

    def __init__(
        self,
        app: web.Application,
        *,
        access: logging.Logger | None,
        fast: bool = True,
    ) -> None:
        from proxy.app import EXPOSITION_KEY, METRICS_KEY, PROXY_KEY, PURGER_KEY, SETTINGS_KEY

        self.app = app
        self.proxy = app[PROXY_KEY]
        self.metrics = app[METRICS_KEY]
        self.settings = app[SETTINGS_KEY]
        self.purger = app.get(PURGER_KEY)
        self._exposition_key = EXPOSITION_KEY
        self._access = access
        self._fast = fast
        self.front: Front | None = None
        self.server: asyncio.Server | None = None
        self.port = 0
        self._started = False

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.app.freeze()
        await self.app.startup()
        self._started = True
        context = tls_context(self.settings)
        self.front = front = Front(
            self.proxy,
            self.metrics,
            self.settings,
            self.purger,
            access=self._access,
            scheme="https" if context is not None else "http",
            loop=loop,
            fast=self._fast,
            exposition=self.app.get(self._exposition_key),
            tls=context,
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

        The order of aiohttp's runner: the listener closes, the application's shutdown hooks
        mark the proxy draining (``/readyz`` answers 503), answers in flight are finished and
        written out, then the rest is cut and the application cleaned up.
        """
        front = self.front
        if self.server is not None:
            self.server.close()
        if self._started:
            await self.app.shutdown()
        if front is not None:
            front.draining = True
            for conn in list(front.connections):
                if conn.idle:
                    conn.transport.close()
            seconds = self.settings.drain_seconds if drain_seconds is None else drain_seconds
            deadline = front.loop.time() + seconds
            while front.busy() and front.loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(front.connections):
                conn.abort()
            if front.access is not None:
                front.access.flush()
        if self._started:
            await self.app.cleanup()
            self._started = False


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
