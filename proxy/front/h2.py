"""One HTTP/2 client connection (RFC 9113) on python-hyper's sans-IO ``h2``: framing, HPACK,
stream states and flow-control windows are the library's, the limits and the scheduling ours.

A connection becomes HTTP/2 when TLS negotiates ALPN ``h2`` or, on a plain port, when its first
bytes are the client preface (prior knowledge, §3.3); ``HttpConnection`` counted it, timed its
handshake and hands it over here (``Front.http2``), so ``--max-connections`` counts it as one.
Each stream is answered by ``Front.respond`` exactly as an HTTP/1.1 request is
(``proxy.front.h2_stream``). Limits, each past its bound answered with RST_STREAM or GOAWAY,
never a traceback:

- streams: ``--http2-max-streams`` open at once (SETTINGS_MAX_CONCURRENT_STREAMS), and as many
  still being answered, counting those the client reset (a new one past it: REFUSED_STREAM);
  client resets and refused streams spend a budget, GOAWAY ENHANCE_YOUR_CALM once it is spent
  (rapid reset, CVE-2023-44487);
- header lists: ``--max-header-bytes`` advertised (SETTINGS_MAX_HEADER_LIST_SIZE) and enforced
  by the HPACK decoder (a bomb is GOAWAY ENHANCE_YOUR_CALM); a header block spread over more
  than 64 CONTINUATION frames is GOAWAY PROTOCOL_ERROR (h2's bound);
- SETTINGS, PING, PRIORITY and empty DATA frames spend a control budget (floods: GOAWAY), and
  nothing is read while the transport's write buffer is full, so their answers cannot pile up;
- windows: a stream whose window stays shut for ``--client-send-timeout`` is reset (CANCEL), a
  transport that takes nothing for as long is cut, as on HTTP/1.1; request bodies are
  acknowledged only as the cache reads them;
- idle: no stream for ``--client-header-timeout`` is GOAWAY NO_ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from proxy.front.flow import FlowControl
from proxy.front.h2_stream import Http2Stream, request_of
from proxy.front.waiters import settle, watch

if TYPE_CHECKING:
    from proxy.front.seams import Host

log = logging.getLogger("proxy.server")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Control frames (SETTINGS, PING, PRIORITY, empty DATA) a connection may send in a burst, and
#: how many a second it earns back.
CONTROL_BURST, CONTROL_RATE = 200, 20.0
#: Unparsed bytes a connection may leave in h2's buffer: one frame of the default
#: SETTINGS_MAX_FRAME_SIZE (we advertise no larger) and its header, less one byte.
MAX_PARTIAL = 2**14 + 9
#: DATA bytes gathered before a write, so the transport's pause_writing can stop the pump.
FLUSH_BYTES = 2**16
#: Seconds a connection ended by an error still drains what the client sends.
LINGER = 1.0
NO_ERROR, CANCEL, REFUSED = ErrorCodes.NO_ERROR, ErrorCodes.CANCEL, ErrorCodes.REFUSED_STREAM


class Budget:
    """A token bucket over the loop's clock: ``spend`` is False once the burst is used up."""

    __slots__ = ("_at", "_clock", "_left", "burst", "rate")

    def __init__(self, burst: float, rate: float, clock: Callable[[], float]) -> None:
        self.burst, self.rate, self._clock = burst, rate, clock
        self._left, self._at = burst, clock()

    def spend(self) -> bool:
        now = self._clock()
        self._left = min(self.burst, self._left + (now - self._at) * self.rate) - 1
        self._at = now
        return self._left >= 0


