"""One change waking many held requests at once (RFC 7240 ``Prefer: wait``): the grouped wake.

The waiters one change wakes are answered per kind of request: one answer made for each kind,
written to every waiter of that kind in one loop (``LongPolls._wake_many``). Through real
sockets in front of a real origin: each waiter still gets exactly the bytes a request of its own
would get (its credentials' document, its coding, its framing), HTTP/2 waiters of the same
resource are answered alongside, and a client gone in the middle of a wake is skipped while the
others of its kind are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from proxy.cache.wait import Wake
from proxy.core.coding import decode
from proxy.front.connection import HttpConnection
from proxy.ops.config import Settings
from tests.cache.test_long_poll import ScopedOrigin
from tests.support.access import AccessLog
from tests.support.h2kit import H2Client
from tests.support.origin import serving
from tests.support.rawkit import HOST, RunningProxy, serve_proxy
from tests.support.waiting import eventually

PATH = "/v1/audio/transcribe/job-grouped"
WAIT = 30
#: Fields every answer has its own value of (the clock's), left out when answers are compared;
#: ``Cache-Status`` and ``Preference-Applied`` are what a held answer adds (checked apart).
OWN_FIELDS = (b"date:", b"age:", b"cache-status:", b"preference-applied:")

Run = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Run] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Each test on both loops the proxy runs on (uvloop by default where it is installed):
    they differ where a wake meets a closed connection (uvloop refuses the write, asyncio's
    drops it). The test's origin runs on the same loop (``scoped_origin``)."""
    return LOOPS[request.param]


@contextlib.asynccontextmanager
async def scoped_origin() -> AsyncIterator[tuple[ScopedOrigin, str]]:
    origin = ScopedOrigin()
    origin.max_age = 600  # only the invalidation (or the test) can end a wait before its end
    async with serving(origin.handle) as upstream:
        yield origin, upstream


def document(owner: str, version: int) -> bytes:
    """A JSON document over the compression threshold: the cache keeps it gzipped too."""
    text = f"{owner} version {version} " * 100
    return json.dumps({"owner": owner, "version": version, "text": text}).encode()


@dataclass(frozen=True)
class Kind:
    """One kind of request: whose credentials, which coding, method and framing; ``both``: it
    holds both representations (``If-None-Match`` with the identity and the gzip tag)."""

    token: str
    coding: str | None
    method: str = "GET"
    version: str = "1.1"
    connection: str | None = None
    both: bool = False

    def request(self, tag: str | None = None, wait: int | None = None) -> bytes:
        lines = [f"{self.method} {PATH} HTTP/{self.version}", "Host: proxy.test",
                 f"Authorization: Bearer {self.token}"]  # fmt: skip
        if self.coding is not None:
            lines.append(f"Accept-Encoding: {self.coding}")
        if self.connection is not None:
            lines.append(f"Connection: {self.connection}")
        if tag is not None:
            lines.append(f"If-None-Match: {tag}")
        if wait is not None:
            lines.append(f"Prefer: wait={wait}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_raw(reader: asyncio.StreamReader, *, head_only: bool = False) -> bytes:
    """One response's exact bytes: its head, and its body by ``Content-Length``."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if head_only or status in (204, 304):
        return head
    return head + await reader.readexactly(length)


async def ask(port: int, data: bytes, *, head_only: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            return await read_raw(reader, head_only=head_only)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def field(raw: bytes, name: bytes) -> bytes | None:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def comparable(raw: bytes) -> bytes:
    """``raw`` without the fields every answer has its own value of (``OWN_FIELDS``)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(OWN_FIELDS)]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def body_of(raw: bytes) -> bytes:
    body = raw.partition(b"\r\n\r\n")[2]
    coding = field(raw, b"content-encoding")
    return body if coding is None else decode(coding.decode(), body, 10_000_000)


def waiting(proxy: RunningProxy) -> float:
    return proxy.registry.get_sample_value("cacheproxy_waiting_requests") or 0.0


def changed(registry: CollectorRegistry) -> float:
    labels = {"outcome": "changed"}
    return registry.get_sample_value("cacheproxy_long_poll_total", labels) or 0.0


KINDS = (
    Kind("a", "gzip"),
    Kind("a", None),
    Kind("b", "gzip"),
    Kind("b", None),
    Kind("a", "gzip", method="HEAD"),
    Kind("a", "gzip", version="1.0", connection="keep-alive"),
    Kind("b", None, connection="close"),
    # The same validators, two codings: only Accept-Encoding tells their answers apart.
    Kind("b", "gzip", both=True),
    Kind("b", None, both=True),
)
PER_KIND = 4


def test_one_change_answers_every_kind_of_waiter_with_its_own_bytes(
    run: Run, access_log: AccessLog
) -> None:
    """Waiters with two credentials, two codings, HEAD, HTTP/1.0 keep-alive, ``Connection:
    close`` and HTTP/2 on one resource, woken by one invalidation: each gets the answer a
    request of its own kind gets from the cache after the change, byte for byte (the clock's
    fields aside), with its own credentials' document in its own coding. Both credentials'
    documents start the same (one ETag): only the credential scope tells their waiters apart."""
    run(every_kind(access_log))


