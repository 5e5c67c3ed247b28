"""``proxy.front.flow.FlowControl`` on its own, over real socket transports: the read pause,
the drain waiter, the send timeout and the connection's end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from proxy.front.flow import FlowControl

BOUND = 5.0  # seconds a test waits at most for an event that must come


class Sink(asyncio.Protocol):
    """A protocol whose write-side flow control is a ``FlowControl``."""

    def __init__(self, flow: FlowControl) -> None:
        self.flow = flow
        self.paused = asyncio.Event()

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.paused.set()

    def resume_writing(self) -> None:
        self.flow.resume_writing()


class Pair:
    def __init__(self, transport: asyncio.Transport, protocol: Sink, peer: socket.socket) -> None:
        self.transport = transport
        self.protocol = protocol
        self.peer = peer


@pytest.fixture
async def timed_out() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def pair(timed_out: asyncio.Event) -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flow = FlowControl(loop, 0.05, timed_out.set)
    transport, protocol = await loop.connect_accepted_socket(lambda: Sink(flow), ours)
    transport.set_write_buffer_limits(high=4096)  # type: ignore[attr-defined]
    yield Pair(transport, protocol, peer)  # type: ignore[arg-type]
    transport.abort()
    peer.close()


async def fill(pair: Pair) -> None:
    """Write until the transport pauses writing (the peer reads nothing)."""
    while not pair.protocol.paused.is_set():
        pair.transport.write(b"x" * 65536)
        await asyncio.sleep(0)


async def read_all(peer: socket.socket, until: asyncio.Future[None]) -> None:
    loop = asyncio.get_running_loop()
    while not until.done():
        try:
            await asyncio.wait_for(loop.sock_recv(peer, 65536), 0.01)
        except TimeoutError:
            continue


async def test_the_read_pause_reaches_the_transport_once(pair: Pair) -> None:
    flow = pair.protocol.flow
    assert pair.transport.is_reading()
    flow.pause_reading(pair.transport)
    flow.pause_reading(pair.transport)  # a second pause changes nothing
    assert flow.read_paused and not pair.transport.is_reading()
    flow.resume_reading(pair.transport)
    assert not flow.read_paused and pair.transport.is_reading()
    flow.resume_reading(pair.transport)
    assert pair.transport.is_reading()


async def test_drain_returns_at_once_while_writing_is_not_paused(pair: Pair) -> None:
    await asyncio.wait_for(pair.protocol.flow.drain(), BOUND)


async def test_a_full_transport_pauses_and_drain_waits_until_the_client_reads(
    pair: Pair, timed_out: asyncio.Event
) -> None:
    flow = pair.protocol.flow
    flow._send_timeout = BOUND * 4  # not cut while this test reads
    await fill(pair)
    assert flow.write_paused
    drained = asyncio.ensure_future(flow.drain())
    second = asyncio.ensure_future(flow.drain())  # two writers share the wait
    await asyncio.sleep(0)
    assert not drained.done()
    reader = asyncio.ensure_future(read_all(pair.peer, drained))
    await asyncio.wait_for(asyncio.gather(drained, second), BOUND)
    await reader
    assert not flow.write_paused
    assert not timed_out.is_set()


async def test_a_client_that_reads_nothing_is_timed_out(
    pair: Pair, timed_out: asyncio.Event
) -> None:
    await fill(pair)
    await asyncio.wait_for(timed_out.wait(), BOUND)


async def test_resume_disarms_the_send_timeout(timed_out: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    flow = FlowControl(loop, 0.01, timed_out.set)
    flow.pause_writing()
    flow.pause_writing()  # a second pause does not arm a second timer
    flow.resume_writing()
    # A callback due after the timeout's deadline: the loop runs timers in time order, so a
    # live timeout would have run before it.
    later = loop.create_future()
    loop.call_later(0.05, later.set_result, None)
    await asyncio.wait_for(later, BOUND)
    assert not timed_out.is_set()


async def test_close_fails_the_writer_waiting_and_disarms_the_timeout(
    timed_out: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    flow = FlowControl(loop, 0.01, timed_out.set)
    flow.pause_writing()
    waiting = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    flow.close(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiting, BOUND)
    later = loop.create_future()
    loop.call_later(0.05, later.set_result, None)
    await asyncio.wait_for(later, BOUND)
    assert not timed_out.is_set()
