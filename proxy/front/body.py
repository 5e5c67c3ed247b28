"""A request body as it arrives on the connection: bounded, paced, and read once."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from proxy.cache.exchange import RequestRejected

#: Buffered body bytes past which the connection stops reading until the handler catches up.
HIGH_WATER = 2**16


def too_large() -> RequestRejected:
    return RequestRejected(413, "CONTENT_TOO_LARGE", "The request body is too large.")


class BodyStream:
    """Chunks fed by the parser, read by whoever forwards the request.

    ``rejected`` says why the stream ended early (413 over ``limit``, 408 after ``idle_timeout``
    without a chunk). With ``Expect: 100-continue`` the interim answer goes out on the first read,
    so a client is only invited to send a body someone is about to read (RFC 9110 §10.1.1).
    """

    def __init__(
        self,
        *,
        limit: int,
        idle_timeout: float,
        continue_: Callable[[], None] | None,
        reading: Callable[[bool], None],
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._size = 0
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._continue = continue_
        self._reading = reading
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.failed: BaseException | None = None
        self.rejected: RequestRejected | None = None

    # -- parser side ----------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; False once the body is over its limit (the caller stops parsing)."""
        self._size += len(chunk)
        if self._size > self._limit:
            self.rejected = too_large()
            self._wake()
            return False
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._reading(False)
        self._wake()
        return True

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def reject(self, rejected: RequestRejected) -> None:
        self.rejected = rejected
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.failed = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- reader side ----------------------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._continue is not None:
            self._continue()
            self._continue = None
        while True:
            if self.rejected is not None:
                raise self.rejected
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= HIGH_WATER // 2:
                    self._reading(True)
                yield chunk
                continue
            if self.complete:
                return
            if self.failed is not None:
                raise ConnectionResetError("the client went away while sending the body")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._idle_timeout):
                    await self._waiter
            except TimeoutError:
                self.rejected = RequestRejected(
                    408, "REQUEST_TIMEOUT", "The request body did not arrive in time."
                )
                raise self.rejected from None
            finally:
                self._waiter = None