async def every_kind(access_log: AccessLog) -> None:
    async with (
        scoped_origin() as (origin, upstream),
        serve_proxy(Settings(upstream=upstream), access=access_log.logger) as proxy,
    ):
        for token in ("a", "b"):
            origin.set(token, document("either", 1), PATH)
        tags = {}
        for kind in KINDS:
            first = await ask(proxy.port, kind.request(), head_only=kind.method == "HEAD")
            assert first.startswith(b"HTTP/1.1 200"), first[:200]
            tag = field(first, b"etag")
            assert tag is not None
            tags[kind] = tag.decode()
        assert tags[KINDS[0]] != tags[KINDS[1]]  # gzip and identity: two representations
        assert tags[KINDS[0]] == tags[KINDS[2]]  # one document for both credentials so far
        for kind in KINDS:
            if kind.both:
                tags[kind] = f"{tags[KINDS[0]]}, {tags[KINDS[1]]}"
        held = []
        for kind in KINDS:
            for _ in range(PER_KIND):
                reader, writer = await asyncio.open_connection(HOST, proxy.port)
                writer.write(kind.request(tags[kind], WAIT))
                held.append((kind, reader, writer))
        h2 = await H2Client.connect(proxy.port)
        h2_polls = [
            h2.request(PATH, ("authorization", "Bearer a"), ("accept-encoding", "gzip"),
                       ("if-none-match", tags[KINDS[0]]), ("prefer", f"wait={WAIT}"))
            for _ in range(2)
        ]  # fmt: skip
        await h2.flush()
        total = len(held) + len(h2_polls)
        await eventually(lambda: waiting(proxy) == total, what=f"{total} requests held")

        for token in ("a", "b"):
            origin.set(token, document(token, 2), PATH)
        invalidation = Kind("a", None, method="POST").request()
        posted = await ask(proxy.port, invalidation[:-2] + b"Content-Length: 0\r\n\r\n")
        assert posted.startswith(b"HTTP/1.1 204"), posted[:200]

        answers = []
        async with asyncio.timeout(10):  # well before the waits' own end
            for kind, reader, writer in held:
                answers.append((kind, await read_raw(reader, head_only=kind.method == "HEAD")))
                writer.close()
            await h2.until(lambda c: all(c.response(sid)[2] for sid in h2_polls))
        await eventually(lambda: waiting(proxy) == 0, what="no request held")
        await access_log.count(len(KINDS) + 1 + total)  # the references' lines come after

        by_kind: dict[Kind, set[bytes]] = {}
        for kind, raw in answers:
            assert raw.startswith(b"HTTP/1.1 200"), (kind, raw[:300])
            assert field(raw, b"preference-applied") == f"wait={WAIT}".encode()
            assert b'detail="waited"' in (field(raw, b"cache-status") or b"")
            coding = kind.coding.encode() if kind.coding is not None else None
            assert field(raw, b"content-encoding") == coding
            if kind.method != "HEAD":
                assert json.loads(body_of(raw)) == json.loads(document(kind.token, 2))
            by_kind.setdefault(kind, set()).add(comparable(raw))
        # One answer per kind; a request of that kind asked on its own gets the same bytes.
        for kind, seen in by_kind.items():
            assert len(seen) == 1, kind
            alone = await ask(proxy.port, kind.request(tags[kind]), head_only=kind.method == "HEAD")
            assert "waited" not in (field(alone, b"cache-status") or b"").decode()
            assert seen == {comparable(alone)}, kind
        # Different kinds, different bytes (what a request holds aside: once changed, the
        # answer does not depend on it).
        distinct = {replace(kind, both=False) for kind in KINDS}
        assert len({next(iter(seen)) for seen in by_kind.values()}) == len(distinct)
        for sid in h2_polls:
            head, body, _ = h2.response(sid)
            assert head[b":status"] == b"200" and head[b"preference-applied"] == b"wait=30"
            assert json.loads(decode("gzip", body, 10_000_000)) == json.loads(document("a", 2))
        await h2.close()
        assert changed(proxy.registry) == total

    # One access line per request: each kind asked twice on its own, the invalidation, and
    # every held request with its own method, status, result and body size.
    lines = access_log.lines()
    assert len(lines) == len(KINDS) * 2 + 1 + total
    woken = [
        line for line in lines[len(KINDS) : len(KINDS) + 1 + total] if line["method"] != "POST"
    ]
    expected = Counter(
        (kind.method, 200, "hit", len(raw.partition(b"\r\n\r\n")[2])) for kind, raw in answers
    )
    expected[("GET", 200, "hit", len(h2.response(h2_polls[0])[1]))] += len(h2_polls)
    assert Counter((w["method"], w["status"], w["cache"], w["bytes"]) for w in woken) == expected


