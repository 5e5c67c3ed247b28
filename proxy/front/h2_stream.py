"""One HTTP/2 stream (RFC 9113 §5): its request as the HTTP/1.1 front would have parsed it, and
the ``Responder`` the cache writes its answer to.

A stream's request becomes the same ``Parsed`` an HTTP/1.1 head does (``:authority`` as ``Host``,
``:path`` as the target, split ``Cookie`` fields joined, §8.2.3), passes the same ``refusal``
rules and goes to the same ``Front.respond``: the cache, the credential scope, ``Vary``, content
coding, ``Prefer: wait``, the metrics and the access log cannot tell the two apart. What differs
is the framing: the answer becomes a HEADERS frame and DATA frames sent as the peer's flow-control
windows allow (§5.2, ``Http2Connection.pump``), and cutting an answer resets the stream only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from proxy.cache.exchange import Fields, RequestRejected
from proxy.front.body import BodyStream
from proxy.front.head import (
    MAX_HEADER_FIELDS,
    HeadFacts,
    Parsed,
    expectations,
    headers_too_large,
    refusal,
)
from proxy.front.waiters import settle, watch
from proxy.front.wire import BODYLESS, date_field, has_field

if TYPE_CHECKING:
    from proxy.ops.config import Settings

#: Fields that only mean something to one HTTP/1.1 connection: never sent on a stream (§8.2.2).
CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: Dropped too when the front sets ``content-length`` itself (a whole body).
_FRAMED = CONNECTION_SPECIFIC | {"content-length"}
_DATE = date_field


class Owner(Protocol):
    """What a stream needs of its connection (``proxy.front.h2.Http2Connection``)."""

    @property
    def lost(self) -> bool: ...

    def send_head(
        self, stream: Http2Stream, headers: list[tuple[bytes, bytes]], end: bool
    ) -> None: ...

    def queue(self, stream: Http2Stream) -> None: ...

    def reset(self, stream: Http2Stream, code: int) -> None: ...

    def window_opened(self, stream: Http2Stream, size: int) -> None: ...


def request_of(
    headers: list[tuple[bytes, bytes]], settings: Settings, local: str
) -> tuple[Parsed, HeadFacts]:
    """The ``Parsed`` of a stream's header list (names lower case and pseudo-fields checked by
    h2, §8.3), refused as the HTTP/1.1 front refuses a head; the caller opens its body."""
    method = path = authority = ""
    fields: list[tuple[str, str]] = []
    cookies: list[str] = []
    hosts: list[str] = []
    size = 0
    facts = HeadFacts(hosts)
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("utf-8", "surrogateescape")
        size += len(raw_name) + len(raw_value) + 4
        if name[:1] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
            continue
        if name == "cookie":
            cookies.append(value)
            continue
        if name == "host":
            hosts.append(value)
        elif name == "content-length":
            facts.length = value
        elif name == "expect":
            facts.expects = True
            facts.expectations += expectations(value)
        fields.append((name, value))
    if cookies:
        fields.append(("cookie", "; ".join(cookies)))
    rejected: RequestRejected | None = None
    if authority:
        if any(host != authority for host in hosts):
            rejected = RequestRejected(400, "BAD_REQUEST", ":authority and Host differ.")
        elif not hosts:
            fields.insert(0, ("host", authority))
            hosts.append(authority)
    if rejected is None and (size > settings.max_header_bytes or len(fields) > MAX_HEADER_FIELDS):
        rejected = headers_too_large()
    if rejected is None and len(path) > settings.max_request_line:
        rejected = RequestRejected(414, "URI_TOO_LONG", "The request-target is too long.")
    if rejected is None and facts.length is not None and not facts.length.isdigit():
        rejected = RequestRejected(400, "BAD_REQUEST", "The Content-Length is not valid.")
    if rejected is None:
        method_bytes = method.encode("ascii", "replace")
        rejected = refusal(facts, method_bytes, "1.1", path, settings.max_body_bytes)
    if rejected is not None:
        method, path = method or "GET", path if path.startswith("/") else "/"
    parsed = Parsed(
        method, path, fields, "2", True, None, rejected, False, time.perf_counter(),
        hosts[0] if hosts else local,
    )  # fmt: skip
    return parsed, facts


class Http2Stream:
    """One request and its answer; a ``Responder`` for the cache and a ``Connection`` for a
    held request (``disconnected`` is done when the stream is reset or the connection lost)."""

    def __init__(self, owner: Owner, stream_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.loop = loop
        self.peer = ""
        self.parsed: Parsed | None = None
        self.body: BodyStream | None = None
        #: Received body bytes not yet given back to the peer's window (§6.9).
        self.unacked = 0
        self.body_paused = False
        self.status = 0
        self.sent = 0
        self.started = False
        self.closed = False
        #: The client may still send on it (no END_STREAM yet).
        self.remote_open = True
        #: DATA waiting for the peer's window, and whether END_STREAM follows it.
        self.pending: deque[memoryview] = deque()
        self.end_after = False
        self._skip_body = False
        self._drained: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self.blocked_timer: asyncio.TimerHandle | None = None

    # -- the request body ----------------------------------------------------------------------

    def open_body(self, settings: Settings, expects: bool) -> BodyStream:
        self.body = BodyStream(
            limit=settings.max_body_bytes,
            idle_timeout=settings.client_body_timeout,
            continue_=self._continue if expects else None,
            reading=self._reading,
        )
        return self.body

    def _continue(self) -> None:
        if not self.closed:
            self.owner.send_head(self, [(b":status", b"100")], False)

    def _reading(self, on: bool) -> None:
        """The body's reader caught up (or fell behind): give the window back (or hold it)."""
        self.body_paused = not on
        if on and self.unacked:
            size, self.unacked = self.unacked, 0
            self.owner.window_opened(self, size)

    def received(self, data: bytes, flow_controlled: int) -> None:
        body = self.body
        if body is None or body.rejected is not None or self.closed:
            self.owner.window_opened(self, flow_controlled)  # nobody reads it: discard
            return
        self.unacked += flow_controlled
        if not body.feed(data):
            size, self.unacked = self.unacked, 0
            self.owner.window_opened(self, size)
            return
        if not self.body_paused:
            size, self.unacked = self.unacked, 0
            self.owner.window_opened(self, size)

    # -- lifecycle -----------------------------------------------------------------------------

    def disconnected(self) -> asyncio.Future[None]:
        self._disconnected = future = watch(self.loop, self._disconnected, self.closed)
        return future

    def close(self) -> None:
        """Reset by the peer or by us, or the connection is gone: nothing more goes out."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        if self.blocked_timer is not None:
            self.blocked_timer.cancel()
            self.blocked_timer = None
        if self.body is not None and not self.body.complete:
            self.body.fail(ConnectionResetError())
        settle(self._disconnected)
        self.drained(ConnectionResetError("the stream was reset"))

    def drained(self, error: Exception | None = None) -> None:
        waiter, self._drained = self._drained, None
        settle(waiter, error)

    # -- the Responder ---------------------------------------------------------------------------

    def _head(self, status: int, headers: Fields, length: int | None) -> list[tuple[bytes, bytes]]:
        head = [(b":status", str(status).encode())]
        dropped = CONNECTION_SPECIFIC if length is None else _FRAMED
        for name, value in headers:
            lowered = name.lower()
            if lowered in dropped:
                continue
            head.append((lowered.encode("latin-1"), value.encode("utf-8", "surrogateescape")))
        if not has_field(headers, "date"):
            head.append((b"date", _DATE()[6:-2]))
        if length is not None:
            head.append((b"content-length", str(length).encode()))
        return head

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self.status = status
        bodyless = status in BODYLESS or status < 200
        head = self._head(status, headers, None if bodyless else len(body))
        parsed = self.parsed
        if bodyless or (parsed is not None and parsed.method == "HEAD"):
            body = b""
        self.sent = len(body)
        self.owner.send_head(self, head, not body)
        if body:
            self.pending.append(memoryview(body))
            self.end_after = True
            self.owner.queue(self)

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        if self.closed:
            raise ConnectionResetError("the stream was reset")
        self.started = True
        self.status = status
        parsed = self.parsed
        self._skip_body = (
            status in BODYLESS or status < 200 or (parsed is not None and parsed.method == "HEAD")
        )
        self.owner.send_head(self, self._head(status, headers, None), self._skip_body)

    async def write(self, chunk: bytes) -> None:
        if self._skip_body or not chunk:
            return
        if self.closed:
            raise ConnectionResetError("the stream was reset")
        self.sent += len(chunk)
        self.pending.append(memoryview(chunk))
        self.owner.queue(self)
        if self.pending and not self.closed:
            waiter = self._drained = self.loop.create_future()
            await waiter

    async def finish(self) -> None:
        if self._skip_body or self.closed:
            return
        self.end_after = True
        self.owner.queue(self)

    def abort(self) -> None:
        """The answer cannot be completed: the stream alone is reset (INTERNAL_ERROR)."""
        self.owner.reset(self, 0x2)
