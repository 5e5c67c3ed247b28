"""The client-facing HTTP/1.1 server: limits, timeouts and clean answers to hostile requests.

aiohttp's parser already rejects the request-smuggling shapes (``Content-Length`` with
``Transfer-Encoding``, duplicate or non-numeric ``Content-Length``, obsolete line folding, CR, LF
or NUL in a field) with 400, but it answers every parse failure with a plain-text 400 that echoes
the offending bytes and logs them with a traceback, which may carry a credential. Its protocol
has no hook for that (aiohttp issue #3287), so ``ProxyRunner`` swaps in a request handler whose
``handle_error`` answers with the API's error envelope, the precise status (414 for a long
request-target, 431 for large header fields) and a log line without request content.

The rest is checked on the parsed request by ``request_guard`` (only origin-form targets, HTTP/1.0
and 1.1, total header size, declared body size) and while the body streams by ``RequestBody``
(size and idle time).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from proxy.ops.config import Settings

log = logging.getLogger("proxy.server")

#: aiohttp's own cap on the number of header fields; more is answered 431 like a large section.
MAX_HEADER_FIELDS = 128


class RequestRejected(Exception):
    """A request the proxy refuses on the client's account (4xx), answered with the envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> web.Response:
        response = web.Response(
            status=self.status,
            body=json.dumps(
                {"success": False, "error": {"code": self.code, "message": str(self)}}
            ).encode(),
            content_type="application/json",
        )
        # The rest of the request may still be in flight: the connection cannot be reused.
        response.force_close()
        return response


def handler_args(settings: Settings) -> dict[str, Any]:
    """The aiohttp protocol limits for ``web.Application(handler_args=...)``.

    The parser enforces the request-target limit itself; a single field may be as large as the
    whole header budget (``request_guard`` checks the total). The field limit is kept distinct
    from the target limit because that is how ``ProxyRequestHandler`` tells 414 from 431.
    """
    field_limit = settings.max_header_bytes
    if field_limit == settings.max_request_line:
        field_limit += 1
    return {
        "max_line_size": settings.max_request_line,
        "max_field_size": field_limit,
        "max_headers": MAX_HEADER_FIELDS,
        # aiohttp closes a connection whose next request head has not arrived this long after
        # its opening or its previous response: the header timeout and the keep-alive limit.
        "keepalive_timeout": settings.client_header_timeout,
    }


def header_section_size(raw_headers: tuple[tuple[bytes, bytes], ...]) -> int:
    """Bytes of a header section as sent: ``name: value CRLF`` per field."""
    return sum(len(name) + len(value) + 4 for name, value in raw_headers)


def request_guard(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware refusing what the parser lets through but the proxy must not forward."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            check_request(request, settings)
        except RequestRejected as rejected:
            return rejected.response()
        return await handler(request)

    return guard


def check_request(request: web.BaseRequest, settings: Settings) -> None:
    if request.version not in (HttpVersion10, HttpVersion11):
        raise RequestRejected(505, "HTTP_VERSION_NOT_SUPPORTED", "Only HTTP/1.0 and 1.1.")
    if not request.raw_path.startswith("/"):
        # Absolute-form, authority-form and asterisk-form targets would be glued onto the
        # upstream URL; a reverse proxy only serves origin-form (RFC 9112 §3.2.1).
        raise RequestRejected(400, "BAD_REQUEST", "The request-target must start with '/'.")
    if request.version == HttpVersion10 and "Transfer-Encoding" in request.headers:
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise RequestRejected(400, "BAD_REQUEST", "Transfer-Encoding is not allowed in HTTP/1.0.")
    if header_section_size(request.raw_headers) > settings.max_header_bytes:
        raise RequestRejected(431, "HEADERS_TOO_LARGE", "The request header fields are too large.")
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise RequestRejected(413, "CONTENT_TOO_LARGE", "The request body is too large.")


class RequestBody:
    """A request body streamed to the upstream, bounded in size and in the pause between chunks.

    A violation ends the stream with an exception, which aborts the upstream request; the
    handler then finds the reason in ``rejected`` and answers 413 or 408 instead of 502.
    """

    def __init__(self, content: StreamReader, *, limit: int, idle_timeout: float) -> None:
        self._content = content
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.rejected: RequestRejected | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await self._content.readany()
            except TimeoutError:
                self.rejected = RequestRejected(
                    408, "REQUEST_TIMEOUT", "The request body did not arrive in time."
                )
                raise self.rejected from None
            if not chunk:
                return
            size += len(chunk)
            if size > self._limit:
                self.rejected = RequestRejected(
                    413, "CONTENT_TOO_LARGE", "The request body is too large."
                )
                raise self.rejected
            yield chunk


class ProxyRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering unparseable requests without echoing them,
    and telling a held request (``Prefer: wait``) when its client goes away."""

    _lost: asyncio.Future[None] | None = None

    def lost(self) -> asyncio.Future[None]:
        """Done once the connection is lost: aiohttp does not cancel handlers on disconnect."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self.transport is None:
                self._lost.set_result(None)
        return self._lost

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        rejected = classify_parse_error(exc, self.max_line_size)
        log.info(
            "rejected an unparseable request from %s: %d %s",
            request.remote,
            rejected.status,
            type(exc).__name__,
        )
        return rejected.response()


def disconnected(request: web.BaseRequest) -> asyncio.Future[None] | None:
    """A future done when the request's client disconnects, where the server can tell."""
    protocol = request.protocol
    return protocol.lost() if isinstance(protocol, ProxyRequestHandler) else None


def classify_parse_error(exc: HttpProcessingError, max_line_size: int) -> RequestRejected:
    """The status for a parser failure: 414 for the target, 431 for fields, else 400."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if str(limit) == str(max_line_size):
            return RequestRejected(414, "URI_TOO_LONG", "The request-target is too long.")
        return RequestRejected(431, "HEADERS_TOO_LARGE", "The request header fields are too large.")
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        return RequestRejected(431, "HEADERS_TOO_LARGE", "Too many request header fields.")
    return RequestRejected(400, "BAD_REQUEST", "The request is not valid HTTP/1.1.")


class ProxyServer(web.Server):
    """``web.Server`` creating ``ProxyRequestHandler`` connections."""

    def __call__(self) -> web.RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers parse failures through ``ProxyRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ProxyServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


__all__ = [
    "ProxyRequestHandler",
    "ProxyRunner",
    "RequestBody",
    "RequestRejected",
    "check_request",
    "disconnected",
    "handler_args",
    "request_guard",
]
