"""HTTP/2 to clients with real clients on sockets: httpx (``http2=True``), curl and h2load-free
checks of what each stream shares with HTTP/1.1: the cache, the credential scope, ``Vary``,
content coding, request bodies, streamed upstream bodies, the admin listener and the access log.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from proxy.ops.config import Settings
from tests.conftest import Harness, MakeHarness, ServeOrigin
from tests.front.test_front import BIG, Origin, self_signed
from tests.support.access import AccessLog
from tests.support.h2kit import H2Client
from tests.support.rawkit import serve_proxy
from tests.support.waiting import eventually

curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
async def origin(serve_origin: ServeOrigin) -> tuple[Origin, str]:
    """``tests.front.test_front``'s origin: answers naming their target, ``/big`` is 4 MiB."""
    o = Origin()
    return o, await serve_origin(o.handle)


def h2c(port: int, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client speaking HTTP/2 with prior knowledge (no HTTP/1.1 at all)."""
    kwargs.setdefault("timeout", 20)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", http1=False, http2=True, **kwargs)


async def test_a_miss_then_a_hit_over_one_http2_connection(harness: Harness) -> None:
    harness.origin.put("/v1/audio/transcribe/a", '{"status":"completed"}')
    async with h2c(harness.client.port) as client:
        auth = {"Authorization": "Bearer tok-a"}
        first = await client.get("/v1/audio/transcribe/a", headers=auth)
        second = await client.get("/v1/audio/transcribe/a", headers=auth)
    assert first.http_version == second.http_version == "HTTP/2"
    assert first.status_code == second.status_code == 200
    assert second.content == b'{"status":"completed"}'
    assert "fwd=uri-miss" in first.headers["cache-status"]
    assert "; hit" in second.headers["cache-status"] and "age" in second.headers
    assert "connection" not in second.headers and "transfer-encoding" not in second.headers
    assert harness.origin.count("/v1/audio/transcribe/a") == 1
    requests = harness.metric("cacheproxy_requests_total", route="transcription", result="hit")
    assert requests == 1
    forwarded = harness.origin.requests[0]
    assert forwarded.headers["Via"] == "2 aitronos-cache-proxy"
    assert forwarded.headers["Host"] != "proxy.test"  # :authority is not sent upstream


async def test_credential_scope_vary_and_conditionals_apply_per_stream(harness: Harness) -> None:
    harness.origin.put("/doc", "shared?", extra={"Vary": "Accept-Language"})
    async with h2c(harness.client.port) as client:

        async def get(token: str, language: str, **extra: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}", "Accept-Language": language, **extra}
            return await client.get("/doc", headers=headers)

        a_en, b_en, a_en_again, a_de = await asyncio.gather(
            get("a", "en"), get("b", "en"), get("a", "en"), get("a", "de")
        )
        assert all(r.status_code == 200 for r in (a_en, b_en, a_en_again, a_de))
        hit = await get("a", "en")
        assert "; hit" in hit.headers["cache-status"]
        not_modified = await get("a", "en", **{"If-None-Match": hit.headers["etag"]})
        assert not_modified.status_code == 304 and not_modified.content == b""
    # One fetch per (credential scope, Accept-Language): a, b and a/de; the repeat coalesced.
    assert harness.origin.count("/doc") == 3


async def test_content_coding_is_negotiated_per_stream(make_harness: MakeHarness) -> None:
    harness = await make_harness()
    text = json.dumps({"words": ["transcription"] * 400})
    harness.origin.put("/coded", text, extra={"Content-Type": "application/json"})
    async with h2c(harness.client.port) as client:
        await client.get("/coded", headers={"Authorization": "Bearer t"})
        plain = await client.get(
            "/coded", headers={"Authorization": "Bearer t", "Accept-Encoding": "identity"}
        )
        coded = await client.get(
            "/coded", headers={"Authorization": "Bearer t", "Accept-Encoding": "gzip"}
        )
    assert "content-encoding" not in plain.headers and plain.text == text
    assert coded.headers["content-encoding"] == "gzip"
    assert coded.headers["vary"].lower().count("accept-encoding") == 1
    assert coded.text == text and coded.num_bytes_downloaded < len(text) // 4  # decoded by httpx


async def test_request_bodies_and_large_streamed_answers_follow_flow_control(
    origin: tuple[Origin, str],
) -> None:
    # max_entry_bytes below BIG: the 4 MiB answer is streamed from upstream, not stored.
    settings = Settings(upstream=origin[1], max_entry_bytes=1024 * 1024)
    async with serve_proxy(settings) as running, h2c(running.port) as client:
        posted = await client.post("/upload", content=b"x" * 300_000)
        assert posted.status_code == 200 and posted.json()["length"] == 300_000
        big, other = await asyncio.gather(client.get("/big"), client.get("/small"))
        assert big.status_code == 200 and big.content == b"b" * BIG
        assert other.json()["target"] == "/small"
        assert "fwd=uri-miss" in big.headers["cache-status"]
        head = await client.head("/small")
        assert head.status_code == 200 and head.content == b""


async def test_tls_offers_h2_and_http11_by_alpn(origin: tuple[Origin, str], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(upstream=origin[1], tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    async with serve_proxy(settings) as running:
        base = f"https://localhost:{running.port}"
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            h2_answer = await client.get(f"{base}/secure")
        async with httpx.AsyncClient(http2=False, verify=context) as client:
            h1_answer = await client.get(f"{base}/secure")
        assert h2_answer.http_version == "HTTP/2" and h1_answer.http_version == "HTTP/1.1"
        assert h2_answer.json()["target"] == "/secure" == h1_answer.json()["target"]
        assert "; hit" in h1_answer.headers["cache-status"]
        assert origin[0].forwarded[0]["X-Forwarded-Proto"] == "https"
    async with serve_proxy(replace(settings, http2=False)) as running:
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            answer = await client.get(f"https://localhost:{running.port}/secure")
        assert answer.http_version == "HTTP/1.1"  # --no-http2: ALPN offers http/1.1 only


async def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl's exit code and ``<status> <version>`` of each URL (each body to /dev/null)."""
    argv = ["curl", "-sS", "-w", "%{http_code} %{http_version};"]
    for arg in args:
        argv += ["-o", "/dev/null", arg] if arg.startswith(("http://", "https://")) else [arg]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)


