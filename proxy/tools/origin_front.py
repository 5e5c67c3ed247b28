"""What real origins put in front of an API, for the simulator: compression, ``Vary``, CORS.

Modelled on nginx with ``gzip on; gzip_vary on; gzip_types application/json text/plain;`` and
``add_header Vary Origin always;``: a body of a compressible type is sent in the best coding the
client accepts, with a weak ``ETag`` (as nginx weakens the tag of a body it compressed), and
``Vary: Accept-Encoding`` on every such 200 whatever the client asked; 304s are not touched by
the gzip filter, so with ``narrow_304_vary`` they carry only ``Vary: Origin``. With ``cors``,
``OPTIONS`` preflights are answered and every answer allows the requesting ``Origin``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.core.coding import compressible_type, encode, negotiate

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: nginx's ``gzip_min_length`` default.
MIN_LENGTH = 20
COMPRESSED_TYPES = ("application/json", "text/*", "application/x-subrip")
#: ``Prefer`` and ``Preference-Applied`` so a page on another origin can long-poll (RFC 7240);
#: ``Last-Event-ID`` and ``Cache-Control`` for an ``EventSource`` that reconnects.
PREFLIGHT_HEADERS = (
    "Authorization, Content-Type, If-None-Match, If-Modified-Since, Prefer, Last-Event-ID, "
    "Cache-Control"
)
EXPOSED_HEADERS = "ETag, Cache-Status, Age, Last-Modified, Preference-Applied"


@dataclass(frozen=True, slots=True)
class OriginFront:
    """Which front behaviours are on; all off is the plain simulator."""

    compress: tuple[str, ...] = ()
    narrow_304_vary: bool = False
    cors: bool = False

    @property
    def active(self) -> bool:
        return bool(self.compress) or self.cors


def _add_vary(response: web.StreamResponse, name: str) -> None:
    present = [item.strip().lower() for item in response.headers.get("Vary", "").split(",")]
    if name.lower() in present:
        return
    current = response.headers.get("Vary")
    response.headers["Vary"] = f"{current}, {name}" if current else name


def _weak(etag: str) -> str:
    return etag if etag.startswith("W/") else f"W/{etag}"


def preflight(request: web.Request) -> web.Response:
    """A CORS preflight (Fetch standard): allow the asking origin, methods and headers."""
    origin = request.headers.get("Origin", "*")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE",
            "Access-Control-Allow-Headers": PREFLIGHT_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


def front_middleware(front: OriginFront) -> Middleware:
    """The aiohttp middleware applying ``front`` to every API answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        if front.cors and request.method == "OPTIONS":
            return preflight(request)
        response = await handler(request)
        if not isinstance(response, web.Response):
            return response
        if front.compress:
            _compress(request, response, front)
        if front.cors:
            response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            _add_vary(response, "Origin")
        return response

    return middleware


def _compress(request: web.Request, response: web.Response, front: OriginFront) -> None:
    accept = request.headers.get("Accept-Encoding", "")
    coding = negotiate(accept, front.compress) if accept else None
    if response.status == 304:
        etag = response.headers.get("ETag")
        if etag is not None and coding is not None:
            response.headers["ETag"] = _weak(etag)
        if not front.narrow_304_vary:
            _add_vary(response, "Accept-Encoding")
        return
    body = response.body
    if (
        response.status != 200
        or not isinstance(body, bytes)
        or len(body) < MIN_LENGTH
        or not compressible_type(response.content_type, COMPRESSED_TYPES)
        or "Content-Encoding" in response.headers
    ):
        return
    _add_vary(response, "Accept-Encoding")
    if coding is None:
        return
    response.body = encode(coding, body)
    response.headers["Content-Encoding"] = coding
    etag = response.headers.get("ETag")
    if etag is not None:
        response.headers["ETag"] = _weak(etag)
