"""Server-sent events (``Accept: text/event-stream``) through real sockets, before the tests'
origin: one event per change, the end at ``completed``, ``Last-Event-ID``, heartbeats, the
waiter limit, credential scopes, a thousand subscribers, disconnects and the drain.

The clock follows real time here (the watch's timers do), so ``max-age=1`` is a one-second
window; every wait is on state (events read, gauges, the origin's counts), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from tests.conftest import FakeClock, Harness, MakeHarness
from tests.support.redis_support import JOB, CountingUpstream, Fleet
from tests.support.sse_client import EventReader
from tests.support.waiting import eventually

PATH = "/v1/audio/transcribe/trans_1"
SSE = {"Accept": "text/event-stream"}
pytest_plugins = ("tests.support.redis_fixtures",)


class LiveClock(FakeClock):
    """Real time (the waiters' timers are real), still movable by ``advance``."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def __call__(self) -> float:
        return time.time() + self.now


@pytest.fixture
def clock() -> FakeClock:
    return LiveClock()


def doc(status: str, **more: object) -> bytes:
    return json.dumps({"success": True, "data": {"status": status, **more}}).encode()


@asynccontextmanager
async def subscribe(
    h: Harness, path: str = PATH, token: str = "tok-a", **headers: str
) -> AsyncIterator[tuple[aiohttp.ClientResponse, EventReader]]:
    fields = {**SSE, "Authorization": f"Bearer {token}", **headers}
    async with h.client.session.get(h.client.make_url(path), headers=fields) as response:
        yield response, EventReader(response)


def open_streams(h: Harness) -> float:
    return h.metric("cacheproxy_open_event_streams")


async def test_each_change_is_one_event_and_the_stream_ends_after_completed(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness()
    short = "public, max-age=1"
    first = h.origin.put(PATH, doc("processing", progress=1), cache_control=short)
    plain = await h.get(PATH)  # stored by a plain poll first: the fast path must not answer
    assert plain.status == 200
    async with subscribe(h) as (response, reader):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert "Accept" in response.headers["Vary"]
        event = await reader.next_event()
        assert event is not None
        assert (event.id, event.event, event.text) == (first.tag, "processing", first.body.decode())
        second = h.origin.put(PATH, doc("processing", progress=2), cache_control=short)
        event = await reader.next_event()
        assert event is not None and (event.id, event.text) == (second.tag, second.body.decode())
        final = h.origin.put(PATH, doc("completed", text="hello"), cache_control=short)
        event = await reader.next_event()
        assert event is not None and (event.id, event.event) == (final.tag, "completed")
        assert await reader.next() is None  # the stream ends after the final event
    assert h.metric("cacheproxy_event_streams_total", outcome="final") == 1
    assert h.metric("cacheproxy_events_sent_total", kind="event") == 3
    # The upstream never saw the stream's Accept: it was asked for the JSON.
    assert all(r.headers.get("Accept") != "text/event-stream" for r in h.origin.requests)
    await eventually(lambda: open_streams(h) == 0 and h.proxy.waits.waiting == 0)


async def test_the_data_lines_are_the_json_line_by_line(make_harness: MakeHarness) -> None:
    h = await make_harness()
    body = b'{"data": {"status": "queued"},\n "x": 1}\n'
    h.origin.put(PATH, body, cache_control="public, max-age=60")
    async with subscribe(h) as (_, reader):
        event = await reader.next_event()
        assert event is not None and event.event == "queued"
        # The client joins data lines with LF: the body as the origin sent it, less its last LF.
        assert event.data == ['{"data": {"status": "queued"},', ' "x": 1}', ""]


async def test_last_event_id_of_the_current_etag_sends_nothing_until_the_next_change(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(sse_heartbeat=0.2)
    seen = h.origin.put(PATH, doc("processing"), cache_control="public, max-age=1")
    async with subscribe(h, **{"Last-Event-ID": seen.tag}) as (response, reader):
        assert response.status == 200
        block = await reader.next()
        assert block is not None and block.comments == ["hb"] and not block.is_event
        changed = h.origin.put(PATH, doc("completed"), cache_control="public, max-age=1")
        event = await reader.next_event()
        assert event is not None and (event.id, event.event) == (changed.tag, "completed")
    # An older id is answered with the current event at once.
    async with subscribe(h, **{"Last-Event-ID": seen.tag}) as (_, reader):
        event = await reader.next_event()
        assert event is not None and event.id == changed.tag
    # Seen to the end: 204, which tells an EventSource to stop reconnecting.
    async with subscribe(h, **{"Last-Event-ID": changed.tag}) as (response, _):
        assert response.status == 204
    assert h.metric("cacheproxy_event_streams_total", outcome="seen") == 1


async def test_heartbeats_are_comments_every_configured_interval(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(sse_heartbeat=0.1)
    h.origin.put(PATH, doc("processing"), cache_control="public, max-age=600")
    async with subscribe(h) as (_, reader):
        assert (await reader.next_event()) is not None
        started = time.perf_counter()
        for _ in range(3):
            block = await reader.next()
            assert block is not None and block.comments == ["hb"]
        assert time.perf_counter() - started >= 0.25
    assert h.metric("cacheproxy_events_sent_total", kind="heartbeat") >= 3
    assert h.origin.count(PATH) == 1  # a fresh entry: heartbeats ask nothing upstream


async def test_subscribers_with_two_credentials_never_see_each_others_events(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(sse_heartbeat=0.2)
    a = h.origin.put(PATH, doc("processing", owner="a"), token="tok-a")
    h.origin.put(PATH, doc("processing", owner="b"), token="tok-b")
    async with (
        subscribe(h, token="tok-a") as (_, reader_a),
        subscribe(h, token="tok-b") as (_, reader_b),
    ):
        first_a, first_b = await reader_a.next_event(), await reader_b.next_event()
        assert first_a is not None and '"owner": "a"' in first_a.text
        assert first_b is not None and '"owner": "b"' in first_b.text
        changed = h.origin.put(
            PATH, doc("completed", owner="b"), token="tok-b", cache_control="public, max-age=1"
        )
        # B's entry is max-age=5: an unsafe request through the proxy invalidates it now.
        posted = await h.client.post(PATH, headers={"Authorization": "Bearer tok-b"})
        assert posted.status == 200
        event = await reader_b.next_event()
        assert event is not None and event.id == changed.tag and '"owner": "b"' in event.text
        # A is woken by the same invalidation, revalidates in its own scope: still its own.
        blocks = [await reader_a.next() for _ in range(3)]
        assert all(b is not None and not b.is_event for b in blocks), blocks
        assert first_a.id == a.tag
    scopes = {r.headers.get("Authorization") for r in h.origin.requests if r.method == "GET"}
    assert scopes == {"Bearer tok-a", "Bearer tok-b"}


async def test_a_thousand_subscribers_over_five_ids_cost_one_upstream_request_per_id_per_window(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(sse_heartbeat=30)
    paths = [f"/v1/audio/transcribe/trans_{n}" for n in range(5)]
    for path in paths:
        h.origin.put(path, doc("processing", path=path), cache_control="public, max-age=1")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def subscriber(path: str) -> list[str]:
            headers = {**SSE, "Authorization": "Bearer tok-a"}
            async with session.get(h.client.make_url(path), headers=headers) as response:
                reader, events = EventReader(response), []
                while (event := await reader.next_event()) is not None:
                    events.append(event.event or "")
                return events

        tasks = [asyncio.create_task(subscriber(paths[n % 5])) for n in range(1000)]
        await eventually(lambda: open_streams(h) == 1000, within=60, what="1000 streams open")
        loop = asyncio.get_running_loop()
        before = {path: h.origin.count(path) for path in paths}
        started = loop.time()
        await eventually(
            lambda: all(h.origin.count(p) >= before[p] + 3 for p in paths),
            within=20,
            what="three windows of refreshes",
        )
        elapsed = loop.time() - started
        for path in paths:
            refreshes = h.origin.count(path) - before[path]
            # One conditional request per ID and max-age window, whatever the 200 subscribers.
            assert refreshes <= elapsed / 1 + 1.5, (path, refreshes, elapsed)
        for path in paths:
            h.origin.put(path, doc("completed", path=path), cache_control="public, max-age=1")
        async with asyncio.timeout(30):
            results = await asyncio.gather(*tasks)
    assert all(events[-1] == "completed" for events in results)
    assert h.metric("cacheproxy_event_streams_total", outcome="final") == 1000


async def test_past_max_waiters_a_stream_is_shed_answered_at_once_with_retry(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(max_waiters=2)
    current = h.origin.put(PATH, doc("processing"), cache_control="public, max-age=600")
    async with subscribe(h) as (_, one), subscribe(h) as (_, two):
        assert (await one.next_event()) is not None and (await two.next_event()) is not None
        await eventually(lambda: h.proxy.waits.waiting == 2, what="two streams counted")
        async with subscribe(h) as (response, shed):
            assert response.status == 200
            block = await shed.next()
            assert block is not None and block.retry == 5000
            event = await shed.next_event()
            assert event is not None and event.id == current.tag
            assert await shed.next() is None  # not held: the client comes back after retry
        # Streams and long polls share the bound: a long poll is shed too (304 at once).
        polled = await h.get(PATH, **{"If-None-Match": current.tag, "Prefer": "wait=20"})
        assert polled.status == 304 and "Preference-Applied" not in polled.headers
    assert h.metric("cacheproxy_event_streams_total", outcome="shed") == 1


async def test_a_client_that_disconnects_frees_its_waiter(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.origin.put(PATH, doc("processing"), cache_control="public, max-age=600")
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.port)
    writer.write(
        f"GET {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    received = b""
    while b"event: processing" not in received:
        chunk = await reader.read(4096)
        assert chunk, received
        received += chunk
    assert b"Transfer-Encoding: chunked" in received
    assert h.proxy.waits.waiting == 1 and open_streams(h) == 1
    writer.close()
    await writer.wait_closed()
    await eventually(
        lambda: h.proxy.waits.waiting == 0 and open_streams(h) == 0, what="the waiter freed"
    )
    await eventually(lambda: not h.proxy.waits._watches, what="its flight's refresher stopped")
    assert h.metric("cacheproxy_event_streams_total", outcome="disconnected") == 1


async def test_streams_end_when_the_proxy_drains(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.origin.put(PATH, doc("processing"), cache_control="public, max-age=600")
    async with subscribe(h) as (_, reader):
        assert (await reader.next_event()) is not None
        h.runtime.drain()
        async with asyncio.timeout(5):
            assert await reader.next() is None
    assert h.metric("cacheproxy_event_streams_total", outcome="drained") == 1


async def test_what_is_no_representation_is_answered_as_json(make_harness: MakeHarness) -> None:
    h = await make_harness()
    missing = await h.get("/v1/audio/transcribe/nothing", **SSE)
    assert missing.status == 404 and missing.headers["Content-Type"].startswith("application/json")
    h.origin.put(PATH, doc("processing"))
    head = await h.client.head(PATH, headers={**SSE, "Authorization": "Bearer tok-a"})
    assert head.status == 200 and head.headers["Content-Type"] != "text/event-stream"
    json_poll = await h.get(PATH, Accept="application/json, */*")
    assert json_poll.status == 200 and json_poll.headers.get("Cache-Status", "").find("hit") > 0
    refused = await h.get(PATH, Accept="text/event-stream;q=0, application/json")
    assert refused.headers["Content-Type"] != "text/event-stream"


async def test_streams_on_two_replicas_with_redis_share_one_fetch_per_change(
    fleet: Fleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    async with fleet(2, public_host="proxy.test") as replicas, contextlib.AsyncExitStack() as stack:
        readers = []
        for replica in replicas:
            response = await stack.enter_async_context(http.get(replica.url + JOB, headers=SSE))
            readers.append(EventReader(response))
        for reader in readers:
            event = await reader.next_event()
            assert event is not None and event.id == '"v0"'
        before = upstream.count(JOB)
        async with http.post(replicas[0].url + JOB) as posted:
            assert posted.status == 204
        for reader in readers:
            async with asyncio.timeout(10):  # max-age=60: only the notice wakes the other
                event = await reader.next_event()
            assert event is not None and event.id == '"v1"'
        # One fetch of the change for both replicas: the lock and the notice.
        assert upstream.count(JOB) - before == 1
