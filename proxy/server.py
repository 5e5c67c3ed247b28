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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from multidict import CIMultiDict

from proxy.cache.exchange import Fields, ProxyRequest, RequestRejected, envelope
from proxy.core.credentials import repeated_singleton
from proxy.front.head import connect_refused
from proxy.ops.config import Settings

if TYPE_CHECKING:
    from proxy.cache.proxy import CachingProxy

log = logging.getLogger("proxy.server")

#: aiohttp's own cap on the number of header fields; more is answered 431 like a large section.
MAX_HEADER_FIELDS = 128


def rejection(rejected: RequestRejected) -> web.Response:
    """The envelope for a refused request on aiohttp's server."""
    response = web.Response(
        status=rejected.status,
        body=envelope(rejected.code, str(rejected)),
        content_type="application/json",
        headers=dict(rejected.headers),
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
            return rejection(rejected)
        return await handler(request)

    return guard


def check_request(request: web.BaseRequest, settings: Settings) -> None:
    if request.version not in (HttpVersion10, HttpVersion11):
        raise RequestRejected(505, "HTTP_VERSION_NOT_SUPPORTED", "Only HTTP/1.0 and 1.1.")
    if request.method == "CONNECT":
        raise connect_refused()
    if repeated_singleton(name for name, _ in request.headers.items()) is not None:
        raise RequestRejected(
            400, "BAD_REQUEST", "Authorization and Proxy-Authorization take one field line."
        )
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

    def disconnected(self) -> asyncio.Future[None]:
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
        return rejection(rejected)


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


RESULT_KEY = web.RequestKey("cache_result", str)


class AiohttpResponder:
    """A ``Responder`` building aiohttp responses, for the cache served by aiohttp's server."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        if self.response is not None and self.response.prepared:
            return  # a streamed head is already out; the stream's own error handling cut it
        response = web.Response(
            status=status, reason=reason or None, headers=CIMultiDict(headers), body=body
        )
        if close:
            response.force_close()
        self.response = response

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        self.response = web.StreamResponse(
            status=status, reason=reason or None, headers=CIMultiDict(headers)
        )
        await self.response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()


def cache_handler(
    proxy: CachingProxy, settings: Settings
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler that hands every request to the cache through the seam."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = None
        if request.body_exists:
            body = RequestBody(
                request.content,
                limit=settings.max_body_bytes,
                idle_timeout=settings.client_body_timeout,
            )
        version = request.version
        exchange = ProxyRequest(
            request.method,
            request.raw_path,
            request.headers,
            body,
            request.remote or "",
            request.scheme,
            f"{version.major}.{version.minor}",
            request.host,
            protocol if isinstance(protocol := request.protocol, ProxyRequestHandler) else None,
        )
        responder = AiohttpResponder(request)
        request[RESULT_KEY] = await proxy.handle(exchange, responder)
        assert responder.response is not None
        return responder.response

    return handle


__all__ = [
    "RESULT_KEY",
    "AiohttpResponder",
    "ProxyRequestHandler",
    "ProxyRunner",
    "RequestBody",
    "RequestRejected",
    "cache_handler",
    "check_request",
    "handler_args",
    "request_guard",
]
