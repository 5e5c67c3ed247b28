"""End-to-end behaviour of the proxy through real sockets, with an aiohttp origin behind it."""

from __future__ import annotations

import asyncio
import tracemalloc

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.core.headers import format_http_date
from tests.conftest import Harness, MakeHarness

PATH = "/v1/audio/transcribe/trans_0123456789abcdef0123456789abcdef"


async def test_miss_then_hit_serves_from_cache_with_age(harness: Harness) -> None:
    harness.origin.put(PATH, '{"status": "processing"}')
    first = await harness.get(PATH)
    assert first.status == 200
    assert first.headers["Cache-Status"] == (
        "aitronos-cache-proxy; fwd=uri-miss; fwd-status=200; stored"
    )
    harness.clock.advance(2)
    second = await harness.get(PATH)
    assert second.status == 200
    assert await second.read() == b'{"status": "processing"}'
    assert second.headers["Cache-Status"] == "aitronos-cache-proxy; hit; ttl=3"
    assert second.headers["Age"] == "2"
    assert harness.origin.count(PATH) == 1
    assert harness.metric("cacheproxy_requests_total", route="transcription", result="hit") == 1
    assert harness.metric("cacheproxy_bytes_saved_total") == len(b'{"status": "processing"}')


async def test_if_none_match_on_fresh_entry_is_answered_locally(harness: Harness) -> None:
    resource = harness.origin.put(PATH, "body", extra={"Expires": "Thu, 01 Jan 2099 00:00:00 GMT"})
    await harness.get(PATH)
    response = await harness.get(PATH, **{"If-None-Match": f'"other", W/{resource.tag}'})
    assert response.status == 304
    assert await response.read() == b""
    assert response.headers["ETag"] == resource.tag
    assert response.headers["Cache-Control"] == "public, max-age=5"
    for name in ("Date", "Age", "Expires", "Cache-Status"):
        assert name in response.headers
    assert harness.origin.count(PATH) == 1
    assert harness.metric("cacheproxy_not_modified_total") == 1


async def test_if_none_match_star_and_mismatch(harness: Harness) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH)
    assert (await harness.get(PATH, **{"If-None-Match": "*"})).status == 304
    mismatch = await harness.get(PATH, **{"If-None-Match": '"nope"'})
    assert mismatch.status == 200
    assert await mismatch.read() == b"body"


async def test_if_modified_since_answered_locally(harness: Harness) -> None:
    harness.origin.put(PATH, "body", last_modified=harness.clock() - 100)
    await harness.get(PATH)
    later = format_http_date(harness.clock() - 50)
    earlier = format_http_date(harness.clock() - 500)
    assert (await harness.get(PATH, **{"If-Modified-Since": later})).status == 304
    assert (await harness.get(PATH, **{"If-Modified-Since": earlier})).status == 200
    assert harness.origin.count(PATH) == 1


async def test_client_validator_on_miss_gets_local_304_after_full_fetch(harness: Harness) -> None:
    resource = harness.origin.put(PATH, "body")
    response = await harness.get(PATH, **{"If-None-Match": resource.tag})
    assert response.status == 304
    upstream_request = harness.origin.requests[0]
    assert "If-None-Match" not in upstream_request.headers
    assert (await harness.get(PATH)).headers["Cache-Status"].endswith("hit; ttl=5")


async def test_expired_entry_is_revalidated_with_a_conditional_request(harness: Harness) -> None:
    resource = harness.origin.put(PATH, "x" * 5000)
    await harness.get(PATH)
    harness.clock.advance(6)
    response = await harness.get(PATH)
    assert response.status == 200
    assert await response.read() == b"x" * 5000
    assert response.headers["Cache-Status"] == (
        "aitronos-cache-proxy; fwd=stale; fwd-status=304; stored"
    )
    conditional = harness.origin.requests[1]
    assert conditional.headers["If-None-Match"] == resource.tag
    assert harness.metric("cacheproxy_upstream_bytes_total") == 5000
    assert (
        harness.metric("cacheproxy_requests_total", route="transcription", result="revalidated")
        == 1
    )
    harness.clock.advance(1)
    assert (await harness.get(PATH)).headers["Cache-Status"].endswith("; hit; ttl=4")