class Http2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection; a ``Client`` of the listener."""

    def __init__(self, front: Host, transport: asyncio.Transport, peer: str, local: str) -> None:
        self.front = front
        self.settings = settings = front.settings
        self.loop = front.loop
        self.transport = transport
        self.peer = peer
        self.local = local
        self.lost = False
        self.closing = False
        #: A GOAWAY for an error went out: what the client still sends is dropped.
        self.failed = False
        self.max_streams = settings.http2_max_streams
        self.streams: dict[int, Http2Stream] = {}
        #: Streams whose answer is still being made (reset ones too, until their handler ends).
        self.answering: set[Http2Stream] = set()
        self.sending: dict[Http2Stream, None] = {}
        self.flow = FlowControl(self.loop, settings.client_send_timeout, self._send_timeout)
        self.resets = Budget(2 * self.max_streams, self.max_streams / 10, self.loop.time)
        self.control = Budget(CONTROL_BURST, CONTROL_RATE, self.loop.time)
        self.head_deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self._last_stream = 0
        self._flush_due = False
        #: DATA bytes handed to h2 since the last write (written every ``FLUSH_BYTES``).
        self.unflushed = 0
        # Inbound fields are checked (RFC 9113 §8.2); outbound ones are ours, built lower-case
        # without connection-specific fields (h2_stream), so h2 need not check them again.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: self.max_streams,
                codes.MAX_HEADER_LIST_SIZE: settings.max_header_bytes,
                codes.ENABLE_PUSH: 0,
            },
        )
        self.h2.decoder.max_header_list_size = settings.max_header_bytes

    # -- what the listener asks ------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.answering and not self.sending

    @property
    def waiting(self) -> bool:
        return not self.lost and not self.streams and not self.answering

    def evict(self) -> None:
        self.goaway(NO_ERROR)

    def drain(self) -> None:
        """SIGTERM: no new streams (GOAWAY with the last stream taken), close once idle."""
        self.goaway(NO_ERROR)

    def disconnected(self) -> asyncio.Future[None]:
        self._disconnected = future = watch(self.loop, self._disconnected, self.lost)
        return future

    def abort(self) -> None:
        self.transport.abort()

    # -- connection lifecycle ----------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        """Send our SETTINGS and read what came with the preface (or after ALPN)."""
        self.h2.initiate_connection()
        self._flush()
        self._idle()
        if data:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.front.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()
        self.sending.clear()
        self.flow.close(ConnectionResetError("the client closed the connection"))
        settle(self._disconnected)

    def eof_received(self) -> bool | None:
        return None

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """GOAWAY naming the last stream we took: those go on, nothing new is taken (§6.8);
        an error closes the connection at once, a graceful one once it is idle."""
        if self.lost:
            return
        if code != NO_ERROR:
            self.front.http2_error(ErrorCodes(code).name.lower())
            self.h2.close_connection(code, additional_data=debug or None)
            self._fail()
            return
        if not self.closing:
            self.closing = True
            self._flush()
            frame = GoAwayFrame(0, last_stream_id=self._last_stream, error_code=code)
            self.transport.write(frame.serialize())
        if self.idle:
            self.transport.close()

    def _fail(self) -> None:
        """After an error's GOAWAY: read nothing more, and let the GOAWAY reach the client
        before closing (closing with unread bytes would reset the connection and lose it)."""
        self.failed = self.closing = True
        self._flush()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER, transport.abort)  # lingering close, as nginx's
        else:
            transport.close()

    # -- reading --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.lost or self.failed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # h2 queued a GOAWAY with the error's code (ENHANCE_YOUR_CALM for an HPACK bomb).
            log.info("HTTP/2 protocol error from %s: %s", self.peer, type(error).__name__)
            self.front.http2_error(ErrorCodes(error.error_code).name.lower())
            self._fail()
            return
        if len(getattr(self.h2.incoming_buffer, "_data", b"")) > MAX_PARTIAL:
            # h2 waits for a whole frame before checking its length: a header announcing 16 MiB
            # would be buffered whole. What is left unparsed is at most one partial frame.
            self.goaway(ErrorCodes.FRAME_SIZE_ERROR, b"frame larger than SETTINGS_MAX_FRAME_SIZE")
            return
        for event in events:
            if self.lost or self.h2.state_machine.state == h2.connection.ConnectionState.CLOSED:
                break
            self._event(event)
        self._flush()
        if self.sending:
            self.pump()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if not event.data and not event.stream_ended and not self.control.spend():
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"empty DATA frames")
                return
            if stream is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.received(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded | h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.remote_open = False
                if stream.body is not None:
                    stream.body.finish()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._forget(stream)
            if event.remote_reset and not self.resets.spend():
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets")
        elif isinstance(event, h2.events.WindowUpdated):
            if self.sending:
                self.pump()
        elif isinstance(
            event, h2.events.RemoteSettingsChanged | h2.events.PingReceived
            | h2.events.PriorityUpdated,
        ) and not self.control.spend():  # fmt: skip
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too many control frames")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closing = True
            if self.idle:
                self.transport.close()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        assert sid is not None and event.headers is not None
        self._last_stream = max(self._last_stream, sid)
        if self.closing or self.front.draining or len(self.answering) >= self.max_streams:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the client reset it already
                self.h2.reset_stream(sid, REFUSED)
            if not self.resets.spend():
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too many streams refused")
            return
        stream = Http2Stream(self, sid, self.loop)
        stream.peer = self.peer
        parsed, facts = request_of(list(event.headers), self.settings, self.local)
        stream.parsed = parsed
        stream.remote_open = event.stream_ended is None
        if stream.remote_open and parsed.rejected is None:
            parsed.body = stream.open_body(self.settings, facts.expects)
        self.streams[sid] = stream
        self.answering.add(stream)
        self._busy()
        task = self.loop.create_task(self._answer(stream))
        self.front.track(task)

    async def _answer(self, stream: Http2Stream) -> None:
        parsed = stream.parsed
        assert parsed is not None
        try:
            await self.front.respond(stream, parsed, stream)
            if not stream.started:
                stream.abort()
        except Exception:
            log.exception("the front failed to answer an HTTP/2 request")
            stream.abort()
        finally:
            self.answering.discard(stream)
            self._settle(stream)

    def _settle(self, stream: Http2Stream) -> None:
        if stream.closed and stream.stream_id in self.streams and stream not in self.answering:
            del self.streams[stream.stream_id]
        if not self.lost and self.idle:
            if self.closing:
                self.transport.close()
            elif not self.streams:
                self._idle()

    # -- what a stream asks ------------------------------------------------------------------------

    def send_head(self, stream: Http2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if stream.closed or self.lost:
            return
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        except (h2.exceptions.ProtocolError, ValueError, TypeError):
            log.warning("an answer's head could not be sent over HTTP/2; stream reset")
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            self._done(stream)
        self._flush_soon()  # with the DATA that follows, or other streams' answers: one write

    def queue(self, stream: Http2Stream) -> None:
        if stream.closed or self.lost:
            stream.drained(ConnectionResetError("the stream was reset"))
            return
        self.sending[stream] = None
        self.pump()

    def reset(self, stream: Http2Stream, code: int) -> None:
        if not stream.closed and not self.lost:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # closed on both sides
                self.h2.reset_stream(stream.stream_id, code)
            self._flush()
        self._forget(stream)

    def window_opened(self, stream: Http2Stream, size: int) -> None:
        if size and not self.lost:
            try:
                self.h2.acknowledge_received_data(size, stream.stream_id)
            except h2.exceptions.ProtocolError:
                return
            self._flush_soon()

    # -- writing ---------------------------------------------------------------------------------

    def pump(self) -> None:
        """DATA for every stream with some queued, as far as the windows and the transport take
        it; a stream whose window is shut waits (``--client-send-timeout``) for WINDOW_UPDATE."""
        h2c = self.h2
        for stream in list(self.sending):
            if self.flow.write_paused or self.lost:
                return
            sid = stream.stream_id
            pending = stream.pending
            try:
                while pending:
                    window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                    if window <= 0:
                        break
                    chunk = pending[0]
                    if len(chunk) > window:
                        h2c.send_data(sid, chunk[:window].tobytes())
                        pending[0] = chunk[window:]
                    else:
                        pending.popleft()
                        last = not pending and stream.end_after
                        h2c.send_data(sid, chunk.tobytes(), end_stream=last)
                        if last:
                            self._done(stream)
                    self.unflushed += min(window, len(chunk))
                    if self.unflushed >= FLUSH_BYTES:
                        self._flush()  # pause_writing may stop us here
                        if self.flow.write_paused:
                            break
                if not pending and stream.end_after:
                    h2c.end_stream(sid)
                    self._done(stream)
            except (h2.exceptions.ProtocolError, KeyError):
                self._forget(stream)  # reset meanwhile
                continue
            if pending:
                self._blocked(stream)
                continue
            self.sending.pop(stream, None)
            if stream.blocked_timer is not None:
                stream.blocked_timer.cancel()
                stream.blocked_timer = None
            stream.drained()
        self._flush()

    def _blocked(self, stream: Http2Stream) -> None:
        if stream.blocked_timer is None and not self.flow.write_paused:
            timeout = self.settings.client_send_timeout
            stream.blocked_timer = self.loop.call_later(timeout, self._window_timeout, stream)

    def _window_timeout(self, stream: Http2Stream) -> None:
        """The peer kept this stream's window (or the connection's) shut too long."""
        stream.blocked_timer = None
        if stream.pending and not stream.closed:
            self.front.timed_out("send")
            self.reset(stream, CANCEL)

    def _done(self, stream: Http2Stream) -> None:
        """The answer is whole (END_STREAM sent)."""
        stream.end_after = False
        if stream.remote_open:
            # Answered before the request was whole: the rest is not wanted (§8.1).
            self.reset(stream, NO_ERROR)
            return
        stream.closed = True
        self.streams.pop(stream.stream_id, None)
        self.sending.pop(stream, None)
        self._settle(stream)

    def _forget(self, stream: Http2Stream) -> None:
        stream.close()
        self.sending.pop(stream, None)
        self.streams.pop(stream.stream_id, None)
        self._settle(stream)

    def _flush(self) -> None:
        self.unflushed = 0
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def _flush_soon(self) -> None:
        """Write what h2 has queued at the end of this loop iteration: the answers of every
        stream handled meanwhile go out in one write."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self._flush()

    def pause_writing(self) -> None:
        # Nothing is read while nothing can be written: a flood's answers cannot pile up.
        self.flow.pause_writing()
        self.flow.pause_reading(self.transport)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.flow.resume_reading(self.transport)
        if self.sending:
            self.pump()

    def _send_timeout(self) -> None:
        self.front.timed_out("send")
        self.transport.abort()

    # -- idle ------------------------------------------------------------------------------------

    def _busy(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        self.head_deadline = self.loop.time() + self.settings.client_header_timeout
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(self.head_deadline, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self._idle_timer = None
        if self.lost or self.streams or self.answering:
            return
        self.front.timed_out("head")
        self.goaway(NO_ERROR)
        self.transport.close()