@curl
async def test_curl_over_h2c_tls_and_the_h2c_upgrade(
    origin: tuple[Origin, str], tmp_path: Path
) -> None:
    async with serve_proxy(Settings(upstream=origin[1])) as running:
        prior = await _curl("--http2-prior-knowledge", f"{running.url}/a")
        assert (prior.returncode, prior.stdout) == (0, "200 2;"), prior.stderr
        # --http2 on http:// asks Upgrade: h2c; it is answered over HTTP/1.1 (RFC 9110 §7.8).
        upgrade = await _curl("--http2", f"{running.url}/a", f"{running.url}/b")
        assert (upgrade.returncode, upgrade.stdout) == (0, "200 1.1;200 1.1;"), upgrade.stderr
    cert, key = self_signed(tmp_path)
    settings = Settings(upstream=origin[1], tls_cert=str(cert), tls_key=str(key))
    async with serve_proxy(settings) as running:
        url = f"https://localhost:{running.port}/a"
        tls = await _curl("--http2", "--cacert", str(cert), url)
        assert (tls.returncode, tls.stdout) == (0, "200 2;"), tls.stderr


async def test_the_admin_listener_and_health_checks_speak_h2c(origin: tuple[Origin, str]) -> None:
    settings = Settings(upstream=origin[1], admin_port=0)
    async with serve_proxy(settings) as running:
        async with h2c(running.port) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/metrics")).status_code == 404  # moved to the admin port
            await client.get("/x")
        async with h2c(running.admin_port or 0) as client:
            metrics = await client.get("/metrics")
            assert metrics.http_version == "HTTP/2" and "cacheproxy_requests_total" in metrics.text
            assert (await client.get("/readyz")).status_code == 200


async def test_each_stream_gets_an_access_log_line(
    origin: tuple[Origin, str], access_log: AccessLog
) -> None:
    async with serve_proxy(Settings(upstream=origin[1]), access=access_log.logger) as running:
        async with h2c(running.port) as client:
            await asyncio.gather(*(client.get(f"/log/{i}?secret=1") for i in range(3)))
        await access_log.count(3)
    lines = access_log.lines()
    assert sorted(line["path"] for line in lines) == ["/log/0", "/log/1", "/log/2"]
    assert all(line["status"] == 200 and "secret" not in json.dumps(line) for line in lines)