async def test_changed_resource_replaces_entry_on_revalidation(harness: Harness) -> None:
    harness.origin.put(PATH, '{"status": "processing"}')
    await harness.get(PATH)
    harness.origin.put(PATH, '{"status": "completed"}', cache_control="public, max-age=86400")
    harness.clock.advance(6)
    response = await harness.get(PATH)
    assert await response.read() == b'{"status": "completed"}'
    harness.clock.advance(3600)
    hit = await harness.get(PATH)
    assert hit.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
    assert await hit.read() == b'{"status": "completed"}'
    assert harness.origin.count(PATH) == 2


async def test_concurrent_misses_make_one_upstream_request(harness: Harness) -> None:
    harness.origin.put(PATH, "shared")
    harness.origin.gate = asyncio.Event()
    requests = [asyncio.ensure_future(harness.get(PATH)) for _ in range(100)]
    await harness.wait_for(lambda: harness.proxy.flights.waiting() == 100)
    harness.origin.gate.set()
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 100
    assert {await r.read() for r in responses} == {b"shared"}
    assert harness.origin.count(PATH) == 1
    assert harness.metric("cacheproxy_coalesced_requests_total") == 99
    collapsed = [r for r in responses if "collapsed" in r.headers["Cache-Status"]]
    assert len(collapsed) == 99


async def test_disconnecting_waiter_cancels_nothing_for_others(harness: Harness) -> None:
    harness.origin.put(PATH, "shared")
    harness.origin.gate = asyncio.Event()
    url = harness.client.make_url(PATH)
    leaving = aiohttp.ClientSession()
    headers = {"Authorization": "Bearer tok-a"}
    leader = asyncio.ensure_future(leaving.get(url, headers=headers))
    await harness.origin.received.wait()
    stayers = [asyncio.ensure_future(harness.get(PATH)) for _ in range(3)]
    await harness.wait_for(lambda: harness.proxy.flights.waiting() == 4)
    leader.cancel()
    await leaving.close()
    harness.origin.gate.set()
    responses = await asyncio.gather(*stayers)
    assert [await r.read() for r in responses] == [b"shared"] * 3
    assert harness.origin.count(PATH) == 1


