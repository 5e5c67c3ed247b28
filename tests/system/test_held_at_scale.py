"""Many long polls woken by one change, through real sockets; the descriptor limit at start.

Held requests are parked without a task each and answered from one shared answer per kind of
request (``proxy.cache.longpoll``); these tests hold requests of several kinds at once (codings,
HEAD, keep-alive or not, HTTP/1.0) and check that every one gets its own correct answer, that
keep-alive connections go on serving afterwards, and that the access log says what it said
before. The descriptor limit is raised by ``python -m proxy`` itself, under ``prlimit``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.ops.config import Settings
from proxy.ops.limits import (
    DescriptorLimit,
    limit_report,
    max_connections,
    max_waiters,
    reserve,
)
from tests.support.access import AccessLog
from tests.support.rawkit import HOST, read_response, serve_app, serve_proxy
from tests.support.waiting import eventually

PATH = "/v1/audio/transcribe/many"
ROOT = Path(__file__).resolve().parents[2]


class Versioned:
    """An origin whose one document changes when told; gzip-able, so codings are derived."""

    def __init__(self) -> None:
        self.version = 1

    def body(self) -> bytes:
        return json.dumps({"status": "processing", "v": self.version, "pad": "x" * 600}).encode()

    async def handle(self, request: web.Request) -> web.Response:
        tag = f'"v{self.version}"'
        headers = {"ETag": tag, "Cache-Control": "public, max-age=3600"}
        if request.method != "GET":
            return web.Response(status=204)
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body(), headers=headers, content_type="application/json")


@pytest.fixture
async def versioned() -> AsyncIterator[tuple[Versioned, str]]:
    origin = Versioned()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with serve_app(app) as url:
        yield origin, url


#: The kinds of held request: (method, HTTP version, Accept-Encoding, Connection).
KINDS = [
    ("GET", "1.1", "gzip", ""),
    ("GET", "1.1", "", ""),
    ("GET", "1.1", "br;q=0, gzip", "close"),
    ("HEAD", "1.1", "gzip", ""),
    ("GET", "1.0", "identity", "keep-alive"),
]


def held_request(kind: tuple[str, str, str, str], etag: str, wait: int = 30) -> bytes:
    method, version, coding, connection = kind
    lines = [f"{method} {PATH} HTTP/{version}", f"Host: {HOST}", "Authorization: Bearer t",
             f"If-None-Match: {etag}", f"Prefer: wait={wait}"]  # fmt: skip
    if coding:
        lines.append(f"Accept-Encoding: {coding}")
    if connection:
        lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_every_waiter_one_change_wakes_gets_its_own_correct_answer(
    versioned: tuple[Versioned, str], access_log: AccessLog
) -> None:
    origin, upstream = versioned
    per_kind = 40
    async with serve_proxy(Settings(upstream=upstream), access=access_log.logger) as running:
        first = await _get(running.port, held_request(KINDS[0], '"none"', wait=0))
        assert first.status == 200 and first.headers["etag"] == '"v1"'
        clients = []
        for kind in KINDS * per_kind:
            reader, writer = await asyncio.open_connection(HOST, running.port)
            writer.write(held_request(kind, '"v1"'))
            clients.append((kind, reader, writer))
        waits = running.runtime.cache.waits
        await eventually(lambda: waits.waiting == len(clients), what="every request held")
        origin.version = 2
        _, writer = await asyncio.open_connection(HOST, running.port)
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer t\r\n"
                     "Content-Length: 0\r\n\r\n".encode())  # fmt: skip
        new = origin.body()
        for kind, reader, client in clients:
            method, version, coding, connection = kind
            answer = await asyncio.wait_for(read_response(reader, head=method == "HEAD"), 10)
            assert answer.status == 200, kind
            assert "v2" in answer.headers["etag"], (kind, answer.headers)
            assert answer.headers["preference-applied"] == "wait=30"
            assert 'detail="waited"' in answer.headers["cache-status"]
            gzipped = answer.headers.get("content-encoding") == "gzip"
            # gzip only to who accepts it (whether it is derived yet is the store's affair).
            assert not gzipped or "gzip" in coding, (kind, answer.headers)
            if method == "HEAD":
                assert answer.body == b""
            else:
                assert (gzip.decompress(answer.body) if gzipped else answer.body) == new, kind
                assert int(answer.headers["content-length"]) == len(answer.body)
            keep = connection != "close" and (version == "1.1" or connection == "keep-alive")
            assert answer.headers.get("connection", "").lower() == (
                "" if version == "1.1" and keep else "keep-alive" if keep else "close"
            ), (kind, answer.headers)
            if keep:
                # The connection goes on: the next request on it is answered as usual.
                client.write(held_request(kind, '"v2"', wait=0))
                again = await asyncio.wait_for(read_response(reader, head=method == "HEAD"), 10)
                assert again.status in (200, 304), kind
            client.close()
        assert waits.waiting == 0
        held = len(clients)
        await access_log.until(
            lambda lines: sum(line["status"] == 200 for line in lines) >= held, "the woken logged"
        )
    woken = [line for line in access_log.lines() if line["path"] == PATH and line["status"] == 200]
    assert {frozenset(line) for line in woken} == {
        frozenset({"method", "path", "status", "cache", "duration_ms", "bytes"})
    }
    assert {line["cache"] for line in woken} == {"hit", "miss"}  # the first GET, the woken
    gets = [line for line in woken if line["method"] == "GET" and line["cache"] == "hit"]
    heads = [line for line in woken if line["method"] == "HEAD"]
    assert len(gets) >= 4 * per_kind and len(heads) == per_kind
    assert all(line["bytes"] == 0 for line in heads)
    assert all(line["bytes"] > 0 for line in gets)


async def test_a_held_request_that_times_out_is_logged_and_answered_as_before(
    versioned: tuple[Versioned, str], access_log: AccessLog
) -> None:
    settings = Settings(upstream=versioned[1], max_wait=0.2)
    async with serve_proxy(settings, access=access_log.logger) as running:
        await _get(running.port, held_request(KINDS[0], '"none"', wait=0))
        answer = await _get(running.port, held_request(KINDS[0], '"v1"', wait=5))
        assert answer.status == 304 and answer.headers["preference-applied"] == "wait=0"
        await access_log.count(2)
    line = access_log.lines()[1]
    assert {k: v for k, v in line.items() if k != "duration_ms"} == {
        "method": "GET", "path": PATH, "status": 304, "cache": "hit", "bytes": 0,
    }  # fmt: skip
    assert line["duration_ms"] >= 150  # the wait is in the access log's duration, as before


async def _get(port: int, request: bytes) -> Any:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        return await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()


# -- the descriptor limit ------------------------------------------------------------------------


def test_the_default_waiter_limit_is_the_connection_cap() -> None:
    settings = Settings()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert max_connections(settings) == max(16, soft - reserve(settings))
    assert max_waiters(settings) == max_connections(settings)
    assert max_waiters(Settings(max_waiters=5)) == 5
    assert max_connections(Settings(max_connections=10)) == 10


def test_a_connection_cap_past_the_hard_limit_is_one_clear_warning() -> None:
    settings = Settings(max_connections=10**7)
    warning, line = limit_report(settings, DescriptorLimit(1024, 4096, 4096))
    assert warning
    assert line.startswith("--max-connections 10000000 needs ")
    assert "hard limit 4096" in line and "ulimit -Hn" in line


def _serve_under(limits: str, *options: str) -> tuple[str, int]:
    """``python -m proxy`` under ``prlimit --nofile=limits``: its start-up log and the soft
    limit it runs with, read from ``/proc``."""
    assert shutil.which("prlimit"), "prlimit (util-linux) is needed"
    command = ["prlimit", f"--nofile={limits}", "--", sys.executable, "-m", "proxy",
               "--upstream", "http://127.0.0.1:9", "--port", "0", *options]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stderr is not None
        log = []
        for line in process.stderr:
            log.append(line)
            if "descriptor limit" in line or "--max-connections" in line:
                break
        limits_text = Path(f"/proc/{process.pid}/limits").read_text()
        soft = int(re.search(r"Max open files\s+(\d+)", limits_text)[1])  # type: ignore[index]
        return "".join(log), soft
    finally:
        process.terminate()
        process.wait(10)


def test_the_proxy_raises_its_soft_descriptor_limit_to_the_hard_limit_at_start() -> None:
    log, soft = _serve_under("256:4096")
    assert soft == 4096
    assert "raised from 256, hard limit 4096" in log
    connections = 4096 - reserve(Settings())
    assert f"up to {connections} client connections, {connections} held long polls" in log


def test_a_cap_the_hard_limit_cannot_hold_is_said_in_one_warning_line() -> None:
    log, soft = _serve_under("256:2048", "--max-connections", "100000")
    assert soft == 2048
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, log
    assert "--max-connections 100000 needs " in warnings[0]
    assert f"serving at most {2048 - reserve(Settings())} connections" in warnings[0]


def test_every_worker_raises_and_reports_its_own_descriptor_limit() -> None:
    # Each worker is its own process with its own RLIMIT_NOFILE (the sum is what lets a replica
    # hold more than one process may): each must say what it got, not worker 0 alone.
    assert shutil.which("redis-server"), "redis-server is needed for the private cache"
    command = ["prlimit", "--nofile=256:4096", "--", sys.executable, "-m", "proxy",
               "--upstream", "http://127.0.0.1:9", "--port", "0", "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines: dict[str, str] = {}
    log = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            found = re.search(r" worker=(\d+) descriptor limit ", line)
            if found:
                lines[found[1]] = line
            if "Running on" in line and "workers)" in line:
                break
    finally:
        process.terminate()
        process.wait(30)
    assert set(lines) == {"0", "1"}, "".join(log)
    for line in lines.values():
        assert "raised from 256, hard limit 4096" in line
