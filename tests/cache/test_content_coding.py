"""Content coding through real sockets: one stored response, served in each client's coding.

Against the test origin (which sends exactly the coding a test sets) and against the simulator
acting as a compressing origin front (``--compress``, ``--narrow-304-vary``, ``--cors``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.core.coding import available_codings, decode, encode
from proxy.tools.fleet import SPELLINGS
from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.conftest import FakeClock, Harness, MakeHarness
from tests.support.coding import JSON, PATH, fetch, plain

CLIENT_CODINGS = {"": "identity", "gzip": "gzip", "br": "br", "zstd": "zstd"}


#: Every coding this install can prepare (the default is gzip alone, for memory).
ALL_CODINGS = available_codings()


@pytest.fixture
def make_harness(make_harness: MakeHarness) -> MakeHarness:
    """Proxies that prepare every coding, unless a test says otherwise."""

    async def make(**settings: Any) -> Harness:
        settings.setdefault("compress_codings", ALL_CODINGS)
        return await make_harness(**settings)

    return make


@pytest.mark.parametrize("origin_coding", ["identity", *available_codings()])
async def test_every_client_gets_its_coding_from_one_upstream_fetch(
    harness: Harness, raw: aiohttp.ClientSession, origin_coding: str
) -> None:
    body = JSON if origin_coding == "identity" else encode(origin_coding, JSON)
    extra = {"Content-Type": "application/json", "Vary": "Accept-Encoding"}
    if origin_coding != "identity":
        extra["Content-Encoding"] = origin_coding
    resource = harness.origin.put(PATH, body, extra=extra)
    for accept, expected in CLIENT_CODINGS.items():
        for method in ("GET", "HEAD"):
            response, received = await fetch(raw, harness, accept, method)
            assert response.status == 200
            assert response.headers.get("Content-Encoding", "identity") == expected
            assert "Accept-Encoding" in response.headers["Vary"]
            etag = response.headers["ETag"]
            if expected == origin_coding:
                assert etag == resource.tag
            else:
                assert etag == f'W/"{resource.tag[1:-1]}-{expected}"'
            if method == "GET":
                assert plain(response, received) == JSON
                assert int(response.headers["Content-Length"]) == len(received)
                length = len(received)
            else:
                assert received == b""
                assert int(response.headers["Content-Length"]) == length
    assert harness.origin.count(PATH) == 1
    assert harness.origin.requests[0].headers["Accept-Encoding"] == ", ".join(available_codings())


async def test_a_gzip_client_gets_at_most_a_third_of_the_identity_bytes(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    _, identity = await fetch(raw, harness, "")
    _, gzipped = await fetch(raw, harness, "gzip")
    assert len(gzipped) * 3 <= len(identity)
    assert harness.metric("cacheproxy_response_bytes_total") == len(identity) + len(gzipped)


async def test_derived_codings_are_computed_when_stored_and_counted_in_the_budget(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    await fetch(raw, harness, "")
    (entry,) = await harness.proxy.store.get(PATH) or ()
    first, *others = available_codings()
    # Stored once in the first configured coding; identity is not kept but decoded when asked.
    assert entry.coding == first and decode(first, entry.body, len(JSON)) == JSON
    assert [rep.coding for rep in entry.derived] == others
    counted = harness.metric("cacheproxy_cache_bytes")
    stored = len(entry.body) + sum(len(rep.body or b"") for rep in entry.derived)
    assert stored < len(JSON)
    assert counted >= stored + harness.proxy.bodies.memo_bytes
    await fetch(raw, harness, "gzip")
    (again,) = await harness.proxy.store.get(PATH) or ()
    assert again is entry  # a hit in another coding changed nothing stored


async def test_small_bodies_and_other_types_pass_uncompressed(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    harness.origin.put(PATH, b'{"a": 1}', extra={"Content-Type": "application/json"})
    harness.origin.put("/image", b"\x89PNG" * 500, extra={"Content-Type": "image/png"})
    for path in (PATH, "/image"):
        response, _ = await fetch(raw, harness, "gzip", path=path)
        assert "Content-Encoding" not in response.headers
        assert "Vary" not in response.headers


async def test_compress_types_and_min_bytes_are_configurable(
    make_harness: MakeHarness, raw: aiohttp.ClientSession
) -> None:
    harness = await make_harness(compress_types=("image/png",), compress_min_bytes=10)
    harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    harness.origin.put("/image", b"\x89PNG" * 500, extra={"Content-Type": "image/png"})
    response, _ = await fetch(raw, harness, "gzip")
    assert "Content-Encoding" not in response.headers
    response, body = await fetch(raw, harness, "gzip", path="/image")
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"\x89PNG" * 500


async def test_no_transform_is_respected(harness: Harness, raw: aiohttp.ClientSession) -> None:
    """RFC 9110 §7.7: no compressing, and no decoding of what the origin compressed."""
    harness.origin.put(
        PATH,
        JSON,
        cache_control="public, max-age=60, no-transform",
        extra={"Content-Type": "application/json"},
    )
    response, body = await fetch(raw, harness, "gzip, br")
    assert "Content-Encoding" not in response.headers and body == JSON
    coded = gzip.compress(JSON)
    harness.origin.put(
        "/coded",
        coded,
        cache_control="public, max-age=60, no-transform",
        extra={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    response, body = await fetch(raw, harness, "gzip", path="/coded")
    assert response.headers["Content-Encoding"] == "gzip" and body == coded
    assert harness.origin.count("/coded") == 1
    # A client that cannot read gzip is not given the stored gzip body: the request goes to the
    # origin in the client's own terms (this origin ignores them; a real one would not).
    response, body = await fetch(raw, harness, "", path="/coded")
    assert harness.origin.count("/coded") == 2
    assert harness.origin.requests[-1].headers["Accept-Encoding"] == ""
    assert "fwd=vary-miss" in response.headers["Cache-Status"]


async def test_if_none_match_is_answered_for_the_representation_the_client_holds(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    resource = harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    gz, _ = await fetch(raw, harness, "gzip")
    gzip_tag = gz.headers["ETag"]
    assert gzip_tag == f'W/"{resource.tag[1:-1]}-gzip"'
    again, body = await fetch(raw, harness, "gzip", **{"If-None-Match": gzip_tag})
    assert again.status == 304 and body == b""
    assert again.headers["ETag"] == gzip_tag
    assert "Accept-Encoding" in again.headers["Vary"]
    # A client that holds the identity representation and now accepts br is still current.
    held, _ = await fetch(raw, harness, "br", **{"If-None-Match": resource.tag})
    assert held.status == 304 and held.headers["ETag"] == resource.tag
    other, _ = await fetch(raw, harness, "gzip", **{"If-None-Match": '"other"'})
    assert other.status == 200
    assert harness.origin.count(PATH) == 1


async def test_revalidation_sends_the_origins_validator_and_keeps_each_codings_own(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    resource = harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    await fetch(raw, harness, "gzip")
    harness.clock.advance(10)
    response, body = await fetch(raw, harness, "gzip")
    assert harness.origin.requests[-1].headers["If-None-Match"] == resource.tag
    assert "fwd-status=304" in response.headers["Cache-Status"]
    assert response.headers["ETag"] == f'W/"{resource.tag[1:-1]}-gzip"'
    assert gzip.decompress(body) == JSON
    identity, _ = await fetch(raw, harness, "")
    assert identity.headers["ETag"] == resource.tag
    assert harness.origin.count(PATH) == 2


# -- behind a compressing origin front (the simulator) --------------------------------------------

SimHarness = tuple[Harness, Simulator, str]


@pytest.fixture
def make_sim_harness(
    make_harness: MakeHarness, aiohttp_server: Any, clock: FakeClock
) -> Callable[..., Awaitable[SimHarness]]:
    async def make(front: OriginFront, **config: Any) -> SimHarness:
        # Completed at once, with a transcript, yet only five seconds fresh: polling windows.
        settings = {"queued_seconds": 0.0, "processing_seconds": 0.0, "final_max_age": 5, **config}
        simulator = Simulator(SimulatorConfig(front=front, **settings), clock=clock)
        server = await aiohttp_server(create_simulator_app(simulator=simulator))
        harness = await make_harness(upstream=str(server.make_url("")))
        (transcription_id,) = simulator.seed_transcriptions("tok-a", 1)
        return harness, simulator, f"/v1/audio/transcribe/{transcription_id}"

    return make


NGINX_LIKE = OriginFront(compress=("gzip",), narrow_304_vary=True, cors=True)


@pytest.mark.parametrize(
    "front",
    [OriginFront(), NGINX_LIKE, OriginFront(compress=tuple(available_codings()))],
    ids=["plain-origin", "nginx-gzip-narrow-304", "compressing-origin"],
)
async def test_a_fleet_mixing_seven_spellings_costs_one_upstream_request_per_window(
    make_sim_harness: Callable[..., Awaitable[SimHarness]],
    raw: aiohttp.ClientSession,
    front: OriginFront,
) -> None:
    harness, simulator, path = await make_sim_harness(front, transcript_words=2000)
    for window in range(3):
        for spelling in SPELLINGS:
            response, body = await fetch(raw, harness, spelling, path=path)
            assert response.status == 200
            expected = {"": "identity", "gzip": "gzip"}.get(spelling.split(",")[0].lower(), "zstd")
            if spelling.lower().startswith(("gzip", "deflate")):
                expected = "zstd" if "zstd" in spelling else "gzip"
            assert response.headers.get("Content-Encoding", "identity") == expected
            assert json.loads(plain(response, body))["success"] is True
        assert simulator.stats.transcription_gets[path.rsplit("/", 1)[1]] == window + 1
        harness.clock.advance(6)  # past max-age=5: the next window revalidates
    assert simulator.stats.responses[200] == 1
    assert simulator.stats.not_modified == 2
    assert (
        harness.metric("cacheproxy_requests_total", route="transcription", result="revalidated")
        == 2
    )


async def test_a_304_with_a_narrower_vary_freshens_and_is_never_a_full_download(
    make_sim_harness: Callable[..., Awaitable[SimHarness]], raw: aiohttp.ClientSession
) -> None:
    harness, simulator, path = await make_sim_harness(NGINX_LIKE, transcript_words=2000)
    first, _ = await fetch(raw, harness, "gzip", path=path)
    assert first.headers["Vary"] == "Accept-Encoding, Origin"
    sent = simulator.stats.bytes_sent
    for _ in range(12):  # a minute of polling at max-age=5
        harness.clock.advance(5.5)
        response, body = await fetch(raw, harness, "gzip", path=path)
        assert "fwd=stale; fwd-status=304" in response.headers["Cache-Status"]
        assert "Accept-Encoding" in response.headers["Vary"]
        assert json.loads(gzip.decompress(body))["success"] is True
    assert simulator.stats.responses[200] == 1 and simulator.stats.not_modified == 12
    assert simulator.stats.bytes_sent == sent


async def test_the_origins_weak_etag_of_a_gzip_body_is_what_gzip_clients_see(
    make_sim_harness: Callable[..., Awaitable[SimHarness]], raw: aiohttp.ClientSession
) -> None:
    harness, _simulator, path = await make_sim_harness(NGINX_LIKE, transcript_words=2000)
    gz, _ = await fetch(raw, harness, "gzip", path=path)
    identity, _ = await fetch(raw, harness, "", path=path)
    assert gz.headers["ETag"].startswith('W/"') and not gz.headers["ETag"].endswith('-gzip"')
    assert identity.headers["ETag"] == gz.headers["ETag"][:-1] + '-identity"'
    harness.clock.advance(6)
    again, _ = await fetch(raw, harness, "gzip", path=path)
    assert "fwd-status=304" in again.headers["Cache-Status"]
    assert again.headers["ETag"] == gz.headers["ETag"]


async def raw_exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 exchange on a fresh socket, as a browser would send it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return lines[0], headers, body
    finally:
        writer.close()


async def test_a_browser_style_cors_poll_through_the_proxy(
    make_sim_harness: Callable[..., Awaitable[SimHarness]],
) -> None:
    """A page on another origin: an OPTIONS preflight, then GETs with Origin, gzip and zstd."""
    harness, simulator, path = await make_sim_harness(NGINX_LIKE, transcript_words=2000)
    port = harness.client.port
    assert port is not None
    status, headers, _ = await raw_exchange(
        port,
        (
            f"OPTIONS {path} HTTP/1.1\r\nHost: proxy.test\r\nOrigin: https://app.example\r\n"
            "Access-Control-Request-Method: GET\r\n"
            "Access-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    assert status == "HTTP/1.1 204 No Content"
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert headers["vary"] == "Origin"
    for origin in ("https://app.example", "https://app.example", "https://other.example"):
        status, headers, body = await raw_exchange(
            port,
            (
                f"GET {path} HTTP/1.1\r\nHost: proxy.test\r\nOrigin: {origin}\r\n"
                "Authorization: Bearer tok-a\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
                "Connection: close\r\n\r\n"
            ).encode(),
        )
        assert status == "HTTP/1.1 200 OK"
        assert headers["access-control-allow-origin"] == origin
        assert {"accept-encoding", "origin"} <= {
            name.strip().lower() for name in headers["vary"].split(",")
        }
        assert headers["content-encoding"] == "zstd"
        assert json.loads(decode("zstd", body, 10_000_000))["success"] is True
    # One fetch per Origin (the response varies on it), the repeat was a hit.
    transcription_id = path.rsplit("/", 1)[1]
    assert simulator.stats.transcription_gets[transcription_id] == 2


async def test_an_unstored_error_in_a_coding_the_client_cannot_read_is_decoded(
    make_harness: MakeHarness, raw: aiohttp.ClientSession
) -> None:
    """The cache asked in its own codings; a client that accepts none gets the error readable."""
    envelope = b'{"success": false, "error": {"code": "DOWN"}}'

    async def failing(request: web.Request) -> web.Response:
        return web.Response(
            status=503,
            body=gzip.compress(envelope),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    harness = await make_harness(handler=failing)
    response, body = await fetch(raw, harness, "")
    assert response.status == 503
    assert "Content-Encoding" not in response.headers and body == envelope
    response, body = await fetch(raw, harness, "gzip")
    assert response.headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == envelope


async def test_a_request_with_no_transform_gets_the_origins_own_representation(
    harness: Harness, raw: aiohttp.ClientSession
) -> None:
    """RFC 9111 §5.2.1.6: the client asks intermediaries not to transform the content."""
    resource = harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    await fetch(raw, harness, "gzip")
    response, body = await fetch(raw, harness, "gzip", **{"Cache-Control": "no-transform"})
    assert "Content-Encoding" not in response.headers and body == JSON
    assert response.headers["ETag"] == resource.tag
    assert harness.origin.count(PATH) == 1


async def test_only_the_configured_codings_are_prepared(
    make_harness: MakeHarness, raw: aiohttp.ClientSession
) -> None:
    harness = await make_harness(compress_codings=("gzip",))
    harness.origin.put(PATH, JSON, extra={"Content-Type": "application/json"})
    response, _ = await fetch(raw, harness, "gzip, deflate, br, zstd")
    assert response.headers["Content-Encoding"] == "gzip"
    (entry,) = await harness.proxy.store.get(PATH) or ()
    assert entry.coding == "gzip" and entry.derived == ()
