"""TLS started by a connection once it is admitted, so a handshake is a connection like any other.

asyncio's ``create_server(ssl=...)`` hands a connection to its protocol only after the
handshake: until then it is invisible to ``--max-connections`` and to the header timeout, and a
descriptor limit fills with silent handshakes. Here the listener is plain TCP, the connection is
counted at accept, and it upgrades itself with ``loop.start_tls`` (RFC 8446), bounded by
``--client-header-timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, Protocol

log = logging.getLogger("proxy.server")


class Securable(Protocol):
    """The connection a handshake runs for (``proxy.front.connection.HttpConnection``)."""

    transport: asyncio.Transport
    peer: str

    @property
    def lost(self) -> bool: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def hand_over(self, data: bytes) -> None: ...


class Handshake:
    """One server-side TLS handshake on an admitted connection; ``cut`` ends it.

    ``loop.start_tls`` is run up to its wait for the handshake at once, inside the connection's
    ``connection_made``: that first step swaps the transport's protocol for the TLS one, so no
    byte of the handshake can reach the HTTP parser (uvloop resumes reading as soon as
    ``connection_made`` returns; the TLS protocol keeps what arrives until it starts). A task
    then waits for the handshake and hands the connection its TLS transport.
    """

    def __init__(
        self,
        conn: Securable,
        protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.conn = conn
        self.done = False
        #: Requests decrypted before this task resumed with the TLS transport: the connection
        #: holds them here (it could only answer them in clear), then they are parsed in order.
        self.early: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        starting = loop.start_tls(
            conn.transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
        )
        try:
            waiter = starting.send(None)
        except BaseException as error:  # refused at once (no handshake was started)
            self.done = True
            loop.call_soon(self._end, error if isinstance(error, Exception) else None)
            return
        if not isinstance(waiter, asyncio.Future):
            starting.close()
            self.done = True
            loop.call_soon(self._end, None)
            return
        self.task = loop.create_task(self._finish(starting, waiter))

    async def _finish(
        self, starting: Coroutine[Any, Any, Any], waiter: asyncio.Future[Any]
    ) -> None:
        conn = self.conn
        try:
            try:
                await asyncio.wait((waiter,))
            except asyncio.CancelledError:
                starting.close()  # start_tls closes what it opened
                raise
            try:
                starting.send(None)
            except StopIteration as stop:
                secured = stop.value
            else:
                starting.close()
                raise RuntimeError("start_tls waited twice")
        except Exception as error:  # a failed handshake is the client's, whatever its kind
            log.debug("TLS handshake with %s failed: %s", conn.peer, type(error).__name__)
            self._end(error)
            return
        finally:
            self.done = True
        if secured is None:
            # Closed during the handshake: asyncio tells the protocol nothing of a connection
            # that never carried TLS data.
            self._end(None)
            return
        conn.transport = secured
        early, self.early = self.early, []
        ssl_object = secured.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            conn.hand_over(b"".join(early))  # HTTP/2 by ALPN (RFC 9113 §3.2)
            return
        for data in early:
            if conn.lost:
                break
            conn.data_received(data)

    def cut(self) -> None:
        """Close a connection still in its handshake: the loop's TLS layer does not always
        report the loss of a connection it has not finished (uvloop)."""
        self.done = True
        if self.task is not None:
            self.task.cancel()
        self._end(None)

    def _end(self, error: Exception | None) -> None:
        conn = self.conn
        conn.transport.abort()
        if not conn.lost:
            conn.connection_lost(error)


def cut_handshake(handshake: Handshake | None) -> bool:
    """Cut a connection still in its TLS handshake; whether it was one."""
    if handshake is None or handshake.done:
        return False
    handshake.cut()
    return True
