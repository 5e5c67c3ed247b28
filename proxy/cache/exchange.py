"""The seam between a client-facing front and the cache: a request value and a responder.

The cache layer reads a ``ProxyRequest`` and writes its answer to a ``Responder``; it never
sees the server's own request and response types, so any front (our own HTTP/1.1 protocol, or
another server) can carry it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.policy import cache_status
from proxy.upstream import UpstreamError

#: The request's header fields as received (names case-insensitive, repeated fields kept).
RequestHeaders = CIMultiDict[str] | CIMultiDictProxy[str]
#: Response fields in order, as ``(name, value)`` pairs.
Fields = list[tuple[str, str]] | tuple[tuple[str, str], ...]

_TRANSCRIPTIONS = "/v1/audio/transcribe/"
_TRANSCRIPTION = re.compile(r"^/v1/audio/transcribe/[^/]+/?$")
_TRANSCRIPTION_RESOURCE = re.compile(r"^/v1/audio/transcribe/[^/]+/.+")


def route_of(path: str) -> str:
    """The bounded ``route`` label of a path (never the path itself)."""
    if not path.startswith(_TRANSCRIPTIONS):
        return "other"
    if _TRANSCRIPTION.match(path):
        return "transcription"
    if _TRANSCRIPTION_RESOURCE.match(path):
        return "transcription_resource"
    return "other"


class RequestRejected(Exception):
    """A request the proxy refuses on the client's account (4xx), answered with the envelope."""

    def __init__(self, status: int, code: str, message: str, *, headers: Fields = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        #: Fields the refusal needs besides the envelope's (``Allow`` on a 405).
        self.headers = headers


def envelope(code: str, message: str) -> bytes:
    """The API's own error body, so clients parse proxy errors like upstream ones."""
    return json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()


class Connection(Protocol):
    """The client connection a request came on, as far as a held request needs it."""

    def disconnected(self) -> asyncio.Future[None]:
        """Done once the client has gone away."""


class Body(Protocol):
    """A request body as it streams in; ``rejected`` says why it was cut short, if it was."""

    rejected: RequestRejected | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...


@dataclass(slots=True)
class ProxyRequest:
    """One client request as the cache needs it; ``target`` is the raw origin-form target.

    ``connection`` tells a held request (``Prefer: wait``) of a disconnect, where the front can.
    """

    method: str
    target: str
    headers: RequestHeaders
    body: Body | None
    peer: str
    scheme: str
    version: str
    host: str
    connection: Connection | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class Responder(Protocol):
    """Where the cache writes its answer: whole (``send``) or streamed (``start``/``write``)."""

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        """A complete response; the front adds ``Content-Length`` and omits the body for HEAD."""

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        """The head of a streamed response (``Content-Length`` if given, else chunked)."""

    async def write(self, chunk: bytes) -> None:
        """Part of a streamed body; waits while the client is not reading."""

    async def finish(self) -> None:
        """The end of a streamed body."""

    def abort(self) -> None:
        """Cut the connection: the only honest signal once a head was sent and the body fails."""


@dataclass(slots=True)
class SharedAnswer:
    """One response written to many requests as they are (the waiters one change wakes): the
    front serialises its head once per framing (keep-alive, HTTP/1.0, HEAD) and keeps it in
    ``wire``, so each further request costs one write, never another serialisation."""

    status: int
    reason: str
    headers: Fields
    body: bytes
    wire: dict[object, bytes] = field(default_factory=dict)


class Deferring(Protocol):
    """What a front's responder may offer besides ``Responder``: an answer written after the
    handler returned (a held long poll, parked without a task), and shared answers."""

    def defer(self) -> Callable[[str], None] | None:
        """The request will be answered later, outside the handler: returns what to call with
        the cache result label once it is (``None``: this front cannot; await instead)."""

    def send_shared(self, answer: SharedAnswer) -> None:
        """``send`` of a response shared with other requests."""

    def send_shared_all(self, responders: Sequence[object], answer: SharedAnswer) -> list[object]:
        """``send_shared`` to each of ``responders`` (responders of this one's class) at once:
        the waiters one change wakes, in one loop; returns those whose write failed."""


def send_error(
    responder: Responder, status: int, code: str, message: str, cache_status: str | None
) -> None:
    """Answer with the API's error envelope (and ``Cache-Status`` when the cache decided it)."""
    headers: list[tuple[str, str]] = [("Content-Type", "application/json; charset=utf-8")]
    if cache_status is not None:
        headers.append(("Cache-Status", cache_status))
    responder.send(status, "", headers, envelope(code, message))


def send_rejected(responder: Responder, rejected: RequestRejected) -> None:
    """A refused request: the rest of it may still be in flight, so the connection closes."""
    headers = [("Content-Type", "application/json"), *rejected.headers]
    body = envelope(rejected.code, str(rejected))
    responder.send(rejected.status, "", headers, body, close=True)


def send_upstream_error(responder: Responder, error: UpstreamError) -> None:
    """The origin gave no usable answer and nothing stored stands in: 502 or 504 (RFC 9110
    §15.6.3, §15.6.5) with the envelope, the failure's kind in ``Cache-Status``."""
    status = cache_status(fwd="uri-miss", detail=error.kind)
    send_error(responder, error.status, error.code, str(error), status)


async def send_stream(
    responder: Responder,
    status: int,
    reason: str,
    headers: Fields,
    body: AsyncGenerator[bytes, None],
) -> None:
    """A response whose body is made as it goes (server-sent events): each chunk is written as
    soon as it is made, and a client that goes away ends the body (``aclose``)."""
    try:
        await responder.start(status, reason, headers)
        async with aclosing(body) as chunks:
            async for chunk in chunks:
                await responder.write(chunk)
        await responder.finish()
    except ConnectionError:
        pass  # the client left: nothing is owed to it
