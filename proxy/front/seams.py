"""The types the front's parts know each other by, so that imports flow one way.

A connection needs a few things of the listener that owns it (``Host``), the fast path and the
responders need a few things of a connection (``Client``); each side is typed by what it uses,
not by the other's class. ``proxy.front.server`` builds the concrete objects and is the only
module that imports them all: connection, prepared and responder import none of each other.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Protocol

from proxy.cache.exchange import Responder

if TYPE_CHECKING:
    from proxy.front.head import Parsed
    from proxy.ops.config import Settings
    from proxy.ops.timers import DeadlineWheel


class Writer(Protocol):
    """What an answer is written to: whole, or streamed with back-pressure."""

    @property
    def peer(self) -> str: ...

    def write_response(self, head: bytes, body: bytes) -> None: ...

    async def write_stream(self, *parts: bytes) -> None: ...

    def abort(self) -> None: ...


class Requester(Protocol):
    """Where a request came from, as the cache needs it: the peer, and when it went away."""

    @property
    def peer(self) -> str: ...

    def disconnected(self) -> asyncio.Future[None]: ...


class Reply(Responder, Protocol):
    """A ``Responder`` that tells the access log what it sent."""

    status: int
    sent: int


class Client(Protocol):
    """A client connection as the listener sees it (HTTP/1.1 or HTTP/2): the cap, draining."""

    @property
    def peer(self) -> str: ...

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def lost(self) -> bool: ...

    @property
    def waiting(self) -> bool:
        """Waiting for a request head: the first to go past the connection cap."""

    @property
    def idle(self) -> bool:
        """No answer owed or being written."""

    @property
    def head_deadline(self) -> float: ...

    def evict(self) -> None: ...

    def drain(self) -> None:
        """The listener is closing: take no new request, close once idle."""

    def disconnected(self) -> asyncio.Future[None]: ...

    def abort(self) -> None: ...


class HttpClient(Client, Writer, Protocol):
    """An HTTP/1.1 connection: a ``Client`` its answers are written to."""


#: What parsing a head memoised by its bytes found (``FastAnswers.remember``): method, target,
#: Host, credential fields, ``If-None-Match`` and ``Accept-Encoding``.
HeadValues = tuple[str, str, str, "tuple[tuple[bytes, str], ...]", "str | None", "str | None"]


class FastAnswers(Protocol):
    """The fast path of a common hit (``proxy.front.prepared.FastPath``)."""

    def answer(
        self, conn: Writer, method: str, target: str, host: str,
        credentials: tuple[tuple[bytes, str], ...], inm: str | None, accept_encoding: str | None,
        keep_alive: bool, version: str, started: float, parsed: Parsed | None,
    ) -> bool:  # fmt: skip
        """A plain GET or HEAD from its parsed values (and the parsed head when there is one);
        true when it answered."""

    def serve(self, conn: Writer, parsed: Parsed) -> bool: ...

    def answer_head(self, conn: Writer, raw: bytes) -> bool:
        """A head answered before by its exact bytes ``raw``; false if unknown or declined."""

    def remember(self, head: bytes, values: HeadValues) -> None: ...


class Host(Protocol):
    """What a connection needs of the listener that accepted it (``proxy.front.server.Front``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def tls(self) -> ssl.SSLContext | None: ...

    @property
    def scheme(self) -> str: ...

    @property
    def credential_names(self) -> frozenset[bytes]: ...

    @property
    def fast(self) -> FastAnswers | None: ...

    @property
    def draining(self) -> bool: ...

    @property
    def heads(self) -> DeadlineWheel:
        """The header timeouts of the listener's connections."""

    def admit(self, conn: Client) -> bool: ...

    def forget(self, conn: Client) -> None: ...

    def track(self, task: asyncio.Task[None]) -> None: ...

    def timed_out(self, phase: str) -> None: ...

    async def answer(self, conn: HttpClient, parsed: Parsed) -> bool: ...

    async def respond(self, requester: Requester, parsed: Parsed, responder: Reply) -> bool: ...

    def http2(self, conn: Client, data: bytes) -> None:
        """Hand ``conn`` over to HTTP/2 (ALPN h2, or the preface in ``data``)."""

    def http2_error(self, reason: str) -> None: ...
