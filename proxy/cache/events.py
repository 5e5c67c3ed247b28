"""Server-sent events over the long-poll machinery: a transcription's changes pushed as they
are stored.

``GET /v1/audio/transcribe/{id}`` with ``Accept: text/event-stream`` is answered like a GET of
the JSON (same credential scope, key, ``Vary`` selection and coalesced fetch), and then, instead
of one answer, the stored response is watched as a held long poll is: a subscriber is one more
waiter of the flight's ``Watch`` in the ``WaitRoom``, so one upstream revalidation per flight
and freshness window serves every subscriber and long poll of that flight, across replicas with
Redis (the same notices wake it). Each change is sent as one event (``proxy.core.events``); the
stream ends after ``completed`` or ``failed``.

The body is an async iterator of bytes written through the ``Responder`` seam (``start`` /
``write`` / ``finish``), the one a streamed upstream body takes, so any front carries it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.cache.exchange import ProxyRequest, Responder, send_stream
from proxy.cache.fetch import Fetched
from proxy.cache.longpoll import Handled
from proxy.cache.wait import Observation, WaitRoom
from proxy.core.events import (
    HEARTBEAT,
    MEDIA_TYPE,
    event_id,
    event_of,
    frame,
    last_event_id,
    retry_field,
    wants_event_stream,
)
from proxy.core.headers import parse_vary
from proxy.core.models import Serve, StoredResponse
from proxy.ops.config import Settings
from proxy.ops.limits import max_waiters
from proxy.ops.metrics import Metrics

#: Request fields a subscription does not pass to its GET: the stream's own (``Accept``,
#: ``Last-Event-ID``), and what would make each subscriber's GET its own (an ``EventSource``
#: sends ``Cache-Control: no-cache``; validators and ``Prefer`` belong to polls).
SUBSCRIPTION_ONLY = frozenset(
    {
        "accept",
        "last-event-id",
        "cache-control",
        "pragma",
        "if-none-match",
        "if-modified-since",
        "prefer",
    }
)
#: How long one hold of a stream lasts before it is renewed (heartbeats go on meanwhile).
HOLD_SECONDS = 3600.0
#: ``retry`` sent with a shed stream: when the client's ``EventSource`` comes back (ms).
SHED_RETRY_MS = 5000
NO_FIELDS: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Subscription:
    """An event-stream request: its GET as the cache answers it, and where the client was."""

    request: ProxyRequest
    last_event_id: str | None


class EventStreams:
    """Answers subscriptions: the first event from the GET's ``Serve``, then one per change."""

    def __init__(self, settings: Settings, waits: WaitRoom[Fetched], metrics: Metrics) -> None:
        self.settings = settings
        self.waits = waits
        self.metrics = metrics
        self.open = 0
        metrics.open_event_streams.set_function(lambda: self.open)

    @staticmethod
    def subscription(request: ProxyRequest, route: str) -> Subscription | None:
        """The subscription a request asks for, if it is one (a GET of a transcription that
        accepts ``text/event-stream``)."""
        if request.method != "GET" or route != "transcription":
            return None
        accept = request.headers.getall("accept", ())
        if not accept or not wants_event_stream(accept):
            return None
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in SUBSCRIPTION_ONLY
        )
        headers["Accept"] = "application/json"
        last = last_event_id(request.headers.getall("last-event-id", ()))
        get = ProxyRequest(
            request.method,
            request.target,
            headers,
            request.body,
            request.peer,
            request.scheme,
            request.version,
            request.host,
            request.connection,
        )
        return Subscription(get, last)

    @staticmethod
    def streams(serve: Serve) -> bool:
        """Only a successful representation is streamed; anything else is answered as JSON."""
        return 200 <= serve.entry.status < 300

    async def stream(
        self,
        subscription: Subscription,
        responder: Responder,
        flight: str,
        observe: Callable[[], Awaitable[Observation[Fetched]]],
        serve: Serve,
    ) -> Handled:
        """Answer ``200 text/event-stream`` and send events until the final one, a disconnect,
        an error or the drain; returns the GET's result and the time the stream was open."""
        started = time.perf_counter()
        first = serve.entry
        last = subscription.last_event_id
        event = event_of(first)
        if event.terminal and last == event.id:
            # Seen to the end: 204 tells an EventSource not to reconnect (§9.2.3).
            self.metrics.event_streams.labels("seen").inc()
            responder.send(204, "", self._fields(first, serve), b"")
            return Handled(serve.result)
        waits = self.waits
        shed = waits.closing or waits.waiting >= max_waiters(self.settings)
        headers = [("Content-Type", MEDIA_TYPE), *self._fields(first, serve)]
        if shed:
            self.metrics.event_streams.labels("shed").inc()
            body = self._shed(first, last)
        else:
            body = self._events(subscription, first, flight, observe)
        await send_stream(responder, 200, "", headers, body)
        return Handled(serve.result, time.perf_counter() - started)

    def _fields(self, entry: StoredResponse, serve: Serve) -> list[tuple[str, str]]:
        """The stream's own fields, and the origin's CORS fields (a page on another origin
        reads the stream only with them)."""
        vary = ", ".join(("Accept", *(name for name in parse_vary(
            [v for k, v in entry.headers if k.lower() == "vary"]
        ) if name != "accept")))  # fmt: skip
        fields = [
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),  # nginx in front: pass each event on at once
            ("Vary", vary),
            ("Cache-Status", serve.cache_status),
        ]
        fields += [(k, v) for k, v in entry.served if k.lower().startswith("access-control-")]
        return fields

    async def _shed(self, entry: StoredResponse, last: str | None) -> AsyncGenerator[bytes, None]:
        """``--max-waiters`` reached (or draining): as a shed long poll, the current state at
        once, not held; ``retry`` says when the client's ``EventSource`` may come back."""
        yield retry_field(SHED_RETRY_MS)
        event = event_of(entry)
        if event.id != last:
            self.metrics.events_sent.labels("event").inc()
            yield frame(event)

    async def _events(
        self,
        subscription: Subscription,
        entry: StoredResponse,
        flight: str,
        observe: Callable[[], Awaitable[Observation[Fetched]]],
    ) -> AsyncGenerator[bytes, None]:
        waits = self.waits
        metrics = self.metrics
        request = subscription.request
        connection = request.connection
        lost = connection.disconnected() if connection is not None else None
        heartbeat = self.settings.sse_heartbeat
        sent = subscription.last_event_id
        outcome = "error"
        waits.enter()
        self.open += 1
        try:
            while True:
                event = event_of(entry)
                if event.id != sent:
                    metrics.events_sent.labels("event").inc()
                    yield frame(event)
                    sent = event.id
                if event.terminal:
                    outcome = "final"
                    return
                if waits.closing:
                    outcome = "drained"
                    return
                unchanged = functools.partial(_same_event, sent)
                hold = asyncio.ensure_future(
                    waits.hold(
                        flight,
                        request.target,
                        observe,
                        NO_FIELDS,
                        HOLD_SECONDS,
                        lost,
                        still=unchanged,
                        counted=False,
                    )
                )
                try:
                    while not hold.done():
                        await asyncio.wait((hold,), timeout=heartbeat)
                        if not hold.done():
                            metrics.events_sent.labels("heartbeat").inc()
                            yield HEARTBEAT
                finally:
                    hold.cancel()
                wake = hold.result()
                if wake.outcome == "changed" and wake.entry is not None:
                    entry = wake.entry
                elif wake.outcome == "timeout":
                    continue  # the hold ran its time (or the drain): renew it, or end
                else:
                    # Gone, or an answer that is no representation (404, an error nothing
                    # stored covers, too large to store): the client reconnects and asks again.
                    outcome = "disconnected" if wake.outcome == "disconnected" else "error"
                    return
        except GeneratorExit:
            outcome = "disconnected"
            raise
        finally:
            self.open -= 1
            waits.leave()
            metrics.event_streams.labels(outcome).inc()


def _same_event(sent: str | None, stored: StoredResponse) -> bool:
    """Whether ``stored`` is still the event last sent (its waiter keeps waiting)."""
    return event_id(stored) == sent


__all__ = ["EventStreams", "Subscription"]
