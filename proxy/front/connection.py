"""One client connection: httptools parsing, limits, timeouts, pipelining and flow control.

Modelled on uvicorn's httptools protocol. Requests are answered one at a time in the order they
arrived (pipelining), each through the cache or the fast path. Reading pauses while requests
queue or a body is not being read; writing follows the transport's flow control, and a client
that leaves a response unread for ``--client-send-timeout`` is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from proxy.cache.exchange import RequestRejected
from proxy.front.body import BodyStream
from proxy.front.head import (
    ACCEPT_ENCODING,
    CODING,
    CREDENTIAL,
    EXPECT,
    HOST,
    INM,
    LENGTH,
    METHODS,
    SINGLETONS,
    HeadFacts,
    Parsed,
    expectations,
    field_kinds,
    headers_too_large,
    refusal,
    refused,
    uri_too_long,
)
from proxy.front.tls import Handshake, cut_handshake

if TYPE_CHECKING:
    from proxy.front.server import Front

__all__ = ["HttpConnection", "Parsed"]  # Parsed: what the server and the fast path take

log = logging.getLogger("proxy.server")

#: A body at most this large is written in one call; larger ones go out in slices of it, so a
#: client that does not read never makes the proxy hold more than one slice of a shared body.
SLICE = 2**16
MAX_HEADER_FIELDS = 128
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Halt(Exception):
    """Raised from a parser callback: the request was refused, parse no further."""


class HttpConnection(asyncio.Protocol):
    """The server side of one HTTP/1.1 connection (RFC 9112)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.settings = front.settings
        self.loop = front.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = ""
        self.local = ""
        self.lost = False
        #: Waiting for a request head (idle keep-alive or a head under way): the first to go
        #: past the connection cap, the longest-waiting first (``_head_deadline`` orders them).
        self.waiting = False
        self._url = b""
        #: The fields as received; decoded into ``Parsed.headers`` only for a request that leaves
        #: the fast path.
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._in_head = True
        self._partial = False
        self._hosts: list[str] = []
        #: What ``refusal`` needs of a head, made only for one with framing or odd fields.
        self._facts: HeadFacts | None = None
        self._expect = False
        self._plain = True
        self._credentials: list[tuple[bytes, str]] = []
        self._inm: str | None = None
        self._accept_encoding: str | None = None
        self._kinds = field_kinds(front.credential_names)
        self._max_header_bytes = front.settings.max_header_bytes
        self._fast = front.fast
        self._current: Parsed | None = None
        self._complete = True
        self._ready: list[Parsed] = []
        self._queue: deque[Parsed] = deque()
        self._busy = False
        self._handling = False
        self._halted = False
        #: The client half-closed its side: close once the answers due are written.
        self._eof = False
        self._reading = True
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._pending: memoryview | None = None
        self._offset = 0
        self._send_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._disconnected: asyncio.Future[None] | None = None
        self._handshake: Handshake | None = None

    # -- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        local = transport.get_extra_info("sockname")
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        if not self.front.admit(self):
            self.lost = True
            return
        if self.front.tls is not None:
            # Counted and waiting for a head from accept: the header timeout (or the cap)
            # ends a handshake that does not finish, as it ends a head that does not arrive.
            timeout = self.settings.client_header_timeout
            self._handshake = Handshake(self, self, self.front.tls, timeout, self.loop)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._gone()
        self.front.forget(self)
        for timer in (self._send_timer, self._head_timer):
            if timer is not None:
                timer.cancel()
        current = self._current
        if current is not None and current.body is not None and not current.body.complete:
            current.body.fail(ConnectionResetError())
        self._pending = None
        self._wake_drain(ConnectionResetError("the client closed the connection"))

    def eof_received(self) -> bool | None:
        # A half-closed client gets its answers, then the connection closes (RFC 9112 §9.6);
        # TLS cannot stay half-open. A held request (Prefer: wait) takes it as a goodbye.
        self._gone()
        self._eof = True
        return True if self._busy and self.front.scheme == "http" else None

    def disconnected(self) -> asyncio.Future[None]:
        """Done once the client has gone away (closed, reset, or half-closed its side)."""
        if self._disconnected is None:
            self._disconnected = self.loop.create_future()
            if self.lost:
                self._disconnected.set_result(None)
        return self._disconnected

    def _gone(self) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def evict(self) -> None:
        """Make room past the cap: an idle keep-alive connection is closed, a slow head cut."""
        self.waiting = False
        if cut_handshake(self._handshake):
            return
        if self._partial:
            self.abort()
        else:
            self.transport.close()

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._halted:
            return
        handshake = self._handshake
        if handshake is not None and not handshake.done:
            handshake.early.append(data)  # decrypted before the TLS transport is ours
            return
        continued = self._partial
        try:
            self.parser.feed_data(data)
            if self._partial:
                # A head still incomplete after this read: count what the parser may hold of
                # it (a field without its line end is kept there until it ends). When it began
                # in this read, it began after the last blank line (an over-count only if a
                # Content-Length body came just before it in the same read).
                if continued:
                    self._head_bytes += len(data)
                else:
                    end = data.rfind(b"\r\n\r\n")
                    self._head_bytes = len(data) - (end + 4 if end >= 0 else 0)
                settings = self.settings
                if self._head_bytes > settings.max_request_line + settings.max_header_bytes:
                    self._refuse_head()
            if self._in_head and self._url and not self._raw and self._url + b"\r\n" in data:
                # HTTP/0.9 (no version): llhttp would wait for more; answer at once instead.
                raise httptools.HttpParserError("HTTP/0.9")
        except httptools.HttpParserUpgrade:
            # Upgrades are not offered: the request is answered, then the connection closes.
            if self._current is not None:
                self._current.keep_alive = False
            self._halt()
        except httptools.HttpParserCallbackError:
            if not self._halted:
                log.exception("request parsing failed")
                self._refuse(RequestRejected(400, "BAD_REQUEST", "The request is not valid."))
        except httptools.HttpParserError as error:
            self._refuse_unparseable(error)
        # Requests are dispatched once the whole chunk parsed, so that a request whose body
        # turns out malformed in the same chunk never reaches the origin.
        if self._ready:
            ready, self._ready = self._ready, []
            for parsed in ready:
                self._dispatch(parsed)

    def _refuse_head(self) -> None:
        if self._raw or not self._url:
            self._refuse(headers_too_large())
        else:
            self._refuse(uri_too_long())

    def _refuse_unparseable(self, error: Exception) -> None:
        log.info("rejected an unparseable request from %s: 400 %s", self.peer, type(error).__name__)
        rejected = RequestRejected(400, "BAD_REQUEST", "The request is not valid HTTP/1.1.")
        current = self._current
        if current is not None and not self._complete:
            if self._ready and self._ready[-1] is current:
                self._ready.pop()  # not dispatched yet: answered by the refusal alone
            elif current.body is not None:
                # Already being answered: its body ends in the refusal, answered by its handler.
                current.keep_alive = False
                current.body.reject(rejected)
                self._halt()
                return
        self._refuse(rejected)

    def _refuse(self, rejected: RequestRejected) -> None:
        """Answer with the envelope (after the answers already due) and read no further."""
        self._halt()
        self._in_head = False
        self.waiting = False
        self._ready.append(refused(rejected))

    def _halt(self) -> None:
        self._halted = True
        self._set_reading(False)

    def _set_reading(self, on: bool) -> None:
        if on and (self._halted or self._queue):
            return
        if on == self._reading or self.lost:
            return
        self._reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._head_size = 0
        self._hosts = []
        self._facts = None
        self._expect = False
        self._plain = True
        self._credentials = []
        self._inm = None
        self._accept_encoding = None
        self._in_head = True
        self._partial = True
        self._complete = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.settings.max_request_line:
            self._refuse(uri_too_long())
            raise _Halt

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size = self._head_size + len(name) + len(value) + 4
        raw = self._raw
        if size > self._max_header_bytes or len(raw) >= MAX_HEADER_FIELDS:
            self._refuse(headers_too_large())
            raise _Halt
        raw.append((name, value))
        lowered = name.lower()
        kind = self._kinds.get(lowered)
        if kind is None:
            return
        text = value.decode("utf-8", "surrogateescape")
        if kind == HOST:
            self._hosts.append(text)
        elif kind == CREDENTIAL:
            if lowered in SINGLETONS and any(n == lowered for n, _ in self._credentials):
                self._head_facts().repeated_credential = True
                self._plain = False
            self._credentials.append((lowered, text))
        elif kind == INM:
            if self._inm is not None:
                self._plain = False  # several fields: the full policy combines them
            self._inm = text
        elif kind == ACCEPT_ENCODING:
            if self._accept_encoding is not None:
                self._plain = False  # several fields: the full policy combines them
            self._accept_encoding = text
        else:
            self._plain = False
            if kind == CODING:
                self._head_facts().codings.extend(c.strip().lower() for c in text.split(","))
            elif kind == LENGTH:
                self._head_facts().length = text
            elif kind == EXPECT:
                # The front answers 100 Continue itself (BodyStream); Expect is not forwarded.
                self._expect = True
                self._head_facts().expectations += expectations(text)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._partial = False
        self._head_bytes = 0
        self.waiting = False
        parser = self.parser
        version = parser.get_http_version()
        target = self._url.decode("utf-8", "surrogateescape")
        hosts = self._hosts
        method = parser.get_method()
        facts = self._facts
        if self._plain and version == "1.1" and len(hosts) == 1 and target[:1] == "/":
            # What refusal finds of a plain request (no framing fields) but for its method.
            rejected = None
            if self._answer_inline(parser, target, method):
                return
            if method == b"CONNECT":
                rejected = refusal(HeadFacts(hosts), method, version, target, 0)
        else:
            facts = facts or HeadFacts(hosts)
            rejected = refusal(facts, method, version, target, self.settings.max_body_bytes)
        body = None
        framed = facts is not None and (facts.codings or (facts.length or "0") != "0")
        if rejected is None and framed:
            body = BodyStream(
                limit=self.settings.max_body_bytes,
                idle_timeout=self.settings.client_body_timeout,
                continue_=self._send_continue if self._expect else None,
                reading=self._set_reading,
            )
        parsed = Parsed(
            METHODS.get(method) or method.decode("ascii", "replace"),
            target,
            [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self._raw],
            version,
            parser.should_keep_alive() and rejected is None and not self.front.draining,
            body,
            rejected,
            self._plain and rejected is None,
            time.perf_counter(),
            hosts[0] if hosts else self.local,
            tuple(self._credentials),
            self._inm,
            self._accept_encoding,
        )
        self._current = parsed
        self._ready.append(parsed)
        if rejected is not None:
            self._halt()
            raise _Halt

    def _head_facts(self) -> HeadFacts:
        facts = self._facts
        if facts is None:
            facts = self._facts = HeadFacts(self._hosts)
        return facts

    def _answer_inline(
        self, parser: httptools.HttpRequestParser, target: str, method: bytes
    ) -> bool:
        """A plain keep-alive GET or HEAD with nothing before it on the connection, answered
        from the fast path's memo during parsing, without building a ``Parsed``."""
        fast = self._fast
        if (
            fast is None
            or self._busy
            or self._ready
            or self._write_paused
            or self._pending is not None
            or self.lost
            or self.front.draining
            or not parser.should_keep_alive()
        ):
            return False
        if method == b"GET":
            name = "GET"
        elif method == b"HEAD":
            name = "HEAD"
        else:
            return False
        if not fast.answer(
            self, name, target, self._hosts[0], tuple(self._credentials), self._inm,
            self._accept_encoding, True, "1.1", time.perf_counter(), None,
        ):  # fmt: skip
            return False
        self._current = None
        if self._pending is not None or self._write_paused:
            # The answer is still being written: busy (not idle, not evictable) until it is
            # out, when the end of the pump (or resume_writing) calls _next.
            self._busy = True
            return True
        self._idle()  # as _next leaves a connection whose queue is empty
        if not self._reading:
            self._set_reading(True)
        return True

    def on_body(self, body: bytes) -> None:
        current = self._current
        if current is not None and current.body is not None and not current.body.feed(body):
            self._halt()
            raise _Halt

    def on_message_complete(self) -> None:
        current = self._current
        if current is not None and current.body is not None:
            current.body.finish()
        self._in_head = True
        self._complete = True

    def _send_continue(self) -> None:
        if not self.lost:
            self.transport.write(CONTINUE)

    # -- answering in order ------------------------------------------------------------------

    def _dispatch(self, parsed: Parsed) -> None:
        self._queue.append(parsed)
        if self._busy:
            self._set_reading(False)
            return
        self._busy = True
        self._next()

    def _next(self) -> None:
        """Answer queued requests while the previous answers are out (or buffered)."""
        fast = self.front.fast
        while self._queue and not self.lost:
            if self._write_paused or self._pending is not None:
                return  # resume_writing or the end of the pump calls again
            parsed = self._queue.popleft()
            if parsed.plain and fast is not None and fast.serve(self, parsed):
                if not parsed.keep_alive or self.front.draining:
                    self._close_when_written()
                    return
                continue
            self._handling = True
            task = self.loop.create_task(self._handle(parsed))
            self.front.track(task)
            return
        if self.lost or self._write_paused or self._pending is not None:
            return  # an answer is still being written: still busy
        self._busy = False
        if self._halted or self._eof:
            self.transport.close()
            return
        self._idle()
        if not self._reading:
            self._set_reading(True)

    async def _handle(self, parsed: Parsed) -> None:
        try:
            await self.front.answer(self, parsed)
        except Exception:
            log.exception("the front failed to answer a request")
            self.abort()
        finally:
            self._handling = False
        if self.lost:
            return
        body = parsed.body
        if body is not None and not body.complete:
            parsed.keep_alive = False  # the rest of an unread body would be taken for a request
        if not parsed.keep_alive or self.front.draining:
            self._close_when_written()
            return
        self._next()

    def _close_when_written(self) -> None:
        self._queue.clear()
        self._halted = True
        if self._pending is None:
            self.transport.close()  # flushes what is buffered, then closes

    def _idle(self) -> None:
        """Waiting for the next head: armed with the header timeout, first to go past the cap."""
        self._head_deadline = self.loop.time() + self.settings.client_header_timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_deadline, self._head_timeout)
        self.waiting = True

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.lost or self._busy:
            return
        if self.loop.time() < self._head_deadline:
            self._head_timer = self.loop.call_at(self._head_deadline, self._head_timeout)
            return
        self.front.timed_out("head")
        if not cut_handshake(self._handshake):
            self.transport.close()

    # -- writing ----------------------------------------------------------------------------

    def write_response(self, head: bytes, body: bytes) -> None:
        """A whole response; a large body is written in slices as the client reads."""
        if self.lost:
            return
        if len(body) <= SLICE:
            if body:
                self.transport.writelines((head, body))
            else:
                self.transport.write(head)
            return
        self.transport.write(head)
        self._pending = memoryview(body)
        self._offset = 0
        self._pump()

    def _pump(self) -> None:
        pending = self._pending
        while pending is not None and not self._write_paused and not self.lost:
            end = self._offset + SLICE
            self.transport.write(pending[self._offset : end])
            self._offset = end
            if end >= len(pending):
                self._pending = pending = None
                if not self._handling and self._busy:
                    if self._halted:
                        self.transport.close()
                    else:
                        self._next()

    async def write_stream(self, *parts: bytes) -> None:
        """Part of a streamed response; waits (up to the send timeout) while the client lags."""
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        self.transport.writelines(parts)
        if self._write_paused:
            waiter = self.loop.create_future()
            self._drain_waiter = waiter
            await waiter

    def _wake_drain(self, error: Exception | None = None) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._send_timer = self.loop.call_later(
            self.settings.client_send_timeout, self._send_timeout
        )

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._wake_drain()
        if self._pending is not None:
            self._pump()
        elif self._busy and not self._handling:
            self._next()  # the next request, or idle once the last answer is out

    def _send_timeout(self) -> None:
        """The client read nothing for ``--client-send-timeout``: cut it (nginx send_timeout)."""
        self._send_timer = None
        self.front.timed_out("send")
        self.abort()

    def abort(self) -> None:
        if cut_handshake(self._handshake):
            return
        if self.transport is not None:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return not self._busy

    @property
    def head_deadline(self) -> float:
        return self._head_deadline