async def test_failed_fetch_reaches_every_waiter_as_an_error(make_harness: MakeHarness) -> None:
    harness = await make_harness(upstream_timeout=0.3)
    harness.origin.hang = True
    responses = await asyncio.gather(*(harness.get(PATH) for _ in range(5)))
    assert [r.status for r in responses] == [504] * 5
    body = await responses[0].json()
    assert body["success"] is False
    assert body["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert harness.origin.count(PATH) == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_unsafe_method_passes_through_and_invalidates(harness: Harness, method: str) -> None:
    harness.origin.put(PATH, "v1", cache_control="public, max-age=3600")
    await harness.get(PATH)
    response = await harness.client.request(
        method, PATH, data=b'{"x": 1}', headers={"Authorization": "Bearer tok-b"}
    )
    assert response.status == 200
    assert (await response.json())["method"] == method
    assert response.headers["Cache-Status"] == "aitronos-cache-proxy; fwd=method"
    assert await harness.origin.requests[-1].read() == b'{"x": 1}'
    harness.origin.put(PATH, "v2", cache_control="public, max-age=3600")
    after = await harness.get(PATH)
    assert await after.read() == b"v2"
    assert after.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")


async def test_location_and_content_location_are_invalidated(harness: Harness) -> None:
    other = "/v1/audio/transcribe/trans_other"
    harness.origin.put(other, "v1", cache_control="public, max-age=3600")
    await harness.get(other)
    host = harness.origin_server.make_url("").authority
    await harness.client.post(
        "/v1/audio/transcribe", data=b"{}", headers={"X-Location": f"http://{host}{other}"}
    )
    harness.origin.put(other, "v2", cache_control="public, max-age=3600")
    assert await (await harness.get(other)).read() == b"v2"


async def test_failed_unsafe_method_does_not_invalidate(harness: Harness) -> None:
    harness.origin.put(PATH, "v1", cache_control="public, max-age=3600")
    await harness.get(PATH)
    harness.origin.fail_status = 500
    assert (await harness.client.delete(PATH)).status == 500
    harness.origin.fail_status = None
    assert (await harness.get(PATH)).headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_one_token_never_receives_another_tokens_entry(harness: Harness) -> None:
    harness.origin.put(PATH, "for-a")
    await harness.get(PATH, token="tok-a")
    harness.origin.put(PATH, "for-b")
    response_b = await harness.get(PATH, token="tok-b")
    assert await response_b.read() == b"for-b"
    anonymous = await harness.get(PATH, token=None)
    assert await anonymous.read() == b"for-b"
    assert anonymous.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")
    assert await (await harness.get(PATH, token="tok-a")).read() == b"for-a"
    assert harness.origin.count(PATH) == 3


async def test_concurrent_requests_of_different_tokens_never_collapse(harness: Harness) -> None:
    harness.origin.put(PATH, "same")
    harness.origin.gate = asyncio.Event()
    pending = [asyncio.ensure_future(harness.get(PATH, token=f"t{i}")) for i in range(3)]
    await harness.wait_for(lambda: len(harness.origin.requests) == 3)
    harness.origin.gate.set()
    await asyncio.gather(*pending)
    assert harness.metric("cacheproxy_coalesced_requests_total") == 0


async def test_shared_scope_shares_between_tokens(make_harness: MakeHarness) -> None:
    harness = await make_harness(cache_scope="shared")
    harness.origin.put(PATH, "everyone")
    await harness.get(PATH, token="tok-a")
    response = await harness.get(PATH, token="tok-b")
    assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_x_api_key_is_a_credential_header(harness: Harness) -> None:
    harness.origin.put(PATH, "k1")
    await harness.get(PATH, token=None, **{"X-API-Key": "key-1"})
    response = await harness.get(PATH, token=None, **{"X-API-Key": "key-2"})
    assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")


async def test_unreachable_upstream_gives_502_envelope(make_harness: MakeHarness) -> None:
    harness = await make_harness(upstream="http://127.0.0.1:9")
    response = await harness.get(PATH)
    assert response.status == 502
    assert await response.json() == {
        "success": False,
        "error": {"code": "UPSTREAM_UNAVAILABLE", "message": "the upstream is unreachable"},
    }
    assert (
        harness.metric("cacheproxy_upstream_errors_total", route="transcription", kind="refused")
        == 1
    )


async def test_timeout_gives_504_envelope(make_harness: MakeHarness) -> None:
    harness = await make_harness(upstream_timeout=0.2)
    harness.origin.hang = True
    response = await harness.get(PATH)
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "UPSTREAM_TIMEOUT"


@pytest.mark.settings(stale_grace=60)
async def test_dead_upstream_is_answered_with_stale_entry_within_grace(harness: Harness) -> None:
    await harness.fill(PATH, "kept")
    await harness.origin_server.close()
    harness.clock.advance(30)
    response = await harness.get(PATH)
    assert response.status == 200
    assert await response.read() == b"kept"
    assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=stale")
    assert response.headers["Age"] == "30"
    harness.clock.advance(60)
    assert (await harness.get(PATH)).status == 502


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_upstream_error_status_is_replaced_by_stale_entry(
    harness: Harness, status: int
) -> None:
    harness.origin.put(PATH, "kept")
    await harness.get(PATH)
    harness.clock.advance(10)
    harness.origin.fail_status = status
    response = await harness.get(PATH)
    assert response.status == 200
    assert await response.read() == b"kept"
    assert response.headers["Cache-Status"] == (
        f"aitronos-cache-proxy; fwd=stale; fwd-status={status}"
    )


async def test_retry_after_holds_back_upstream_requests(harness: Harness) -> None:
    harness.origin.put(
        PATH, "kept", extra={"Retry-After": "30"}, status=429, cache_control=None, etag=False
    )
    first = await harness.get(PATH)
    assert first.status == 429
    for _ in range(5):
        again = await harness.get(PATH)
        assert again.status == 429
        assert int(again.headers["Retry-After"]) <= 30
    assert harness.origin.count(PATH) == 1
    harness.clock.advance(31)
    await harness.get(PATH)
    assert harness.origin.count(PATH) == 2


async def test_vary_keeps_variants_apart(harness: Harness) -> None:
    harness.origin.put(PATH, "en", extra={"Vary": "Accept-Language"})
    await harness.get(PATH, **{"Accept-Language": "en"})
    harness.origin.put(PATH, "de", extra={"Vary": "Accept-Language"})
    german = await harness.get(PATH, **{"Accept-Language": "de"})
    assert await german.read() == b"de"
    assert german.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=vary-miss")
    english = await harness.get(PATH, **{"Accept-Language": "en"})
    assert await english.read() == b"en"
    assert english.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_head_is_answered_from_stored_get(harness: Harness) -> None:
    harness.origin.put(PATH, "0123456789")
    await harness.get(PATH)
    response = await harness.client.head(PATH, headers={"Authorization": "Bearer tok-a"})
    assert response.status == 200
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
    assert harness.origin.count(PATH) == 1


async def test_head_miss_fetches_get_and_stores_it(harness: Harness) -> None:
    harness.origin.put(PATH, "0123456789")
    response = await harness.client.head(PATH, headers={"Authorization": "Bearer tok-a"})
    assert response.status == 200
    assert harness.origin.requests[0].method == "GET"
    hit = await harness.get(PATH)
    assert await hit.read() == b"0123456789"
    assert hit.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


@pytest.mark.parametrize(
    ("directive", "expected"),
    [
        ({"Cache-Control": "no-cache"}, "fwd=request"),
        ({"Pragma": "no-cache"}, "fwd=request"),
        ({"Cache-Control": "max-age=1"}, "fwd=request"),
        ({"Cache-Control": "min-fresh=10"}, "fwd=request"),
        ({"Cache-Control": "max-age=100"}, "hit"),
    ],
)
async def test_request_directives(
    harness: Harness, directive: dict[str, str], expected: str
) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH)
    harness.clock.advance(2)
    response = await harness.get(PATH, **directive)
    assert response.headers["Cache-Status"].split("; ")[1] == expected