def test_a_waiter_gone_in_the_middle_of_a_wake_is_skipped_and_its_kind_answered(
    run: Run, access_log: AccessLog
) -> None:
    """A client that reset its connection after its request was held, whose wait the room has
    not settled yet when the wake comes (its disconnect callback runs after the wake), is in its
    group: it is written nothing, and every other waiter of the group gets its answer."""
    run(gone_in_the_middle(access_log))
    statuses = Counter((line["status"], line["cache"]) for line in access_log.lines())
    # The first GET, and every held request logged once, the gone one as it was answered.
    assert statuses == {(200, "miss"): 1, (304, "hit"): 4}


async def gone_in_the_middle(access_log: AccessLog) -> None:
    kind = Kind("a", "gzip")
    async with (
        scoped_origin() as (origin, upstream),
        serve_proxy(Settings(upstream=upstream), access=access_log.logger) as proxy,
    ):
        origin.set("a", document("a", 1), PATH)
        tag = field(await ask(proxy.port, kind.request()), b"etag")
        assert tag is not None
        assert proxy.server is not None and proxy.server.front is not None
        front = proxy.server.front
        await eventually(lambda: not front.connections, what="the first GET's connection closed")
        # The victim's connection first, so that its disconnect future is made (and a
        # callback put on it) before its request is held: ours runs before the waiter's own.
        victim = socket.create_connection((HOST, proxy.port))
        await eventually(lambda: len(front.connections) == 1, what="the victim's connection")
        (conn,) = front.connections
        assert isinstance(conn, HttpConnection)
        waits = proxy.runtime.cache.waits
        woken: list[object] = []

        def wake_now(_: object) -> None:
            # The connection is lost (connection_lost ran) but its waiter is still held.
            (watch,) = waits._watches.values()
            woken.extend((conn.lost, waits.waiting, len(watch.waiters)))
            assert watch.seen is not None
            waits.settle_many(watch, list(watch.waiters), Wake("changed", entry=watch.seen))

        conn.disconnected().add_done_callback(wake_now)
        victim.sendall(kind.request(tag.decode(), WAIT))
        await eventually(lambda: waiting(proxy) == 1, what="the victim held")
        others = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(kind.request(tag.decode(), WAIT))
            others.append((reader, writer))
        await eventually(lambda: waiting(proxy) == 4, what="four requests held")
        await eventually(
            lambda: all(w.seen is not None for w in waits._watches.values()),
            what="the watch's first look at the stored response",
        )
        # A reset (SO_LINGER 0): the proxy's read fails, connection_lost, then the callbacks.
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.close()
        async with asyncio.timeout(10):
            answers = [await read_raw(reader) for reader, _ in others]
        assert woken == [True, 4, 4]
        assert waiting(proxy) == 0 and not waits._watches
        for raw in answers:
            # The stored response is the one they hold: the shared answer is its 304.
            assert raw.startswith(b"HTTP/1.1 304"), raw[:200]
            assert field(raw, b"preference-applied") == f"wait={WAIT}".encode()
            assert field(raw, b"etag") == tag
        assert len({comparable(raw) for raw in answers}) == 1
        for _, writer in others:
            writer.close()


@pytest.mark.parametrize("coding", ["gzip", None])
def test_a_range_waiter_is_answered_on_its_own_beside_its_group(
    run: Run, coding: str | None
) -> None:
    """A held request with ``Range`` gets its part (206), the others of the same coding the
    whole changed document: a range never takes a group's answer."""
    run(ranged_beside(coding))


async def ranged_beside(coding: str | None) -> None:
    kind = Kind("a", coding)
    async with (
        scoped_origin() as (origin, upstream),
        serve_proxy(Settings(upstream=upstream)) as proxy,
    ):
        origin.set("a", document("a", 1), PATH)
        tag = field(await ask(proxy.port, kind.request()), b"etag")
        assert tag is not None
        streams = []
        for ranged in (False, True, False):
            request = kind.request(tag.decode(), WAIT)
            if ranged:
                request = request[:-2] + b"Range: bytes=0-9\r\n\r\n"
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(request)
            streams.append((ranged, reader, writer))
        await eventually(lambda: waiting(proxy) == 3, what="three requests held")
        origin.set("a", document("a", 2), PATH)
        posted = await ask(proxy.port, Kind("a", None, method="POST").request()[:-2]
                           + b"Content-Length: 0\r\n\r\n")  # fmt: skip
        assert posted.startswith(b"HTTP/1.1 204")
        async with asyncio.timeout(10):
            answers = [(ranged, await read_raw(reader)) for ranged, reader, _ in streams]
        for ranged, raw in answers:
            if ranged:
                assert raw.startswith(b"HTTP/1.1 206"), raw[:200]
                assert len(raw.partition(b"\r\n\r\n")[2]) == 10
            else:
                assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
                assert json.loads(body_of(raw)) == json.loads(document("a", 2))
        for _, _, writer in streams:
            writer.close()
