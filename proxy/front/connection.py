"""One client connection: httptools parsing, limits, timeouts, pipelining and flow control.

After uvicorn's httptools protocol, with h11's named states per direction (``proxy.front.states``).
Requests are answered one at a time in order (pipelining), through the cache or the fast path.
Reading pauses while requests queue or a body is not read; writing follows the transport's flow
control (``proxy.front.flow``); a client leaving a response unread for ``--client-send-timeout``
is cut. Head rules are pure functions in ``proxy.front.head``; what the connection needs of its
listener is ``proxy.front.seams.Host``, so nothing here imports the server.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httptools

from proxy.cache.exchange import RequestRejected
from proxy.front.body import BodyStream
from proxy.front.flow import FlowControl
from proxy.front.head import (
    ACCEPT,
    ACCEPT_ENCODING,
    CODING,
    CREDENTIAL,
    EXPECT,
    HOST,
    INM,
    LENGTH,
    MAX_HEADER_FIELDS,
    METHODS,
    SINGLETONS,
    HeadFacts,
    Parsed,
    asks_event_stream,
    expectations,
    field_kinds,
    has_body,
    headers_too_large,
    http09,
    refusal,
    refused,
    unfinished_head,
    unfinished_refusal,
    uri_too_long,
)
from proxy.front.seams import Host
from proxy.front.states import AnswerState, ReadState, WriteState
from proxy.front.tls import Handshake, cut_handshake
from proxy.front.waiters import settle, watch
from proxy.front.writing import ResponseWriting

__all__ = ["HttpConnection", "Parsed"]  # Parsed: what the server and the fast path take

log = logging.getLogger("proxy.server")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PRI = b"PRI * HTTP/2.0\r\n"

# The states as module globals: one lookup each on the hit path.
R_IDLE, R_HEAD, R_BODY, R_DONE = ReadState.IDLE, ReadState.HEAD, ReadState.BODY, ReadState.DONE
W_IDLE, W_WRITING, W_DRAINING, W_CLOSED = (
    WriteState.IDLE, WriteState.WRITING, WriteState.DRAINING, WriteState.CLOSED,
)  # fmt: skip
A_IDLE, A_BUSY, A_HANDLING = AnswerState.IDLE, AnswerState.BUSY, AnswerState.HANDLING


class _Halt(Exception):
    """Raised from a parser callback: the request was refused, parse no further."""


class HttpConnection(ResponseWriting):
    """The server side of one HTTP/1.1 connection (RFC 9112); slotted, as a held long poll
    keeps its connection for minutes, 100,000 of them per replica."""

    __slots__ = ("_accept_encoding", "_credentials", "_current", "_disconnected", "_facts",
        "_fast", "_handshake", "_head_bytes", "_head_deadline", "_head_size", "_head_slot",
        "_hosts", "_inm", "_kinds", "_max_header_bytes", "_plain",
        "_queue", "_raw", "_ready", "_url", "_whole", "answering", "flow", "front", "local", "loop",
        "parser", "peer", "read", "settings", "transport")  # fmt: skip

    def __init__(self, front: Host) -> None:
        self.front = front
        self.settings = front.settings
        self.loop = front.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = ""
        self.local = ""
        self.read = R_IDLE
        self.write = W_IDLE
        self.answering = A_IDLE
        self.flow = FlowControl(self.loop, self.settings.client_send_timeout, self._send_timeout)
        self._url = b""
        #: The fields as received; decoded into ``Parsed.headers`` only off the fast path.
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._hosts: list[str] = []
        #: What ``refusal`` needs of a head, made only for one with framing or odd fields.
        self._facts: HeadFacts | None = None
        #: No field takes this head off the fast path (a head fact, not a connection state).
        self._plain = True
        self._credentials: list[tuple[bytes, str]] = []
        self._inm: str | None = None
        self._accept_encoding: str | None = None
        self._kinds = field_kinds(front.credential_names)
        self._max_header_bytes = front.settings.max_header_bytes
        self._fast = front.fast
        self._current: Parsed | None = None
        self._ready: list[Parsed] = []
        self._queue: list[Parsed] = []  # pipelined, waiting their turn (a deque: 600 B more)
        self._pending: memoryview | None = None
        self._offset = 0
        self._head_slot = 0  # its tick in the listener's header-timeout wheel (0: none)
        self._head_deadline = 0.0
        self._disconnected: asyncio.Future[None] | None = None
        self._handshake: Handshake | None = None
        #: The chunk being parsed if it is one whole head: remembered if answered inline.
        self._whole: bytes | None = None

    # -- what the listener asks, derived from the states ----------------------------------------

    @property
    def lost(self) -> bool:
        return self.write is W_CLOSED

    @property
    def idle(self) -> bool:
        return self.answering is A_IDLE  # no answer owed or still being written

    @property
    def waiting(self) -> bool:
        """Waiting for a head (idle keep-alive or one under way): first past the cap."""
        read = self.read
        return self.answering is A_IDLE and self.write is not W_CLOSED and (
            read is R_IDLE or read is R_HEAD
        )  # fmt: skip

    @property
    def head_deadline(self) -> float:
        return self._head_deadline

    # -- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        local = transport.get_extra_info("sockname")
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        if not self.front.admit(self):
            self.write = W_CLOSED
            return
        if self.front.tls is not None:
            # Counted from accept: the header timeout (or the cap) ends a stuck handshake too.
            timeout = self.settings.client_header_timeout
            self._handshake = Handshake(self, self, self.front.tls, timeout, self.loop)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.write = W_CLOSED
        self._gone()
        self.front.forget(self)
        if self._head_slot:
            self.front.heads.discard(self, self._head_slot)
        current = self._current
        if current is not None and current.body is not None and not current.body.complete:
            current.body.fail(ConnectionResetError())
        self._pending = None
        self.flow.close(ConnectionResetError("the client closed the connection"))

    def eof_received(self) -> bool | None:
        # A half-closed client gets its answers, then the connection closes (RFC 9112 §9.6);
        # TLS cannot stay half-open. A held request (Prefer: wait) takes it as a goodbye.
        self._gone()
        self.read = R_DONE
        return True if self.answering is not A_IDLE and self.front.scheme == "http" else None

    def disconnected(self) -> asyncio.Future[None]:
        """Done once the client has gone away (closed, reset, or half-closed its side)."""
        self._disconnected = future = watch(self.loop, self._disconnected, self.lost)
        return future

    def _gone(self) -> None:
        settle(self._disconnected)

    def hand_over(self, data: bytes) -> None:
        """The connection speaks HTTP/2 from here on (``Front.http2``); this object is done."""
        self.read, self.write = R_DONE, W_CLOSED  # lost: the head timer ends with nothing
        self.front.http2(self, data)

    def drain(self) -> None:
        if self.idle:  # else it closes once its answers are out (the front is draining)
            self.transport.close()

    def evict(self) -> None:
        """Make room past the cap: an idle keep-alive connection is closed, a slow head cut."""
        partial = self.read is R_HEAD
        self.read = R_DONE
        if cut_handshake(self._handshake):
            return
        if partial:
            self.abort()
        else:
            self.transport.close()

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.read is R_DONE:
            return
        handshake = self._handshake
        if handshake is not None and not handshake.done:
            handshake.early.append(data)  # decrypted before the TLS transport is ours
            return
        continued = self.read is R_HEAD
        if not continued and self.read is R_IDLE and data[-4:] == b"\r\n\r\n":
            # At a message boundary: heads seen before are answered without parsing them.
            data = self._answer_heads(data)
            if not data:
                return
            if data.find(b"\r\n\r\n") == len(data) - 4:
                self._whole = data
        try:
            self.parser.feed_data(data)
            if self.read is R_HEAD:
                settings = self.settings
                self._head_bytes = unfinished_head(data, continued, self._head_bytes)
                rejected = unfinished_refusal(
                    self._url, bool(self._raw), self._head_bytes,
                    settings.max_request_line, settings.max_header_bytes,
                )  # fmt: skip
                if rejected is not None:
                    self._refuse(rejected)
                elif http09(self._url, bool(self._raw), data):
                    raise httptools.HttpParserError("HTTP/0.9")
        except httptools.HttpParserUpgrade:
            # Upgrades (h2c too) are not taken: the request is answered, then the connection closes.
            if self._current is not None:
                self._current.keep_alive = False
            self._halt()
        except httptools.HttpParserCallbackError:
            if self.read is not R_DONE:
                log.exception("request parsing failed")
                self._refuse(RequestRejected(400, "BAD_REQUEST", "The request is not valid."))
        except httptools.HttpParserError as error:
            if data.startswith(PRI) and self.settings.http2 and self.answering is A_IDLE:
                self.hand_over(data)  # the HTTP/2 preface: prior knowledge (RFC 9113 §3.3)
                return
            self._refuse_unparseable(error)
        self._whole = None
        # Dispatched once the whole chunk parsed: a request whose body turns out malformed in
        # the same chunk never reaches the origin.
        if self._ready:
            ready, self._ready = self._ready, []
            for parsed in ready:
                self._dispatch(parsed)

    def _answer_heads(self, data: bytes) -> bytes:
        """Answer the leading heads memoised by their bytes; the rest is for the parser."""
        fast = self._fast
        if fast is None or self.front.draining:
            return data
        start, end = 0, len(data)
        while start < end:
            stop = data.find(b"\r\n\r\n", start) + 4
            if stop == 3 or self.answering is not A_IDLE or self.write is not W_IDLE:
                break
            if not fast.answer_head(self, data if start == 0 and stop == end else data[start:stop]):
                break
            start = stop
            self._answered()
        return data[start:] if start else data

    def _refuse_unparseable(self, error: Exception) -> None:
        log.info("rejected an unparseable request from %s: 400 %s", self.peer, type(error).__name__)
        rejected = RequestRejected(400, "BAD_REQUEST", "The request is not valid HTTP/1.1.")
        current = self._current
        if current is not None and (self.read is R_HEAD or self.read is R_BODY):
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
        self._ready.append(refused(rejected))

    def _halt(self) -> None:
        self.read = R_DONE
        self._set_reading(False)

    def _set_reading(self, on: bool) -> None:
        if self.write is W_CLOSED:
            return
        if not on:
            self.flow.pause_reading(self.transport)
        elif self.read is not R_DONE and not self._queue:
            self.flow.resume_reading(self.transport)

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw = []
        self._head_size = 0
        self._hosts = []
        self._facts = None
        self._plain = True
        self._credentials = []
        self._inm = None
        self._accept_encoding = None
        if self.read is not R_DONE:
            self.read = R_HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.settings.max_request_line:
            self._refuse(uri_too_long())
            raise _Halt

    def on_header(self, name: bytes, value: bytes) -> None:
        # head.fields_too_large, spelled out: this runs for every field of every request.
        size = self._head_size = self._head_size + len(name) + len(value) + 4
        raw = self._raw
        if size > self._max_header_bytes or len(raw) >= MAX_HEADER_FIELDS:
            self._refuse(headers_too_large())
            raise _Halt
        raw.append((name, value))
        lowered = name.lower()
        kind = self._kinds.get(lowered)
        if kind is None or (kind == ACCEPT and not asks_event_stream(value)):
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
                facts = self._head_facts()
                facts.expects = True
                facts.expectations += expectations(text)

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        if self.read is R_HEAD:
            self.read = R_BODY
        parser = self.parser
        version = parser.get_http_version()
        target = self._url.decode("utf-8", "surrogateescape")
        hosts = self._hosts
        method = parser.get_method()
        facts = self._facts
        # head.plain_head, spelled out: the hit path asks no more of a plain head.
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
        if rejected is None and has_body(facts):
            assert facts is not None
            body = BodyStream(
                limit=self.settings.max_body_bytes,
                idle_timeout=self.settings.client_body_timeout,
                continue_=self._send_continue if facts.expects else None,
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
        self._raw = []  # decoded into the Parsed: the bytes need not stay while it is answered
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
            or self.answering is not A_IDLE
            or self._ready
            or self.write is not W_IDLE  # also: lost
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
        credentials = tuple(self._credentials)
        if not fast.answer(
            self, name, target, self._hosts[0], credentials, self._inm,
            self._accept_encoding, True, "1.1", time.perf_counter(), None,
        ):  # fmt: skip
            return False
        whole = self._whole
        if whole is not None:
            self._whole = None
            values = (name, target, self._hosts[0], credentials, self._inm, self._accept_encoding)
            fast.remember(whole, values)
        self._current = None
        self._answered()
        return True

    def _answered(self) -> None:
        """A hit was answered without a ``Parsed``: busy while it is written, else idle."""
        if self.write is not W_IDLE:
            # Still being written: busy (not evictable) until the pump or resume_writing ends.
            self.answering = A_BUSY
            return
        self._idle()  # as _next leaves a connection whose queue is empty
        if self.flow.read_paused:
            self._set_reading(True)

    def on_body(self, body: bytes) -> None:
        current = self._current
        if current is not None and current.body is not None and not current.body.feed(body):
            self._halt()
            raise _Halt

    def on_message_complete(self) -> None:
        current = self._current
        if current is not None and current.body is not None:
            current.body.finish()
        if self.read is R_BODY:
            self.read = R_IDLE

    def _send_continue(self) -> None:
        if not self.lost:
            self.transport.write(CONTINUE)

    # -- answering in order ------------------------------------------------------------------

    def _dispatch(self, parsed: Parsed) -> None:
        self._queue.append(parsed)
        if self.answering is not A_IDLE:
            self._set_reading(False)
            return
        self.answering = A_BUSY
        self._next()

    def _next(self) -> None:
        """Answer queued requests while the previous answers are out (or buffered)."""
        fast = self._fast
        while self._queue:
            if self.write is not W_IDLE:
                return  # resume_writing or the end of the pump calls again (or it is lost)
            parsed = self._queue.pop(0)
            if parsed.plain and fast is not None and fast.serve(self, parsed):
                if not parsed.keep_alive or self.front.draining:
                    self._close_when_written()
                    return
                continue
            self.answering = A_HANDLING
            if self._head_slot:  # no head awaited until this is answered (_idle): a held
                self.front.heads.discard(self, self._head_slot)  # long poll has no timer
                self._head_slot = 0
            task = self.loop.create_task(self._handle(parsed))
            self.front.track(task)
            return
        if self.write is not W_IDLE:
            return  # an answer is still being written: still busy
        self.answering = A_IDLE
        if self.read is R_DONE:
            self.transport.close()
            return
        self._idle()
        if self.flow.read_paused:
            self._set_reading(True)

    async def _handle(self, parsed: Parsed) -> None:
        deferred = False
        try:
            deferred = await self.front.answer(self, parsed)
        except Exception:
            log.exception("the front failed to answer a request")
            self.abort()
        except BaseException:  # cancelled: busy, answered no further
            self.answering = A_BUSY
            raise
        if not deferred:  # else whoever writes the deferred answer calls finished
            self.finished(parsed)

    def finished(self, parsed: Parsed) -> None:
        """``parsed`` is answered (its answer written or buffered): on to the next request."""
        if self.answering is A_HANDLING:
            self.answering = A_BUSY
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
        self.read = R_DONE
        if self._pending is None:
            self.transport.close()  # flushes what is buffered, then closes

    def _idle(self) -> None:
        """Waiting for the next head: armed with the header timeout, first to go past the cap."""
        self._head_deadline = self.loop.time() + self.settings.client_header_timeout
        if not self._head_slot:
            self._head_slot = self.front.heads.add(self, self._head_deadline)

    def expired(self) -> None:
        """The header timeout's tick (``DeadlineWheel``): cut it if it still waits for a head."""
        self._head_slot = 0
        if self.lost or self.answering is not A_IDLE:
            return
        if self.loop.time() < self._head_deadline:
            self._head_slot = self.front.heads.add(self, self._head_deadline)
            return
        self.front.timed_out("head")
        if not cut_handshake(self._handshake):
            self.transport.close()

    def _send_timeout(self) -> None:
        """The client read nothing for ``--client-send-timeout``: cut it (nginx send_timeout)."""
        self.front.timed_out("send")
        self.abort()

    def abort(self) -> None:
        if cut_handshake(self._handshake):
            return
        if self.transport is not None:
            self.transport.abort()