async def test_only_if_cached_without_entry_is_504(harness: Harness) -> None:
    response = await harness.get(PATH, **{"Cache-Control": "only-if-cached"})
    assert response.status == 504
    assert harness.origin.count() == 0


async def test_max_stale_allows_a_stale_hit(harness: Harness) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH)
    harness.clock.advance(8)
    response = await harness.get(PATH, **{"Cache-Control": "max-stale=5"})
    assert response.headers["Cache-Status"] == "aitronos-cache-proxy; hit; ttl=-3"
    assert harness.origin.count() == 1


async def test_request_no_store_is_not_stored(harness: Harness) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH, **{"Cache-Control": "no-store"})
    assert (
        (await harness.get(PATH))
        .headers["Cache-Status"]
        .startswith("aitronos-cache-proxy; fwd=uri-miss")
    )


@pytest.mark.parametrize("cache_control", ["no-store", "private", "max-age=60", None])
async def test_responses_a_shared_cache_must_not_store(
    harness: Harness, cache_control: str | None
) -> None:
    # With Authorization (§3.5) only public, s-maxage or must-revalidate allow storing.
    harness.origin.put(PATH, "body", cache_control=cache_control)
    await harness.get(PATH)
    second = await harness.get(PATH)
    assert "stored" not in second.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 2


async def test_set_cookie_responses_are_not_shared(harness: Harness) -> None:
    harness.origin.put(PATH, "body", extra={"Set-Cookie": "session=abc"})
    await harness.get(PATH)
    await harness.get(PATH)
    assert harness.origin.count(PATH) == 2


