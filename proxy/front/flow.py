"""Flow control of one client connection, in both directions (after uvicorn's ``FlowControl``).

Reading is paused while requests queue or a request body is not being read, so a pipelining or
uploading client is held back by TCP rather than by our memory. Writing follows the transport's
``pause_writing`` / ``resume_writing``: a streamed answer waits in ``drain`` while the client lags,
and a client that reads nothing for ``--client-send-timeout`` is cut (nginx ``send_timeout``).
The object knows no HTTP: the connection decides when to read, this one only keeps the
transport's state and the waiters, so each direction's rules can be tested without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from proxy.front.waiters import settle


class Pausable(Protocol):
    """What flow control needs of a transport (the TLS one replaces the first mid-connection,
    so it is passed on each call rather than kept)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """The read and write pauses of one connection, the drain waiter and the send timer."""

    __slots__ = ("_loop", "_on_timeout", "_send_timeout", "_timer", "_waiter", "read_paused",
                 "write_paused")  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send_timeout: float,
        on_timeout: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._send_timeout = send_timeout
        self._on_timeout = on_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Whether we asked the transport to stop reading.
        self.read_paused = False
        #: Whether the transport asked us to stop writing (its buffer is over the high mark).
        self.write_paused = False

    # -- reading ----------------------------------------------------------------------------

    def pause_reading(self, transport: Pausable) -> None:
        if not self.read_paused:
            self.read_paused = True
            transport.pause_reading()

    def resume_reading(self, transport: Pausable) -> None:
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    # -- writing ----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: arm the send timeout until it drains."""
        self.write_paused = True
        if self._timer is None:
            self._timer = self._loop.call_later(self._send_timeout, self._timed_out)

    def resume_writing(self) -> None:
        """The transport's buffer drained: disarm the timeout, wake the writer waiting."""
        self.write_paused = False
        self._cancel_timer()
        self._wake(None)

    async def drain(self) -> None:
        """Wait while writing is paused (``resume_writing`` or ``close`` ends the wait)."""
        if self.write_paused:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def close(self, error: Exception) -> None:
        """The connection is gone: no timer, and a writer waiting to drain gets ``error``."""
        self._cancel_timer()
        self._wake(error)

    def _timed_out(self) -> None:
        self._timer = None
        self._on_timeout()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self, error: Exception | None) -> None:
        waiter, self._waiter = self._waiter, None
        settle(waiter, error)
