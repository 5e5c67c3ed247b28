"""The seam to the origin: a pooled client, its answer and errors, and single-flight coalescing.

aiohttp is the client, and it stays behind this module: ``Upstream.fetch`` hands back an
``UpstreamResponse`` of our own (status, reason, fields as a multidict, the body read whole or
in chunks, release/close), and every failure of the origin becomes an ``UpstreamError``. So the
cache layer (``proxy.cache``) never imports aiohttp and could be driven by another client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Generic, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.core.headers import valid_field

T = TypeVar("T")
#: The most of a body held in memory at once while relaying it.
CHUNK = 2**16


class UpstreamError(Exception):
    """The origin could not give a usable answer: answered with ``status`` and an envelope
    carrying ``code``. ``kind`` is a bounded metric label."""

    kind, status, code = "error", 502, "UPSTREAM_ERROR"


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset or closed before a response: answered with 502."""

    kind, code = "refused", "UPSTREAM_UNAVAILABLE"


class UpstreamInvalid(UpstreamError):
    """The origin answered with something that is not valid HTTP, or a truncated body."""

    kind, code = "invalid", "UPSTREAM_INVALID_RESPONSE"


class UpstreamTimeout(UpstreamError):
    """No answer within the configured time: answered with 504 (RFC 9110 §15.6.5)."""

    kind, status, code = "timeout", 504, "UPSTREAM_TIMEOUT"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The client's knobs; the runtime fills them from ``Settings``, which holds the defaults."""

    base_url: str
    connect_timeout: float
    timeout: float
    max_connections: int
    pool_timeout: float


def translate_error(error: BaseException) -> UpstreamError:
    """Map aiohttp's exception tree onto ours, keeping the origin's details out of the message."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return UpstreamInvalid("the upstream sent an invalid response")
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionError | OSError):
        return UpstreamUnavailable("the upstream is unreachable")
    return UpstreamInvalid("the upstream sent an invalid response")


def standard_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class UpstreamResponse:
    """An origin's answer once its head has arrived; the body is still to be read.

    ``headers`` are the fields as received (a case-insensitive multidict, repeated fields kept).
    Whoever receives it reads the body (``read`` whole, or ``chunks``) and then ``release``s it
    (the connection returns to the pool) or ``close``s it (the connection is dropped, as after
    a failure or a body nobody will read). Reading raises ``UpstreamError`` only.
    """

    __slots__ = ("_response", "_timeout", "headers", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse, timeout: float) -> None:
        self._response = response
        self._timeout = timeout
        self.status = response.status
        reason = response.reason or ""
        if reason and not valid_field("reason", reason):
            # Our fronts refuse to send control characters: a stored entry carrying this
            # reason could never be served again.
            reason = standard_reason(response.status)
        self.reason = reason
        self.headers: CIMultiDictProxy[str] = response.headers

    @property
    def content_length(self) -> int | None:
        """The ``Content-Length`` the origin announced, if any."""
        return self._response.content_length

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (one more byte signals "too large")."""
        try:
            async with asyncio.timeout(self._timeout):
                chunks: list[bytes] = []
                size = 0
                while size <= limit:
                    chunk = await self._response.content.read(min(CHUNK, limit + 1 - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return b"".join(chunks)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._response.close()
            raise translate_error(error) from error

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body chunk by chunk (at most ``CHUNK`` bytes each), as it arrives."""
        iterator = self._response.content.iter_chunked(CHUNK).__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except (TimeoutError, aiohttp.ClientError) as error:
                raise translate_error(error) from error
            yield chunk

    def release(self) -> None:
        """Done with the answer: its connection may serve the next request."""
        self._response.release()

    def close(self) -> None:
        """Drop the answer's connection (its body will not be read to the end)."""
        self._response.close()


class Upstream:
    """One pooled, keep-alive client session to the origin.

    Redirects are not followed, bodies are not decompressed, cookies are not kept (a shared
    cookie jar would leak one caller's session to the next) and no default headers are added.
    """

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base = URL(config.base_url.rstrip("/"))
        self.origin_hosts = frozenset({self.base.raw_authority.lower(), self.base.raw_host or ""})
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections,
            keepalive_timeout=30,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # aiohttp's ``connect`` covers waiting for a free pooled connection *and* connecting;
            # ``sock_connect`` only the latter. Waiting in the pool is queueing, not a failing
            # origin, so it gets its own bound (--upstream-pool-timeout) on top of connecting.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.pool_timeout + self.config.connect_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.timeout,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            read_bufsize=2**16,
        )

    @property
    def ready(self) -> bool:
        return self._session is not None and not self._session.closed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url_for(self, target: str) -> URL:
        """The origin URL for a request-target, byte for byte (no normalisation of the path)."""
        return URL(str(self.base) + target, encoded=True)

    async def fetch(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: AsyncIterable[bytes] | bytes | None = None,
    ) -> UpstreamResponse:
        """Send one request and return the response once its head has arrived.

        The caller reads or releases the body. Raises ``UpstreamError``.
        """
        if self._session is None:
            raise UpstreamUnavailable("the upstream session is not open")
        config = self.config
        bound = config.pool_timeout + config.connect_timeout + config.timeout
        try:
            async with asyncio.timeout(bound):
                response = await self._session.request(
                    method,
                    self.url_for(target),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise translate_error(error) from error
        return UpstreamResponse(response, config.timeout)


class SingleFlight(Generic[T]):
    """Run at most one task per key; concurrent callers share its outcome.

    The task runs detached from its callers: a caller that goes away (a disconnecting client)
    cancels nothing for the others, and the task finishes even if nobody waits any more.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}
        self._joined: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def waiting(self) -> int:
        """Callers that joined a flight still under way (the leaders included)."""
        return sum(self._joined.values())

    def join(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[asyncio.Task[T], bool]:
        """The flight for ``key``, started if none is under way, and whether this call led it.

        Callers await it through ``asyncio.shield`` so that leaving cancels only themselves.
        """
        task = self._flights.get(key)
        if task is not None:
            self._joined[key] += 1
            return task, False
        task = asyncio.ensure_future(factory())
        self._flights[key] = task
        self._joined[key] = 1
        task.add_done_callback(lambda done: self._land(key, done))
        return task, True

    def _land(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
            del self._joined[key]
        if not task.cancelled():
            task.exception()  # retrieved, so an unawaited failure is not reported as lost

    async def cancel_all(self) -> None:
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
