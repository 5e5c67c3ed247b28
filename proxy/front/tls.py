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
from typing import Protocol

log = logging.getLogger("proxy.server")


class Securable(Protocol):
    """The connection a handshake runs for (``proxy.front.connection.HttpConnection``)."""

    transport: asyncio.Transport
    lost: bool
    peer: str

    def connection_lost(self, exc: Exception | None) -> None: ...


class Handshake:
    """One server-side TLS handshake on an admitted connection; ``cut`` ends it."""

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
        conn.transport.pause_reading()  # nothing of the handshake reaches the HTTP parser
        self.task = loop.create_task(self._run(loop, protocol, context, timeout))

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        conn = self.conn
        try:
            secured = await loop.start_tls(
                conn.transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
            )
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

    def cut(self) -> None:
        """Close a connection still in its handshake: the loop's TLS layer does not always
        report the loss of a connection it has not finished (uvloop)."""
        self.task.cancel()
        self._end(None)

    def _end(self, error: Exception | None) -> None:
        conn = self.conn
        conn.transport.abort()
        if not conn.lost:
            conn.connection_lost(error)
