"""The cache's ``Responder`` on our own connection: heads serialised here, bodies framed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.cache.exchange import Fields
from proxy.front.wire import (
    BODYLESS,
    CRLF,
    connection_field,
    date_field,
    field_lines,
    has_field,
    status_line,
)

if TYPE_CHECKING:
    from proxy.front.head import Parsed
    from proxy.front.seams import Writer


class ConnectionResponder:
    """Writes one response of ``conn`` for ``request``: whole, or streamed with framing."""

    __slots__ = ("_chunked", "_skip_body", "conn", "request", "sent", "started", "status")

    def __init__(self, conn: Writer, request: Parsed) -> None:
        self.conn = conn
        self.request = request
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
