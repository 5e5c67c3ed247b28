"""Byte ranges served from the cache (RFC 9110 §14) through real sockets, before the test origin.

A browser's ``<audio>`` fetches the redacted audio in ranges: the first range fills the cache with
the whole body (asked for without ``Range``), later ranges cost the origin nothing; a body above
``--max-entry-bytes`` is forwarded with the client's ``Range`` and the origin's 206 relayed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest

from proxy.core.headers import format_http_date
from tests.conftest import START, Harness, MakeHarness

AUDIO = "/v1/audio/transcribe/trans_0123456789abcdef0123456789abcdef/audio"
SIZE = 10_000


def audio_bytes(harness: Harness) -> bytes:
    return harness.origin.resources[AUDIO].body


async def fetch(harness: Harness, path: str = AUDIO, **headers: str) -> tuple[Any, bytes]:
    response = await harness.get(path, **headers)
    body = await response.read()
    return response, body


async def parts(response: aiohttp.ClientResponse) -> list[tuple[str, str, bytes]]:
    """A ``multipart/byteranges`` answer as (Content-Type, Content-Range, bytes) per part."""
    reader = aiohttp.MultipartReader.from_response(response)
    found = []
    while True:
        part = await reader.next()
        if part is None:
            return found
        assert isinstance(part, aiohttp.BodyPartReader)
        content = await part.read()
        found.append((part.headers["Content-Type"], part.headers["Content-Range"], bytes(content)))


def origin_ranges(harness: Harness) -> list[str | None]:
    return [request.headers.get("Range") for request in harness.origin.requests]


async def test_a_first_range_fills_the_cache_and_later_ranges_cost_the_origin_nothing(
    harness: Harness,
) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    body = audio_bytes(harness)
    response, got = await fetch(harness, Range="bytes=0-99")
    assert response.status == 206
    assert response.headers["Content-Range"] == "bytes 0-99/10000"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "audio/mpeg"
    assert "ETag" in response.headers
    assert "stored" in response.headers["Cache-Status"]
    assert got == body[:100]
    assert origin_ranges(harness) == [None]  # the whole body was asked for, once

    for value, expected, content_range in (
        ("bytes=500-", body[500:], "bytes 500-9999/10000"),
        ("bytes=-500", body[-500:], "bytes 9500-9999/10000"),
        ("bytes=9990-20000", body[9990:], "bytes 9990-9999/10000"),
        ("bytes=0-0", body[:1], "bytes 0-0/10000"),
    ):
        response, got = await fetch(harness, Range=value)
        assert (response.status, response.headers["Content-Range"]) == (206, content_range)
        assert got == expected
        assert response.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
        assert "Age" in response.headers
    assert harness.origin.count(AUDIO) == 1


async def test_the_origins_accept_ranges_and_a_stray_content_range_are_not_repeated(
    harness: Harness,
) -> None:
    extra = {"Content-Type": "audio/mpeg", "Accept-Ranges": "none", "Content-Range": "bytes 0-1/2"}
    harness.origin.put_audio(AUDIO, SIZE, extra=extra, ranges=False)
    for value in ("bytes=0-9", None):
        headers = {"Range": value} if value else {}
        response, _ = await fetch(harness, **headers)
        assert response.headers.getall("Accept-Ranges") == ["bytes"]
        ranges = response.headers.getall("Content-Range", [])
        assert ranges == (["bytes 0-9/10000"] if value else [])
    assert harness.origin.count(AUDIO) == 1


async def test_several_ranges_are_one_multipart_byteranges_answer(harness: Harness) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    body = audio_bytes(harness)
    response = await harness.get(AUDIO, Range="bytes=0-9, 5000-5009, -10")
    assert response.status == 206
    assert response.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert "Content-Range" not in response.headers
    assert await parts(response) == [
        ("audio/mpeg", "bytes 0-9/10000", body[:10]),
        ("audio/mpeg", "bytes 5000-5009/10000", body[5000:5010]),
        ("audio/mpeg", "bytes 9990-9999/10000", body[-10:]),
    ]
    # overlapping ranges are coalesced into one part, and one part is not multipart
    response, got = await fetch(harness, Range="bytes=0-99, 50-149, 120-199")
    assert (response.status, response.headers["Content-Range"]) == (206, "bytes 0-199/10000")
    assert got == body[:200]
    assert harness.origin.count(AUDIO) == 1


async def test_an_unsatisfiable_range_is_416_with_the_length(harness: Harness) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    await fetch(harness)
    response, got = await fetch(harness, Range="bytes=10000-")
    assert response.status == 416
    assert response.headers["Content-Range"] == "bytes */10000"
    assert json.loads(got)["error"]["code"] == "RANGE_NOT_SATISFIABLE"
    assert harness.origin.count(AUDIO) == 1


@pytest.mark.parametrize("value", ["bytes=5-1", "pages=0-1", "bytes=x-", "bytes 0-1"])
async def test_an_invalid_range_is_ignored_for_the_whole_200(harness: Harness, value: str) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    response, got = await fetch(harness, Range=value)
    assert response.status == 200
    assert "Content-Range" not in response.headers
    assert got == audio_bytes(harness)


async def test_if_range_with_the_strong_etag_gets_the_range_any_other_tag_the_whole(
    harness: Harness,
) -> None:
    resource = harness.origin.put_audio(AUDIO, SIZE)
    await fetch(harness)
    response, got = await fetch(harness, Range="bytes=0-9", **{"If-Range": resource.tag})
    assert (response.status, got) == (206, audio_bytes(harness)[:10])
    response, got = await fetch(harness, Range="bytes=0-9", **{"If-Range": '"changed"'})
    assert (response.status, len(got)) == (200, SIZE)
    # a weak tag never matches, even the stored tag's weak form (§13.1.5)
    response, got = await fetch(harness, Range="bytes=0-9", **{"If-Range": "W/" + resource.tag})
    assert (response.status, len(got)) == (200, SIZE)
    assert harness.origin.count(AUDIO) == 1


async def test_if_range_with_the_last_modified_date_gets_the_range(harness: Harness) -> None:
    harness.origin.put_audio(AUDIO, SIZE, etag=False, last_modified=START - 3600)
    await fetch(harness)
    exact = format_http_date(START - 3600)
    response, got = await fetch(harness, Range="bytes=10-19", **{"If-Range": exact})
    assert (response.status, got) == (206, audio_bytes(harness)[10:20])
    later = format_http_date(START - 3599)
    response, got = await fetch(harness, Range="bytes=10-19", **{"If-Range": later})
    assert (response.status, len(got)) == (200, SIZE)
    assert harness.origin.count(AUDIO) == 1


async def test_if_range_with_a_date_in_the_second_of_the_response_is_not_strong(
    harness: Harness,
) -> None:
    harness.origin.put_audio(AUDIO, SIZE, etag=False, last_modified=START)
    await fetch(harness)
    response, got = await fetch(harness, Range="bytes=0-9", **{"If-Range": format_http_date(START)})
    assert (response.status, len(got)) == (200, SIZE)


async def test_head_with_a_range_gets_the_whole_200s_head(harness: Harness) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    await fetch(harness)
    response = await harness.client.head(
        AUDIO, headers={"Authorization": "Bearer tok-a", "Range": "bytes=0-9"}
    )
    assert response.status == 200
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in response.headers


async def test_a_stored_200_says_accept_ranges_on_the_fast_path_and_ranges_stay_off_it(
    harness: Harness,
) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    for _ in range(3):  # the second and third are prepared hits on the fast path
        response, got = await fetch(harness)
        assert (response.status, response.headers["Accept-Ranges"], len(got)) == (
            200,
            "bytes",
            SIZE,
        )
    front = harness.client.server.front
    prepared = front.fast if front is not None else None
    assert prepared is not None and prepared.memo, "the hit was memoised on the fast path"
    response, got = await fetch(harness, Range="bytes=100-199")
    assert (response.status, got) == (206, audio_bytes(harness)[100:200])
    assert harness.origin.count(AUDIO) == 1


async def test_concurrent_first_ranges_share_one_whole_body_fetch(harness: Harness) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    body = audio_bytes(harness)
    harness.origin.gate = asyncio.Event()
    asked = [f"bytes={i * 1000}-{i * 1000 + 9}" for i in range(5)]
    tasks = [asyncio.ensure_future(fetch(harness, Range=value)) for value in asked]
    await harness.wait_for(lambda: harness.proxy.flights.waiting() == 5)
    harness.origin.gate.set()
    answers = await asyncio.gather(*tasks)
    for index, (response, got) in enumerate(answers):
        assert response.status == 206
        assert got == body[index * 1000 : index * 1000 + 10]
    assert origin_ranges(harness) == [None]


async def test_a_body_above_max_entry_bytes_is_forwarded_with_the_range(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_entry_bytes=4096)
    harness.origin.put_audio(AUDIO, SIZE)
    response, got = await fetch(harness, Range="bytes=100-199")
    assert response.status == 206  # the origin's own 206, relayed
    assert response.headers["Content-Range"] == "bytes 100-199/10000"
    assert got == audio_bytes(harness)[100:200]
    # the fill was tried once (the head said too large); then the range went as asked
    assert origin_ranges(harness) == [None, "bytes=100-199"]
    response, got = await fetch(harness, Range="bytes=-10")
    assert (response.status, got) == (206, audio_bytes(harness)[-10:])
    assert 'detail="range-pass"' in response.headers["Cache-Status"]
    assert origin_ranges(harness) == [None, "bytes=100-199", "bytes=-10"]
    # nothing was stored: a plain GET still streams the whole body from the origin
    response, got = await fetch(harness)
    assert (response.status, len(got)) == (200, SIZE)
    assert harness.origin.count(AUDIO) == 4


async def test_a_chunked_body_above_max_entry_bytes_is_forwarded_with_the_range(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_entry_bytes=4096)
    harness.origin.put_audio(AUDIO, 200_000, chunked=True)
    response, got = await fetch(harness, Range="bytes=150000-150099")
    assert response.status == 206
    assert got == audio_bytes(harness)[150_000:150_100]
    assert origin_ranges(harness) == [None, "bytes=150000-150099"]


async def test_a_range_of_a_response_that_may_not_be_stored_is_forwarded(
    harness: Harness,
) -> None:
    harness.origin.put_audio(AUDIO, SIZE, cache_control="no-store")
    response, got = await fetch(harness, Range="bytes=0-9")
    assert (response.status, got) == (206, audio_bytes(harness)[:10])
    response, got = await fetch(harness, Range="bytes=10-19")
    assert (response.status, got) == (206, audio_bytes(harness)[10:20])
    assert origin_ranges(harness) == [None, "bytes=0-9", "bytes=10-19"]


async def test_a_gzip_client_gets_ranges_of_the_gzip_representation(harness: Harness) -> None:
    path = "/v1/audio/transcribe/trans_0123456789abcdef0123456789abcdef/subtitles"
    text = json.dumps({"segments": [{"text": f"segment {i} of the meeting"} for i in range(200)]})
    harness.origin.put(path, text, extra={"Content-Type": "application/json"})
    headers = {"Authorization": "Bearer tok-a", "Accept-Encoding": "gzip"}
    url = harness.client.make_url(path)
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        async with raw.get(url, headers=headers) as whole:
            assert whole.headers["Content-Encoding"] == "gzip"
            coded = await whole.read()
            gzip_tag = whole.headers["ETag"]
        assert gzip.decompress(coded) == text.encode()
        async with raw.get(url, headers={**headers, "Range": "bytes=0-99"}) as part:
            assert part.status == 206
            assert part.headers["Content-Encoding"] == "gzip"
            assert part.headers["Content-Range"] == f"bytes 0-99/{len(coded)}"
            assert await part.read() == coded[:100]
        # several ranges of a compressed representation: the whole of it instead
        async with raw.get(url, headers={**headers, "Range": "bytes=0-9,500-509"}) as several:
            assert (several.status, await several.read()) == (200, coded)
        # the derived gzip's tag is weak, so If-Range with it sends the whole representation
        async with raw.get(
            url, headers={**headers, "Range": "bytes=0-9", "If-Range": gzip_tag}
        ) as resumed:
            assert gzip_tag.startswith("W/")
            assert (resumed.status, await resumed.read()) == (200, coded)
        # an identity client gets ranges of the identity bytes
        identity = {"Authorization": "Bearer tok-a", "Accept-Encoding": "identity"}
        async with raw.get(url, headers={**identity, "Range": "bytes=-20"}) as plain:
            assert plain.status == 206
            assert "Content-Encoding" not in plain.headers
            assert (
                plain.headers["Content-Range"]
                == f"bytes {len(text) - 20}-{len(text) - 1}/{len(text)}"
            )
            assert await plain.read() == text.encode()[-20:]
    assert harness.origin.count(path) == 1


async def test_a_range_with_prefer_wait_and_a_current_tag_is_held_then_answered_304(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(max_wait=1.0)
    resource = harness.origin.put_audio(AUDIO, SIZE, cache_control="public, max-age=60")
    await fetch(harness)
    response, got = await fetch(
        harness, Range="bytes=0-9", Prefer="wait=1", **{"If-None-Match": resource.tag}
    )
    assert (response.status, got) == (304, b"")
    assert response.headers.get("Preference-Applied") == "wait=1"


async def test_a_range_with_prefer_wait_and_an_old_tag_gets_its_range_at_once(
    harness: Harness,
) -> None:
    harness.origin.put_audio(AUDIO, SIZE)
    await fetch(harness)
    response, got = await fetch(
        harness, Range="bytes=0-9", Prefer="wait=20", **{"If-None-Match": '"old"'}
    )
    assert (response.status, got) == (206, audio_bytes(harness)[:10])