async def test_stale_while_revalidate_serves_stale_and_refreshes(harness: Harness) -> None:
    harness.origin.put(PATH, "v1", cache_control="public, max-age=5, stale-while-revalidate=30")
    await harness.get(PATH)
    harness.origin.put(PATH, "v2", cache_control="public, max-age=5, stale-while-revalidate=30")
    harness.clock.advance(10)
    stale = await harness.get(PATH)
    assert await stale.read() == b"v1"
    assert 'detail="stale-while-revalidate"' in stale.headers["Cache-Status"]
    await harness.wait_for(lambda: harness.origin.count(PATH) == 2 and not harness.proxy.flights)
    fresh = await harness.get(PATH)
    assert await fresh.read() == b"v2"
    assert fresh.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_cdn_cache_control_is_the_targeted_field(harness: Harness) -> None:
    harness.origin.put(
        PATH,
        "body",
        cache_control="public, max-age=0",
        extra={"CDN-Cache-Control": "public, max-age=60"},
    )
    await harness.get(PATH)
    harness.clock.advance(30)
    response = await harness.get(PATH)
    assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
    assert response.headers["Cache-Control"] == "public, max-age=0"


async def test_invalid_expires_means_already_expired(harness: Harness) -> None:
    harness.origin.put(PATH, "body", cache_control="public", extra={"Expires": "0"})
    await harness.get(PATH)
    response = await harness.get(PATH)
    assert "hit" not in response.headers["Cache-Status"].split("; ")
    assert harness.origin.count(PATH) == 2


async def test_hop_by_hop_headers_are_dropped_and_forwarding_headers_added(
    harness: Harness,
) -> None:
    harness.origin.put(PATH, "body", extra={"X-Secret-Hop": "1", "Connection": "X-Secret-Hop"})
    response = await harness.get(
        PATH,
        **{"Connection": "X-Drop-Me", "X-Drop-Me": "1", "X-Keep": "2", "TE": "trailers"},
    )
    sent = harness.origin.requests[0].headers
    assert "X-Drop-Me" not in sent and "TE" not in sent
    assert sent["X-Keep"] == "2"
    assert sent["Via"].endswith("aitronos-cache-proxy")
    assert sent["X-Forwarded-For"] == "127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert "X-Forwarded-Host" not in sent
    assert sent["Host"] == harness.origin_server.make_url("").authority
    assert "X-Secret-Hop" not in response.headers


async def test_query_string_and_body_are_forwarded_exactly(harness: Harness) -> None:
    target = "/v1/audio/transcribe/trans_1/search?q=a%20b&x=%2F"
    harness.origin.put(target, "found")
    url = URL(str(harness.client.make_url("")) + target, encoded=True)
    response = await harness.client.session.get(url, headers={"Authorization": "Bearer a"})
    assert await response.read() == b"found"
    assert harness.origin.requests[0].raw_path == target


async def test_redirects_are_passed_through(harness: Harness) -> None:
    harness.origin.put(PATH, "", status=302, extra={"Location": "/elsewhere"}, cache_control=None)
    response = await harness.client.get(PATH, allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_a_body_over_max_entry_bytes_is_relayed_and_not_stored(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_entry_bytes=4096)
    harness.origin.put(PATH, b"x" * 8192, cache_control="public, max-age=60")
    for _ in range(2):
        response = await harness.get(PATH)
        assert response.status == 200 and await response.read() == b"x" * 8192
        assert "hit" not in response.headers["Cache-Status"].split("; ")
    assert harness.origin.count(PATH) == 2
    harness.origin.put(PATH, b"x" * 4096, cache_control="public, max-age=60")
    await (await harness.get(PATH)).read()
    assert "hit" in (await harness.get(PATH)).headers["Cache-Status"].split("; ")


async def test_large_body_is_streamed_with_bounded_memory(make_harness: MakeHarness) -> None:
    harness = await make_harness(max_entry_bytes=1024 * 1024)
    size = 50 * 1024 * 1024
    chunk = b"z" * 65536

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "public, max-age=60"})
        response.content_length = size
        await response.prepare(request)
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        return response

    harness.origin_server.app.router._frozen = False
    harness.origin_server.app.router.add_get("/big", big)
    tracemalloc.start()
    try:
        response = await harness.client.get("/big")
        received = 0
        async for piece in response.content.iter_chunked(65536):
            received += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert harness.proxy.store.bytes == 0


