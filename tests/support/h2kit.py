"""A raw HTTP/2 client on a real socket for hostile tests: python-hyper's h2 as the client state
machine where it will send what a test needs, hand-made frames (hyperframe) where it will not."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import Frame

from tests.support.rawkit import HOST


class H2Client:
    """One prior-knowledge (h2c) connection; ``events`` gathers everything the server sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.events: list[h2.events.Event] = []
        self.closed = False

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None) -> H2Client:
        reader, writer = await asyncio.open_connection(HOST, port)
        client = cls(reader, writer)
        client.h2.initiate_connection()
        if settings:
            client.h2.update_settings(settings)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def raw(self, *frames: Frame) -> None:
        """Frames the client state machine would refuse to send, written as they are."""
        self.writer.write(b"".join(frame.serialize() for frame in frames))

    def request(
        self, path: str, *extra: tuple[str, str], method: str = "GET", end: bool = True
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"),
                   (":authority", "proxy.test"), *extra]  # fmt: skip
        self.h2.send_headers(sid, headers, end_stream=end)
        return sid

    async def read(self, timeout: float = 10.0) -> list[h2.events.Event]:
        """One read's worth of events; ``closed`` once the server closed the connection."""
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.h2.receive_data(data)
        self.events.extend(events)
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        await self.flush()
        return events

    async def until(self, done: Any, timeout: float = 10.0) -> None:
        """Read until ``done(self)`` holds or the connection closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self) and not self.closed:
            await self.read(max(0.01, deadline - loop.time()))

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        found = self.of(h2.events.ConnectionTerminated)
        return found[0] if found else None

    def response(self, sid: int) -> tuple[dict[bytes, bytes], bytes, bool]:
        """(head, body, ended) of stream ``sid`` so far."""
        head: dict[bytes, bytes] = {}
        body = b""
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != sid:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                head = dict(event.headers or [])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data or b""
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        return head, body, ended

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
