"""Requests that demand revalidation (``max-age=0``, ``no-cache``) collapsed onto a recent one
(``--revalidate-window``, issue 19), through real sockets to the shared test origin.

The proxy and the origin share the test's clock, so "within the window" is a clock the test
moves; held long polls are awaited on the proxy's waiting count, never on time.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Harness

PATH = "/v1/audio/transcribe/job-forced"
FORCED = {"Cache-Control": "max-age=0"}


async def test_max_age_0_within_the_window_is_answered_from_the_fetch_just_made(
    harness: Harness,
) -> None:
    await harness.fill(PATH, '{"v":1}')
    harness.clock.advance(0.5)
    response = await harness.get(PATH, **FORCED)
    assert response.status == 200 and await response.read() == b'{"v":1}'
    assert 'hit; ttl=4; detail="recently-validated"' in response.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 1
    harness.clock.advance(1.0)  # 1.5 s after the fetch: past the default window
    again = await harness.get(PATH, **FORCED)
    assert "fwd=request" in again.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 2
    harness.clock.advance(0.9)  # within the window of that revalidation
    await harness.get(PATH, **{"Cache-Control": "no-cache"})
    await harness.get(PATH, Pragma="no-cache")
    assert harness.origin.count(PATH) == 2


@pytest.mark.settings(revalidate_window=0)
async def test_a_window_of_0_revalidates_for_every_such_request(harness: Harness) -> None:
    await harness.fill(PATH, '{"v":1}')
    for directive in ("max-age=0", "no-cache"):
        harness.clock.advance(0.5)  # an age above 0, yet well within a window of 1 s
        response = await harness.get(PATH, **{"Cache-Control": directive})
        assert "fwd=request" in response.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 3


@pytest.mark.parametrize(
    ("extra", "one", "other", "same"),
    [
        ({}, {"token": "tok-a"}, {"token": "tok-b"}, {"token": "tok-a"}),
        (
            {"Vary": "Accept-Language"},
            {"Accept-Language": "en"},
            {"Accept-Language": "de"},
            {"Accept-Language": "EN"},  # the same selection as "en"
        ),
    ],
    ids=["credential-scope", "vary-selection"],
)
async def test_a_revalidation_is_shared_only_within_one_scope_and_selection(
    harness: Harness,
    extra: dict[str, str],
    one: dict[str, str],
    other: dict[str, str],
    same: dict[str, str],
) -> None:
    harness.origin.put(PATH, '{"v":1}', extra=extra)
    await harness.get(PATH, **one)
    await harness.get(PATH, **other)
    harness.clock.advance(2)
    await harness.get(PATH, **one, **FORCED)
    assert harness.origin.count(PATH) == 3
    response = await harness.get(PATH, **other, **FORCED)
    assert "fwd=request" in response.headers["Cache-Status"]
    harness.clock.advance(0.5)
    again = await harness.get(PATH, **same, **FORCED)
    assert "recently-validated" in again.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 4


async def test_no_store_still_stores_nothing_when_a_recent_revalidation_answers(
    harness: Harness,
) -> None:
    harness.origin.put(PATH, '{"v":1}')
    response = await harness.get(PATH, **{"Cache-Control": "no-store, max-age=0"})
    assert "stored" not in response.headers["Cache-Status"]
    assert harness.proxy.store.entries == 0  # type: ignore[attr-defined]


async def test_a_forced_long_poll_is_held_and_answered_from_its_watch(harness: Harness) -> None:
    """Chromium's fetch(): If-None-Match + max-age=0 + Prefer: wait. Held without a
    revalidation of its own, woken by the change another request stores."""
    etag = (await harness.fill(PATH, '{"v":1}')).headers["ETag"]
    harness.clock.advance(2)  # past the window: without the watch it would revalidate
    poll = {"If-None-Match": etag, "Prefer": "wait=20", **FORCED}
    held = asyncio.ensure_future(harness.get(PATH, **poll))
    await harness.wait_for(lambda: harness.proxy.waits.waiting == 1)
    assert harness.origin.count(PATH) == 1
    # A straggler holding an older tag is answered at once from the watched entry.
    stale = await harness.get(PATH, **{**poll, "If-None-Match": '"older"'})
    assert stale.status == 200 and 'detail="watched"' in stale.headers["Cache-Status"]
    assert harness.origin.count(PATH) == 1
    harness.origin.put(PATH, '{"v":2}')
    changed = await harness.get(PATH, **{"Cache-Control": "no-cache"})
    assert await changed.read() == b'{"v":2}'
    answer = await asyncio.wait_for(held, 10)
    assert answer.status == 200 and await answer.read() == b'{"v":2}'
    assert answer.headers["Preference-Applied"] == "wait=20"
    assert harness.origin.count(PATH) == 2


@pytest.mark.settings(max_waiters=0)
async def test_a_forced_long_poll_that_cannot_be_held_revalidates(harness: Harness) -> None:
    etag = (await harness.fill(PATH, '{"v":1}')).headers["ETag"]
    harness.clock.advance(2)
    response = await harness.get(PATH, **{"If-None-Match": etag, "Prefer": "wait=20", **FORCED})
    assert response.status == 304 and "Preference-Applied" not in response.headers
    assert harness.origin.count(PATH) == 2
    shed = {"outcome": "shed"}
    assert harness.metric("cacheproxy_long_poll_total", **shed) == 1  # counted once
