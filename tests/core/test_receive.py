"""The policy's one decision on an origin's answer to a fetch (``policy.receive``), rule by rule.

Plain functions over values with an explicit ``now``: no event loop, no origin, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from proxy.core.headers import format_http_date
from proxy.core.models import (
    Freshen,
    Headers,
    KeepStale,
    Refetch,
    ShareError,
    StoreAndUse,
    Stream,
    UpstreamHead,
)
from proxy.core.policy import ERROR_BODY_LIMIT, new_entry, receive
from tests.core.test_policy import NOW, POLICY, facts, stored

LIMIT = POLICY.max_entry_bytes


def head(
    status: int = 200, *headers: tuple[str, str], length: int | None = None, at: float = NOW
) -> UpstreamHead:
    fields: Headers = (("Date", format_http_date(at)), *headers)
    return UpstreamHead(status, "", fields, length, at - 0.1, at)


# §4.3.4 freshening stored responses upon validation


def test_a_304_whose_strong_etag_matches_freshens_the_stored_response() -> None:
    entry = stored(("ETag", '"v1"'), ("Cache-Control", "max-age=10"))
    answer = head(304, ("ETag", '"v1"'), ("Cache-Control", "max-age=60"), at=NOW + 30)
    decision = receive(answer, facts(), entry, NOW + 30, POLICY)
    assert isinstance(decision, Freshen)
    assert decision.entry.header("cache-control") == "max-age=60"
    assert decision.entry.response_time == NOW + 30 and decision.entry.body == entry.body


def test_a_304_that_selects_no_stored_response_is_refetched_without_validators() -> None:
    entry = stored(("ETag", '"v1"'))
    answer = head(304, ("ETag", '"v2"'))
    assert receive(answer, facts(), entry, NOW, POLICY) == Refetch()


def test_a_304_with_a_wider_vary_selects_the_stored_response_by_the_union() -> None:
    entry = stored(("ETag", '"v1"'), ("Cache-Control", "max-age=10"))
    answer = head(304, ("ETag", '"v1"'), ("Vary", "Accept-Language"))
    decision = receive(answer, facts(accept_language="de"), entry, NOW, POLICY)
    assert isinstance(decision, Freshen)
    assert decision.entry.selection_vary == ("accept-language",)
    assert decision.entry.selecting and decision.entry.selecting != entry.selecting


def test_a_304_to_an_unconditional_fetch_is_streamed_as_it_came() -> None:
    assert receive(head(304), facts(), None, NOW, POLICY) == Stream(hold_back=False)


# §3.5 (with RFC 6265): a cookie is one caller's, never the shared entry's


def test_a_304_carrying_set_cookie_is_refetched_rather_than_stored() -> None:
    entry = stored(("ETag", '"v1"'))
    answer = head(304, ("ETag", '"v1"'), ("Set-Cookie", "session=1"))
    assert receive(answer, facts(), entry, NOW, POLICY) == Refetch()


def test_a_response_carrying_set_cookie_is_streamed_to_its_caller_alone() -> None:
    answer = head(200, ("Cache-Control", "max-age=60"), ("Set-Cookie", "session=1"))
    assert receive(answer, facts(), None, NOW, POLICY) == Stream(hold_back=False)


# §3 storing responses in caches


def test_a_storable_response_is_read_within_the_entry_limit_and_stored() -> None:
    answer = head(200, ("Cache-Control", "max-age=60"))
    assert receive(answer, facts(), None, NOW, POLICY) == StoreAndUse(LIMIT, True, False)


def test_a_response_announced_larger_than_the_entry_limit_is_streamed() -> None:
    answer = head(200, ("Cache-Control", "max-age=60"), length=LIMIT + 1)
    assert receive(answer, facts(), None, NOW, POLICY) == Stream(hold_back=False)
    small = replace(POLICY, max_entry_bytes=10)
    assert receive(head(200, ("Cache-Control", "max-age=60"), length=11), facts(), None, NOW, small)
    assert isinstance(receive(head(200, length=10), facts(), None, NOW, small), StoreAndUse)


def test_no_store_in_the_response_streams_it() -> None:
    answer = head(200, ("Cache-Control", "no-store"))
    assert receive(answer, facts(), None, NOW, POLICY) == Stream(hold_back=False)


def test_no_store_in_the_request_streams_the_response() -> None:  # §5.2.1.5
    answer = head(200, ("Cache-Control", "max-age=60"))
    request = facts(cache_control="no-store")
    assert receive(answer, request, None, NOW, POLICY) == Stream(hold_back=False)


def test_a_response_to_an_authorized_request_is_stored_only_when_it_says_so() -> None:  # §3.5
    request = facts(authorization="Bearer a")
    plain = head(200, ("Cache-Control", "max-age=60"))
    assert receive(plain, request, None, NOW, POLICY) == Stream(hold_back=False)
    public = head(200, ("Cache-Control", "public, max-age=60"))
    assert isinstance(receive(public, request, None, NOW, POLICY), StoreAndUse)


# Errors: RFC 5861 stale-if-error, §4.2.4, and the small error body shared with the flight


def test_an_error_the_stale_entry_covers_is_read_but_never_stored_over_it() -> None:
    entry = stored(("Cache-Control", "max-age=10, stale-if-error=100"))
    answer = head(500, ("Cache-Control", "max-age=60"), at=NOW + 50)
    decision = receive(answer, facts(), entry, NOW + 50, POLICY)
    assert decision == KeepStale(ERROR_BODY_LIMIT, True, False)


def test_an_error_past_every_stale_window_replaces_the_stale_entry() -> None:
    entry = stored(("Cache-Control", "max-age=10"))
    late = NOW + 10 + POLICY.stale_grace + 1
    answer = head(500, ("Cache-Control", "max-age=60"), at=late)
    assert isinstance(receive(answer, facts(), entry, late, POLICY), StoreAndUse)


def test_an_error_that_may_not_be_stored_is_read_whole_to_share_with_the_flight() -> None:
    decision = receive(head(502), facts(), None, NOW, POLICY)
    assert decision == ShareError(ERROR_BODY_LIMIT, True, False)
    large = head(502, length=ERROR_BODY_LIMIT + 1)
    assert receive(large, facts(), None, NOW, POLICY) == Stream(hold_back=False)


def test_a_429_every_caller_may_receive_holds_the_flight_back() -> None:
    assert receive(head(429), facts(), None, NOW, POLICY) == ShareError(
        ERROR_BODY_LIMIT, True, True
    )
    private = head(429, ("Cache-Control", "private"))
    assert receive(private, facts(), None, NOW, POLICY) == ShareError(
        ERROR_BODY_LIMIT, False, False
    )


def test_under_a_shared_scope_a_503_is_shared_only_when_it_says_so() -> None:
    shared = replace(POLICY, shared_scope=True)
    assert receive(head(503), facts(), None, NOW, shared) == ShareError(
        ERROR_BODY_LIMIT, False, False
    )
    said = head(503, ("Cache-Control", "must-revalidate"))
    assert receive(said, facts(), None, NOW, shared) == ShareError(ERROR_BODY_LIMIT, True, True)


# What is stored (§3.1; RFC 9110 §6.6.1)


def test_the_stored_response_has_a_date_its_storable_fields_and_its_selection() -> None:
    answer = UpstreamHead(
        200,
        "OK",
        (
            ("Cache-Control", 'max-age=60, private="X-Token"'),
            ("X-Token", "secret"),
            ("Vary", "Accept-Language"),
        ),
        None,
        NOW - 0.1,
        NOW,
    )
    entry = new_entry(answer, b"body", facts("me", accept_language="de"))
    assert entry.header("date") == format_http_date(NOW)
    assert entry.header("x-token") is None
    assert entry.scope == "me" and entry.selecting and entry.body == b"body"
    assert entry.request_time == NOW - 0.1 and entry.response_time == NOW