async def test_metrics_health_and_readiness_endpoints(harness: Harness) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH)
    metrics = await harness.client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = await metrics.text()
    assert 'cacheproxy_requests_total{result="miss",route="transcription"} 1.0' in text
    assert "trans_0123" not in text and "tok-a" not in text
    assert (await harness.client.get("/healthz")).status == 200
    ready = await harness.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_fetch_in_flight_during_delete_does_not_store_the_old_response(
    harness: Harness,
) -> None:
    harness.origin.put(PATH, "before-delete", cache_control="public, max-age=3600")
    harness.origin.gate = asyncio.Event()
    harness.origin.gated_method = "GET"
    poll = asyncio.ensure_future(harness.get(PATH))
    await harness.origin.received.wait()
    assert (await harness.client.delete(PATH)).status == 200
    harness.origin.gate.set()
    assert await (await poll).read() == b"before-delete"
    after = await harness.get(PATH)
    assert after.status == 404
    assert after.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")


async def test_collapsed_waiter_with_other_vary_values_gets_its_own_variant(
    harness: Harness,
) -> None:
    class Negotiating:
        def __init__(self) -> None:
            self.gate = asyncio.Event()

        async def handle(self, request: web.Request) -> web.Response:
            harness.origin.requests.append(request)
            await self.gate.wait()
            return web.Response(
                text=request.headers.get("Accept-Language", "none"),
                headers={
                    "Cache-Control": "public, max-age=60",
                    "Vary": "Accept-Language",
                    "Date": format_http_date(harness.clock()),
                },
            )

    negotiating = Negotiating()
    harness.origin_server.app.router._frozen = False
    harness.origin_server.app.router.add_get("/negotiated", negotiating.handle)
    english = asyncio.ensure_future(harness.get("/negotiated", **{"Accept-Language": "en"}))
    german = asyncio.ensure_future(harness.get("/negotiated", **{"Accept-Language": "de"}))
    await harness.wait_for(lambda: harness.proxy.flights.waiting() == 2)
    negotiating.gate.set()
    assert await (await english).read() == b"en"
    assert await (await german).read() == b"de"
    for language in ("en", "de"):
        again = await harness.get("/negotiated", **{"Accept-Language": language})
        assert await again.read() == language.encode()
        assert again.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_public_host_is_forwarded_and_the_client_host_is_neither_sent_nor_keyed(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(public_host="api.example.com")
    harness.origin.put(PATH, "body")
    await harness.get(PATH, Host="evil.test")
    assert harness.origin.requests[0].headers["X-Forwarded-Host"] == "api.example.com"
    shared = await harness.get(PATH, Host="proxy.internal")
    assert shared.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")


async def test_by_default_the_client_host_is_neither_forwarded_nor_keyed(
    harness: Harness,
) -> None:
    harness.origin.put(PATH, "body")
    await harness.get(PATH, Host="one.example", **{"X-Forwarded-Host": "evil.test"})
    assert "X-Forwarded-Host" not in harness.origin.requests[0].headers
    other = await harness.get(PATH, Host="two.example:8081")
    assert other.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
    assert len(harness.origin.requests) == 1


async def test_forward_host_sends_and_keys_the_client_host(make_harness: MakeHarness) -> None:
    harness = await make_harness(forward_host=True)
    harness.origin.put(PATH, "body")
    await harness.get(PATH, Host="one.example")
    assert harness.origin.requests[0].headers["X-Forwarded-Host"] == "one.example"
    other = await harness.get(PATH, Host="two.example")
    assert other.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=uri-miss")
    same = await harness.get(PATH, Host="ONE.example")
    assert same.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
