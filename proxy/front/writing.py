"""The write side of an HTTP/1.1 connection: whole responses in slices, streamed parts, and the
transport's flow control (``pause_writing`` / ``resume_writing``) moving ``WriteState``.

A mixin of ``proxy.front.connection.HttpConnection``, slotted (it holds the write side's own
slots), kept apart so the read side and the answering order read on their own.
"""

from __future__ import annotations

import asyncio

from proxy.front.flow import FlowControl
from proxy.front.states import AnswerState, WriteState

#: A body at most this large is written in one call; larger ones go out in slices of it, so a
#: client that does not read never makes the proxy hold more than one slice of a shared body.
SLICE = 2**16

W_IDLE, W_WRITING, W_DRAINING, W_CLOSED = (
    WriteState.IDLE, WriteState.WRITING, WriteState.DRAINING, WriteState.CLOSED,
)  # fmt: skip
A_BUSY = AnswerState.BUSY


class ResponseWriting(asyncio.Protocol):
    """What writes answers to ``transport``; ``_next`` answers the next queued request."""

    __slots__ = ("_offset", "_pending", "write")

    write: WriteState
    _pending: memoryview | None
    _offset: int

    transport: asyncio.Transport
    answering: AnswerState
    flow: FlowControl

    def _next(self) -> None:
        raise NotImplementedError

    def write_response(self, head: bytes, body: bytes) -> None:
        """A whole response; a large body is written in slices as the client reads."""
        if self.write is W_CLOSED:
            return
        if len(body) <= SLICE:
            if body:
                self.transport.writelines((head, body))
            else:
                self.transport.write(head)
            return
        self.transport.write(head)
        self._pending = memoryview(body)
        self._offset = 0
        if self.write is W_IDLE:
            self.write = W_WRITING
        self._pump()

    def _pump(self) -> None:
        pending = self._pending
        while pending is not None and self.write is W_WRITING:
            end = self._offset + SLICE
            self.transport.write(pending[self._offset : end])
            self._offset = end
            if end >= len(pending):
                self._pending = pending = None
                if self.write is W_WRITING:
                    self.write = W_IDLE
                if self.answering is A_BUSY:
                    self._next()  # the next request; or closed, or idle, once it is out

    async def write_stream(self, *parts: bytes) -> None:
        """Part of a streamed response; waits (up to the send timeout) while the client lags."""
        if self.write is W_CLOSED:
            raise ConnectionResetError("the client closed the connection")
        self.transport.writelines(parts)
        await self.flow.drain()

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self.write is not W_CLOSED:
            self.write = W_DRAINING

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.write is not W_DRAINING:
            return
        if self._pending is not None:
            self.write = W_WRITING
            self._pump()
        else:
            self.write = W_IDLE
            if self.answering is A_BUSY:
                self._next()  # the next request, or idle once the last answer is out
