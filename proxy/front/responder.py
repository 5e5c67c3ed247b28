"""The cache's ``Responder`` on our own connection: heads serialised here, bodies framed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from proxy.cache.exchange import Fields, SharedAnswer
from proxy.front.wire import (
    BODYLESS,
    CRLF,
    connection_field,
    date_field,
    field_lines,
    has_field,
    status_line,
)
from proxy.front.writing import SLICE

log = logging.getLogger("proxy.server")

if TYPE_CHECKING:
    from proxy.front.head import Parsed
    from proxy.front.seams import Writer


class ConnectionResponder:
    """Writes one response of ``conn`` for ``request``: whole, or streamed with framing."""

    __slots__ = ("_chunked", "_on_finish", "_skip_body", "conn", "deferred", "request", "sent",
                 "started", "status")  # fmt: skip

    def __init__(
        self,
        conn: Writer,
        request: Parsed,
        on_finish: Callable[[ConnectionResponder, str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.request = request
        #: Called with the result label when a deferred answer is written (the listener's
        #: access log and the connection's next request).
        self._on_finish = on_finish
        self.deferred = False
        self.status = 0
        self.sent = 0
        self.started = False
        self._chunked = False
        self._skip_body = False

    def _head(self, status: int, reason: str, headers: Fields, length: int | None) -> bytes:
        request = self.request
        parts = [status_line(status, reason), field_lines(headers)]
        if not has_field(headers, "date"):
            parts.append(date_field())
        if length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
        elif self._chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(connection_field(request.keep_alive, request.http10))
        parts.append(CRLF)
        return b"".join(parts)

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        if self.started:
            return  # a streamed head is already out; its own error handling cut the connection
        self.started = True
        self.status = status
        if close:
            self.request.keep_alive = False
        bodyless = status in BODYLESS or status < 200
        length = None if bodyless else len(body)
        head = self._head(status, reason, headers, length)
        if bodyless or self.request.method == "HEAD":
            body = b""
        self.sent = len(body)
        self.conn.write_response(head, body)

    def send_shared(self, answer: SharedAnswer) -> None:
        """``send`` of an answer shared with other requests: its head is serialised once per
        framing and kept in ``answer.wire``."""
        if self.send_shared_all((self,), answer):
            raise ConnectionError("the shared answer could not be written")

    def send_shared_all(self, responders: Sequence[object], answer: SharedAnswer) -> list[object]:
        """``send_shared`` of ``answer`` to each of ``responders`` (of this class, this one
        among them or not) in one loop: the waiters one change wakes. The head (and a body of
        at most one slice, joined to it) is made once per framing, kept in ``answer.wire``;
        each request then costs one write. A responder that answered already is skipped, a
        client that went away is written nothing (as ``send`` would). Returns the responders
        whose write failed (logged), so that only they are answered as errors, as they were
        when each was answered on its own."""
        status = answer.status
        bodyless = status in BODYLESS or status < 200
        body = answer.body
        joined = len(body) <= SLICE
        wires = answer.wire
        failed: list[object] = []
        for responder in responders:
            assert isinstance(responder, ConnectionResponder)
            if responder.started:
                continue
            responder.started = True
            responder.status = status
            request = responder.request
            head_only = bodyless or request.method == "HEAD"
            framing = (request.keep_alive, request.version, head_only)  # version: http10
            wire = wires.get(framing)
            if wire is None:
                wire = responder._head(
                    status, answer.reason, answer.headers, None if bodyless else len(body)
                )
                if joined and not head_only:
                    wire += body  # head and body joined once: one write per waiter, not a writev
                wires[framing] = wire
            try:
                if head_only:
                    responder.conn.write_response(wire, b"")
                else:
                    responder.sent = len(body)
                    responder.conn.write_response(wire, b"" if joined else body)
            except Exception:
                log.exception("writing a shared answer to %s failed", request.target)
                failed.append(responder)
        return failed

    def defer(self) -> Callable[[str], None] | None:
        """The answer is written after the handler returns (a parked long poll)."""
        if self._on_finish is None:
            return None
        self.deferred = True
        return self._finish

    def _finish(self, result: str) -> None:
        assert self._on_finish is not None
        self._on_finish(self, result)

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        self.started = True
        self.status = status
        request = self.request
        self._skip_body = request.method == "HEAD" or status in BODYLESS or status < 200
        length_given = has_field(headers, "content-length")
        if not self._skip_body and not length_given:
            if request.http10:
                request.keep_alive = False  # framed by closing the connection
            else:
                self._chunked = True
        head = self._head(status, reason, headers, None)
        await self.conn.write_stream(head)

    async def write(self, chunk: bytes) -> None:
        if self._skip_body or not chunk:
            return
        self.sent += len(chunk)
        if self._chunked:
            await self.conn.write_stream(b"%x\r\n" % len(chunk), chunk, CRLF)
        else:
            await self.conn.write_stream(chunk)

    async def finish(self) -> None:
        if self._chunked:
            await self.conn.write_stream(b"0\r\n\r\n")

    def abort(self) -> None:
        self.conn.abort()
