"""Interim (1xx) responses from the origin are dropped, never stored (RFC 9110 §15.2, RFC 9111
§3): a raw-socket origin sends ``103 Early Hints`` (and ``100 Continue``) before its 200."""

from __future__ import annotations

import aiohttp

from proxy.ops.config import Settings
from tests.support.rawkit import RawUpstream, answer, response_bytes, serve_proxy

PATH = "/v1/audio/transcribe/job-hints"
EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\n"
    b"Link: </style.css>; rel=preload; as=style\r\n"
    b"X-Interim: 103\r\n"
    b"Cache-Control: no-store\r\n"
    b"\r\n"
)
CONTINUE = b"HTTP/1.1 100 Continue\r\nX-Interim: 100\r\n\r\n"
FINAL = response_bytes(
    200,
    b'{"v":1}',
    {"Content-Type": "application/json", "Cache-Control": "max-age=60", "ETag": '"v1"'},
)


async def test_interim_responses_are_dropped_and_the_final_response_stored() -> None:
    async with (
        RawUpstream(answer(CONTINUE + EARLY_HINTS + FINAL)) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        for expected in ("fwd=uri-miss", "hit"):
            async with session.get(proxy.url + PATH) as response:
                assert response.status == 200
                assert await response.read() == b'{"v":1}'
                assert expected in response.headers["Cache-Status"]
                # Nothing of the interim heads reached the stored or served response.
                assert "X-Interim" not in response.headers
                assert "Link" not in response.headers
                assert response.headers["Cache-Control"] == "max-age=60"
    assert len(origin.requests) == 1


async def test_an_origin_sending_only_an_interim_response_is_an_upstream_error() -> None:
    async with (
        RawUpstream(answer(EARLY_HINTS, close=True)) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(proxy.url + PATH) as response:
            assert response.status == 502
            assert (await response.json())["success"] is False
        async with session.get(proxy.url + PATH) as again:
            assert again.status == 502  # nothing was stored
    assert len(origin.requests) >= 2  # each went upstream (a cut connection is retried once)
