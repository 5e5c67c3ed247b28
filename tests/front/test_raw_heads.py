"""Heads answered by their exact bytes (``FastPath.heads``), over real sockets: the same answers,
metrics and access lines as when parsed, and every framing case falls back to the parser."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proxy.core.headers import format_http_date
from proxy.front.prepared import FastPath
from proxy.ops.config import Settings
from tests.conftest import FakeClock, origin_fixture
from tests.support.rawkit import HOST, RawResponse, RunningProxy, read_response, serve_proxy
from tests.support.waiting import eventually


class Origin:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.clock = FakeClock()  # the proxy's too
        self.version = 1

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        payload: dict[str, Any] = {"target": request.raw_path, "version": self.version}
        if request.path.startswith("/big/"):
            payload["padding"] = "x" * 8000
        fields = {"Cache-Control": "public, max-age=60", "ETag": '"t"'}
        fields["Date"] = format_http_date(self.clock.now)
        return web.json_response(payload, headers=fields)


origin = origin_fixture(Origin)


def get(target: str, *lines: str, method: str = "GET") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: proxy.test", "Authorization: Bearer a", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


HEAD_A = get("/a")


@pytest.fixture
async def proxy(origin: tuple[Origin, str]) -> AsyncIterator[RunningProxy]:
    async with serve_proxy(Settings(upstream=origin[1]), clock=origin[0].clock) as running:
        yield running


def fast(running: RunningProxy) -> FastPath:
    assert running.server is not None and running.server.front is not None
    path = running.server.front.fast
    assert path is not None
    return path


async def ask(reader: Any, writer: Any, data: bytes, count: int = 1) -> list[RawResponse]:
    writer.write(data)
    async with asyncio.timeout(10):
        return [await read_response(reader) for _ in range(count)]


async def memoised(running: RunningProxy, head: bytes) -> tuple[Any, Any]:
    """A connection on which ``head`` was answered twice (stored, then prepared) and once
    inline, so its bytes are memoised."""
    reader, writer = await asyncio.open_connection(HOST, running.port)
    for _ in range(3):
        (answer,) = await ask(reader, writer, head)
        assert answer.status == 200
    assert head in fast(running).heads
    return reader, writer


@pytest.fixture
async def conn(proxy: RunningProxy) -> AsyncIterator[tuple[Any, Any]]:
    """A connection on which ``HEAD_A`` is memoised by its bytes."""
    reader, writer = await memoised(proxy, HEAD_A)
    yield reader, writer
    writer.close()


def same(a: RawResponse, b: RawResponse) -> None:
    assert (a.status, a.body) == (b.status, b.body)
    assert {k: v for k, v in a.headers.items() if k != "date"} == {
        k: v for k, v in b.headers.items() if k != "date"
    }


async def test_a_memoised_head_gets_the_parsed_answer(proxy: RunningProxy) -> None:
    head = get("/a")
    reader, writer = await memoised(proxy, head)
    (parsed,) = await ask(reader, writer, head + b"")  # from its bytes now
    other, other_writer = await asyncio.open_connection(HOST, proxy.port)
    (again,) = await ask(other, other_writer, head)
    same(parsed, again)
    assert "hit" in parsed.headers["cache-status"]
    writer.close()
    other_writer.close()


async def test_pipelined_mixtures_and_split_heads_are_answered_in_order(
    conn: tuple[Any, Any], origin: tuple[Origin, str]
) -> None:
    (reader, writer), head = conn, HEAD_A
    burst = head * 3 + get("/b") + head + get("/a", 'If-None-Match: "t"')
    answers = await ask(reader, writer, burst, 6)  # ends with a whole head: read by bytes
    assert [a.status for a in answers] == [200, 200, 200, 200, 200, 304]
    assert [json.loads(a.body)["target"] for a in answers[:5]] == ["/a"] * 3 + ["/b", "/a"]
    answers = await ask(reader, writer, head * 2 + head[:7], 2)  # ends mid-head: parsed
    assert [json.loads(a.body)["target"] for a in answers] == ["/a"] * 2
    (last,) = await ask(reader, writer, head[7:])  # the rest of a split head
    assert last.status == 200 and json.loads(last.body)["target"] == "/a"
    assert origin[0].seen == ["/a", "/b"]


async def test_connection_close_a_credential_and_head_are_decided_as_parsed(
    proxy: RunningProxy, conn: tuple[Any, Any], origin: tuple[Origin, str]
) -> None:
    (reader, writer), head = conn, HEAD_A
    writer.write(get("/a", method="HEAD") * 2)  # the second from its bytes
    for _ in range(2):
        answer = await read_response(reader, head=True)
        assert answer.status == 200 and answer.body == b""
    other = head.replace(b"Bearer a", b"Bearer b")
    (answer,) = await ask(reader, writer, other)
    assert answer.status == 200 and origin[0].seen == ["/a", "/a"]  # its own scope
    closing = get("/a", "Connection: close")
    for _ in range(3):
        r, w = await asyncio.open_connection(HOST, proxy.port)
        (answer,) = await ask(r, w, closing)
        assert answer.closed and await r.read() == b""
        w.close()
    assert closing not in fast(proxy).heads


async def test_a_stale_or_evicted_entry_is_not_answered_from_the_head(
    proxy: RunningProxy, conn: tuple[Any, Any], origin: tuple[Origin, str]
) -> None:
    (reader, writer), head = conn, HEAD_A
    origin[0].clock.advance(61)
    (answer,) = await ask(reader, writer, head)
    assert answer.status == 200 and origin[0].seen == ["/a", "/a"]  # stale: asked again
    proxy.runtime.cache.store.clear()  # type: ignore[attr-defined]
    (answer,) = await ask(reader, writer, head)
    assert answer.status == 200 and origin[0].seen == ["/a", "/a", "/a"]


async def test_metrics_and_access_lines_are_the_parsed_paths(
    origin: tuple[Origin, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "proxy.access")
    settings = Settings(upstream=origin[1])
    async with serve_proxy(settings, access=logging.getLogger("proxy.access")) as running:
        head = get("/log?token=secret")
        reader, writer = await memoised(running, head)

        def hits() -> float:
            value = running.registry.get_sample_value(
                "cacheproxy_requests_total", {"route": "other", "result": "hit"}
            )
            return value or 0.0

        before = hits()
        await ask(reader, writer, head * 2, 2)
        assert hits() == before + 2
        writer.close()

        def lines() -> list[dict[str, Any]]:
            return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]

        await eventually(lambda: len(lines()) == 5, what="five access lines")
    fields = [{k: v for k, v in line.items() if k != "duration_ms"} for line in lines()]
    assert fields[1:] == [{"method": "GET", "path": "/log", "status": 200, "cache": "hit",
                           "bytes": fields[0]["bytes"]}] * 4  # fmt: skip
    assert "secret" not in caplog.text and "Bearer" not in caplog.text


async def test_a_replayed_answer_follows_the_store_and_the_clock(
    proxy: RunningProxy, conn: tuple[Any, Any], origin: tuple[Origin, str]
) -> None:
    """Once a head's whole answer is kept (``FastPath.replay``), a new ``Age`` second or a new
    stored record (replaced from another connection, the head not asked meanwhile) is written
    as the full path would, never the kept bytes."""
    (reader, writer), head = conn, HEAD_A
    for _ in range(3):  # kept, then replayed
        (answer,) = await ask(reader, writer, head)
        assert answer.headers["age"] == "0" and answer.json()["version"] == 1
    origin[0].clock.advance(5)
    (answer,) = await ask(reader, writer, head)
    assert answer.headers["age"] == "5" and answer.headers["cache-status"].endswith("ttl=55")
    origin[0].version = 2
    other, other_writer = await asyncio.open_connection(HOST, proxy.port)
    (fetched,) = await ask(other, other_writer, get("/a", "Cache-Control: no-cache"))
    assert fetched.json()["version"] == 2
    other_writer.close()
    for _ in range(3):
        (answer,) = await ask(reader, writer, head)
        assert answer.json()["version"] == 2 and answer.headers["age"] == "0"
    assert origin[0].seen == ["/a", "/a"]


async def test_replayed_304s_are_counted_and_a_head_request_gets_no_body(
    proxy: RunningProxy, origin: tuple[Origin, str]
) -> None:
    conditional = get("/a", 'If-None-Match: "t"')
    reader, writer = await asyncio.open_connection(HOST, proxy.port)

    def not_modified() -> float:
        return proxy.registry.get_sample_value("cacheproxy_not_modified_total") or 0.0

    statuses = [(await ask(reader, writer, conditional))[0].status for _ in range(6)]
    assert statuses == [304] * 6 and not_modified() == 6
    writer.write(get("/a", method="HEAD") * 5)  # the last ones replayed
    for _ in range(5):
        answer = await read_response(reader, head=True)
        assert answer.status == 200 and answer.body == b""
        assert int(answer.headers["content-length"]) > 0
    (answer,) = await ask(reader, writer, HEAD_A)  # nothing left over from the HEADs
    assert answer.status == 200 and answer.json()["target"] == "/a"
    writer.close()
    assert origin[0].seen == ["/a"]


async def test_kept_answers_stay_within_the_memos_budget(origin: tuple[Origin, str]) -> None:
    """The answers the heads keep (copies of head and body) count with the memo's records
    against its budget: past it the heads start over rather than grow."""
    async with serve_proxy(Settings(upstream=origin[1], cache_max_bytes=64 * 1024)) as running:
        path = fast(running)
        reader, writer = await asyncio.open_connection(HOST, running.port)
        kept = 0
        for n in range(20):
            head = get(f"/big/{n}")
            for _ in range(5):  # stored, prepared, remembered, kept, replayed
                (answer,) = await ask(reader, writer, head)
                assert answer.status == 200 and answer.json()["target"] == f"/big/{n}"
            assert path.memo_bytes + path.replay_bytes <= path.memo_budget
            kept = max(kept, path.replay_bytes)
        writer.close()
    assert kept > 2 * 8000  # several answers were kept at once before the heads started over