async def test_without_http2_the_preface_is_refused_as_http11(origin: tuple[Origin, str]) -> None:
    async with serve_proxy(Settings(upstream=origin[1], http2=False)) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert status.startswith(b"HTTP/1.1 400")


# -- item 2: long polls beyond the six-connection limit ------------------------------------------


async def test_fifty_long_polls_on_one_connection_are_each_woken_by_their_own_change(
    serve_origin: ServeOrigin,
) -> None:
    """A browser's six HTTP/1.1 connections would hold six polls; one HTTP/2 connection holds
    fifty, and each answers when (and only when) its own transcription changes. (The client is
    h2 on a socket: httpx's HTTP/2 reads one stream at a time and would delay the answers.)"""
    from tests.cache.test_long_poll import ScopedOrigin

    origin = ScopedOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    paths = [f"/v1/audio/transcribe/job-{i}" for i in range(50)]
    for i, path in enumerate(paths):
        origin.set("a", b'{"status":"processing","n":%d}' % i, path)
    auth = ("authorization", "Bearer a")
    upstream = await serve_origin(app)
    async with serve_proxy(Settings(upstream=upstream)) as running:
        client = await H2Client.connect(running.port)
        firsts = [client.request(path, auth) for path in paths]
        await client.flush()
        await client.until(lambda c: all(c.response(sid)[2] for sid in firsts))
        tags = [client.response(sid)[0][b"etag"].decode() for sid in firsts]
        polls = [
            client.request(path, auth, ("if-none-match", tag), ("prefer", "wait=30"))
            for path, tag in zip(paths, tags, strict=True)
        ]
        await client.flush()

        def waiting() -> float:
            return running.registry.get_sample_value("cacheproxy_waiting_requests") or 0

        await eventually(lambda: waiting() == 50, within=20, what="fifty held polls")
        assert running.connections == 1
        changed, unchanged = range(0, 50, 2), range(1, 50, 2)
        for i in changed:
            origin.set("a", b'{"status":"completed","n":%d}' % i, paths[i])
        await client.until(lambda c: all(c.response(polls[i])[2] for i in changed), timeout=20)
        for i in changed:
            head, body, _ = client.response(polls[i])
            assert head[b":status"] == b"200" and head[b"preference-applied"] == b"wait=30"
            assert json.loads(body) == {"status": "completed", "n": i}
        assert not any(client.response(polls[i])[0] for i in unchanged)
        assert waiting() == 25
        for i in unchanged:
            origin.set("a", b'{"status":"failed","n":%d}' % i, paths[i])
        await client.until(lambda c: all(c.response(polls[i])[2] for i in unchanged), timeout=20)
        for i in unchanged:
            assert json.loads(client.response(polls[i])[1]) == {"status": "failed", "n": i}
        await client.close()
        assert (
            running.registry.get_sample_value("cacheproxy_long_poll_total", {"outcome": "changed"})
            == 50
        )


async def test_server_sent_events_stream_over_http2(serve_origin: ServeOrigin) -> None:
    """A streamed body (here an event stream) goes out as DATA frames as it is made: one event
    per change, ending at the final status."""
    from tests.cache.test_long_poll import ScopedOrigin

    origin = ScopedOrigin()
    path = "/v1/audio/transcribe/job-sse"
    origin.set("a", json.dumps({"success": True, "data": {"status": "processing"}}).encode(), path)
    upstream = await serve_origin(origin.handle)
    async with serve_proxy(Settings(upstream=upstream)) as running:
        client = await H2Client.connect(running.port)
        sid = client.request(path, ("authorization", "Bearer a"), ("accept", "text/event-stream"))
        await client.flush()
        await client.until(lambda c: b"event: processing" in c.response(sid)[1])
        head, _, ended = client.response(sid)
        assert head[b":status"] == b"200" and head[b"content-type"].startswith(b"text/event-stream")
        assert not ended
        done = json.dumps({"success": True, "data": {"status": "completed"}}).encode()
        origin.set("a", done, path)
        await client.until(lambda c: c.response(sid)[2], timeout=20)
        assert b"event: completed" in client.response(sid)[1]
        await client.close()
