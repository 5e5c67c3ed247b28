"""Hostile HTTP/2 clients on real sockets: each gets GOAWAY or RST_STREAM, never a traceback,
and the proxy goes on serving everyone else in bounded memory.

Rapid reset (CVE-2023-44487), CONTINUATION floods, HPACK bombs, zero windows, SETTINGS, PING and
empty DATA floods, streams past the limit, malformed requests and idle connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, SettingsFrame

from proxy.ops.config import Settings
from tests.conftest import ServeOrigin
from tests.front.test_front import Origin
from tests.support.h2kit import H2Client
from tests.support.rawkit import RunningProxy, get_ok, serve_proxy
from tests.support.waiting import eventually


@pytest.fixture
async def running(
    caplog: pytest.LogCaptureFixture, serve_origin: ServeOrigin
) -> AsyncIterator[RunningProxy]:
    """A proxy before ``tests.test_front``'s origin (``/slow`` waits for its gate); at the end,
    no traceback was logged and a well-behaved client is still served."""
    caplog.set_level(logging.INFO)
    origin = Origin()
    url = await serve_origin(origin.handle)
    settings = Settings(
        upstream=url, http2_max_streams=10, client_send_timeout=0.5, max_header_bytes=4096
    )
    async with serve_proxy(settings) as proxy:
        proxy.origin = origin  # type: ignore[attr-defined]
        yield proxy
        assert await get_ok(proxy.url) == 200
        origin.gate.set()
    ours = [r for r in caplog.records if r.name.startswith(("proxy", "asyncio"))]
    assert not [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]


def errors(proxy: RunningProxy, code: str) -> float:
    value = proxy.registry.get_sample_value("cacheproxy_http2_errors_total", {"code": code})
    return value or 0.0


async def goaway_of(client: H2Client) -> int:
    await client.until(lambda c: c.goaway() is not None)
    event = client.goaway()
    assert event is not None, "no GOAWAY"
    await client.until(lambda c: False, timeout=5)  # then the server closes
    assert client.closed
    return int(event.error_code or 0)


async def test_rapid_reset_is_goaway_enhance_your_calm(running: RunningProxy) -> None:
    client = await H2Client.connect(running.port)
    for _ in range(1000):
        sid = client.request("/slow")
        client.h2.reset_stream(sid, ErrorCodes.CANCEL)
        await client.flush()
        if client.writer.is_closing():
            break
    assert await goaway_of(client) == ErrorCodes.ENHANCE_YOUR_CALM
    assert errors(running, "enhance_your_calm") == 1
    # Reset streams were never more than http2_max_streams answers at once (origin unaffected).
    assert len(running.origin.seen) <= 10  # type: ignore[attr-defined]


async def test_streams_still_being_answered_count_after_a_reset(running: RunningProxy) -> None:
    """Resetting a stream frees its place in SETTINGS_MAX_CONCURRENT_STREAMS, not the work it
    started: until its answer ends, a new stream past the limit is refused."""
    client = await H2Client.connect(running.port)
    for _ in range(10):
        client.h2.reset_stream(client.request("/slow"), ErrorCodes.CANCEL)
    await client.flush()
    await eventually(lambda: len(running.origin.seen) == 1)  # type: ignore[attr-defined]
    refused = client.request("/other")
    await client.flush()
    await client.until(lambda c: any(e.stream_id == refused for e in c.of(h2.events.StreamReset)))
    reset = next(e for e in client.of(h2.events.StreamReset) if e.stream_id == refused)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM
    running.origin.gate.set()  # type: ignore[attr-defined]
    assert running.server is not None and running.server.front is not None
    (connection,) = running.server.front.connections
    await eventually(lambda: connection.idle, what="the reset streams' answers to end")
    later = client.request("/after")
    await client.flush()
    await client.until(lambda c: c.response(later)[2])
    assert client.response(later)[0][b":status"] == b"200"
    await client.close()


async def test_a_continuation_flood_is_goaway(running: RunningProxy) -> None:
    client = await H2Client.connect(running.port)
    block = Encoder().encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                              (":authority", "x")])  # fmt: skip
    frames = [HeadersFrame(1, data=block, flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, data=b"\x40\x01a\x01b" * 2000) for _ in range(200)]
    client.raw(*frames)
    assert await goaway_of(client) == ErrorCodes.PROTOCOL_ERROR


async def test_an_hpack_bomb_is_goaway(running: RunningProxy) -> None:
    """One 4000-byte field indexed once, then named 50 times at one byte each: 200 KB of
    header list from a few KB on the wire, past SETTINGS_MAX_HEADER_LIST_SIZE."""
    client = await H2Client.connect(running.port)
    await client.until(lambda c: c.of(h2.events.RemoteSettingsChanged) != [])
    encoder = Encoder()
    head = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    first = encoder.encode([*head, ("x-bomb", "b" * 3000)])
    bomb = encoder.encode([*head, *[("x-bomb", "b" * 3000)] * 50])
    assert len(bomb) < 200
    client.raw(
        HeadersFrame(1, data=first, flags=["END_STREAM", "END_HEADERS"]),
        HeadersFrame(3, data=bomb, flags=["END_STREAM", "END_HEADERS"]),
    )
    assert await goaway_of(client) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_more_fields_than_http11_takes_is_431_on_that_stream(origin_url: str) -> None:
    async with serve_proxy(Settings(upstream=origin_url)) as proxy:
        client = await H2Client.connect(proxy.port)
        sid = client.request("/x", *[(f"x-f{i}", "v") for i in range(130)])
        await client.flush()
        await client.until(lambda c: c.response(sid)[2])
        assert client.response(sid)[0][b":status"] == b"431"
        assert client.goaway() is None
        await client.close()


async def test_a_zero_window_stream_is_reset_after_the_send_timeout(running: RunningProxy) -> None:
    client = await H2Client.connect(running.port, {SettingCodes.INITIAL_WINDOW_SIZE: 0})
    await client.until(lambda c: c.of(h2.events.SettingsAcknowledged) != [])
    sid = client.request("/big")
    await client.flush()
    await client.until(lambda c: any(e.stream_id == sid for e in c.of(h2.events.StreamReset)))
    reset = next(e for e in client.of(h2.events.StreamReset) if e.stream_id == sid)
    assert reset.error_code == ErrorCodes.CANCEL
    assert client.response(sid)[0][b":status"] == b"200" and client.response(sid)[1] == b""
    sample = running.registry.get_sample_value(
        "cacheproxy_client_timeouts_total", {"phase": "send"}
    )
    assert sample == 1
    await client.close()


@pytest.mark.parametrize(
    "flood",
    [
        lambda: SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 10}),
        lambda: PingFrame(0, opaque_data=b"12345678"),
    ],
    ids=["settings", "ping"],
)
async def test_control_frame_floods_are_goaway(running: RunningProxy, flood: object) -> None:
    client = await H2Client.connect(running.port)
    client.raw(*(flood() for _ in range(2000)))  # type: ignore[operator]
    assert await goaway_of(client) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_an_empty_data_flood_is_goaway(running: RunningProxy) -> None:
    client = await H2Client.connect(running.port)
    sid = client.request("/upload", method="POST", end=False)
    await client.flush()
    client.raw(*(DataFrame(sid, data=b"") for _ in range(2000)))
    assert await goaway_of(client) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_a_malformed_request_is_goaway_protocol_error(running: RunningProxy) -> None:
    client = await H2Client.connect(running.port)
    block = Encoder().encode([(":method", "GET"), (":scheme", "http"), ("Upper", "x")])
    client.raw(HeadersFrame(1, data=block, flags=["END_STREAM", "END_HEADERS"]))
    assert await goaway_of(client) == ErrorCodes.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (b"\x00\x00\x00\x00\x00\x00\x00\x00\x00", ErrorCodes.PROTOCOL_ERROR),  # DATA on stream 0
        # A header announcing a 16 MiB frame, then more than a whole allowed frame of it: not
        # buffered until the 16 MiB arrive.
        (b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 20_000, ErrorCodes.FRAME_SIZE_ERROR),
    ],
    ids=["data-on-stream-0", "oversized-frame"],
)
async def test_bad_frames_after_the_preface_are_goaway(
    running: RunningProxy, frames: bytes, code: int
) -> None:
    client = await H2Client.connect(running.port)
    client.writer.write(frames)
    assert await goaway_of(client) == code


async def test_an_idle_connection_gets_goaway_no_error(origin_url: str) -> None:
    settings = Settings(upstream=origin_url, client_header_timeout=0.3)
    async with serve_proxy(settings) as proxy:
        client = await H2Client.connect(proxy.port)
        assert await goaway_of(client) == ErrorCodes.NO_ERROR
        await eventually(lambda: proxy.connections == 0)


async def test_connections_count_against_max_connections(origin_url: str) -> None:
    settings = Settings(upstream=origin_url, max_connections=2)
    async with serve_proxy(settings) as proxy:
        clients = [await H2Client.connect(proxy.port) for _ in range(2)]
        for client in clients:
            sid = client.request("/slow")
            await client.flush()
        await eventually(lambda: proxy.connections == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 503")
        writer.close()
        assert sid
        for client in clients:
            await client.close()


@pytest.fixture
async def origin_url(serve_origin: ServeOrigin) -> AsyncIterator[str]:
    origin = Origin()
    yield await serve_origin(origin.handle)
    origin.gate.set()  # /slow answers, so the origin closes at once
