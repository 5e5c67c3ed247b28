"""The RFC details the best caches get right, one rule per test, named after its section."""

from __future__ import annotations

import calendar

import pytest

from proxy.core.headers import parse_age, parse_cdn_cache_control, parse_http_date
from proxy.core.models import Answer, Fetch, Forward, Relay, StoredResponse
from proxy.core.policy import CachePolicy, freshness_lifetime, settle, shareable
from tests.support.policy_facts import facts

NOV_6_1994 = float(calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0)))
NOW = 1_800_000_000.0
POLICY = CachePolicy()


def entry(*headers: tuple[str, str], now: float = NOW) -> StoredResponse:
    return StoredResponse(
        status=200,
        reason="OK",
        headers=headers,
        body=b"x",
        request_time=now,
        response_time=now,
        targeted=True,
    )


# -- RFC 9110 §5.6.7 HTTP-date ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",  # surrounding OWS is not part of the value
    ],
)
def test_rfc9110_5_6_7_accepts_the_three_formats(value: str) -> None:
    assert parse_http_date(value) == NOV_6_1994


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 UTC",  # a zone other than GMT
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun 06 Nov 1994 08:49:37 GMT",  # missing comma
        "Sun,  06 Nov 1994 08:49:37 GMT",  # extra space
        "Sun, 06 Nov 1994  08:49:37 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes in the IMF form
        "Sun, 06 Nov 1994 08.49.37 GMT",  # periods in the time
        "Sun, 06 Nov 1994 8:49:37 GMT",  # one-digit hour
        "Sun, 06 Nov 94 08:49:37 GMT",  # two-digit year outside RFC 850
        "Sun, 6 Nov 1994 08:49:37 GMT",  # one-digit day in the IMF form
        "Sun, 31 Nov 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 24:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 UTC",
        "Sun Nov 6 08:49:37 1994",  # asctime needs a two-character day
        "1994-11-06T08:49:37Z",
        "0",
        "",
    ],
)
def test_rfc9110_5_6_7_rejects_everything_else(value: str) -> None:
    assert parse_http_date(value) is None


def test_rfc9110_5_6_7_rfc850_year_more_than_50_years_ahead_is_in_the_past() -> None:
    now_2026 = float(calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0)))
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now_2026) == NOV_6_1994
    in_2070 = parse_http_date("Thursday, 06-Nov-70 08:49:37 GMT", now_2026)
    assert in_2070 == float(calendar.timegm((2070, 11, 6, 8, 49, 37, 0, 0, 0)))
    in_1977 = parse_http_date("Sunday, 06-Nov-77 08:49:37 GMT", now_2026)
    assert in_1977 == float(calendar.timegm((1977, 11, 6, 8, 49, 37, 0, 0, 0)))


# -- RFC 9111 §5.3 Expires -------------------------------------------------------------------------


def test_rfc9111_5_3_invalid_expires_means_already_expired() -> None:
    date = ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
    assert (
        freshness_lifetime(entry(date, ("Expires", "Sun, 06 Nov 1994 09:49:37 GMT")), POLICY)
        == 3600
    )
    for invalid in ("Sun, 06 Nov 1994 09:49:37 UTC", "0", "-1", "tomorrow"):
        assert freshness_lifetime(entry(date, ("Expires", invalid)), POLICY) == 0


def test_rfc9111_5_3_several_expires_lines_are_invalid() -> None:
    later = ("Expires", "Sun, 06 Nov 1994 09:49:37 GMT")
    date = ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
    assert freshness_lifetime(entry(date, later, later), POLICY) == 0


# -- RFC 9111 §5.1 Age -----------------------------------------------------------------------------


def test_rfc9111_5_1_list_valued_age_uses_its_first_member() -> None:
    assert parse_age("7200, 0") == 7200
    assert parse_age(["7200", "0"]) == 7200
    assert entry(("Age", "7200, 0")).corrected_initial_age >= 7200


def test_rfc9111_5_1_invalid_age_is_ignored() -> None:
    for invalid in ("-5", "abc", "1.5", '"7"', ""):
        assert parse_age(invalid) is None
        assert entry(("Age", invalid)).corrected_initial_age == 0


# -- RFC 9213 CDN-Cache-Control as an RFC 9651 Dictionary ------------------------------------------


def test_rfc9213_2_1_cdn_cache_control_is_a_structured_dictionary() -> None:
    cc = parse_cdn_cache_control("max-age=600, stale-if-error=30, public")
    assert cc is not None and cc.max_age == 600 and cc.stale_if_error == 30 and cc.public
    assert freshness_lifetime(entry(("CDN-Cache-Control", "max-age=600")), POLICY) == 600


@pytest.mark.parametrize(
    "field",
    [
        "max-age=10000, &&&&&",  # does not parse as a Dictionary
        'max-age="10000"',  # a String where an Integer is required
        "max-age=10.5",  # a Decimal
        "max-age=-1",
        "max-age=10, no-store=5",  # a flag with a value
        "Max-Age=10",  # keys are lower-case
    ],
)
def test_rfc9213_2_1_a_field_that_fails_to_parse_is_ignored_entirely(field: str) -> None:
    assert parse_cdn_cache_control(field) is None
    fallback = entry(("CDN-Cache-Control", field), ("Cache-Control", "max-age=5"))
    assert freshness_lifetime(fallback, POLICY) == 5


# -- which answers may be handed to every collapsed caller (RFC 9111 §3, §3.5, §5.2.2) -------------


@pytest.mark.parametrize(
    ("fields", "shared_scope", "expected"),
    [
        ((("Cache-Control", "max-age=5"),), False, True),
        ((("Retry-After", "600"),), False, True),
        ((("Set-Cookie", "session=1"),), False, False),
        ((("Cache-Control", "private"),), False, False),
        ((("Cache-Control", 'private="X-User"'),), False, False),
        ((("Cache-Control", "no-store"),), False, False),
        ((("Retry-After", "600"),), True, False),  # one token's 429 is not another's
        ((("Cache-Control", "public"),), True, True),
        ((("Cache-Control", "s-maxage=5"),), True, True),
        ((("Cache-Control", "public"), ("Set-Cookie", "s=1")), True, False),
    ],
)
def test_rfc9111_3_5_only_answers_every_waiter_may_receive_are_shared(
    fields: tuple[tuple[str, str], ...], shared_scope: bool, expected: bool
) -> None:
    assert shareable(fields, shared_scope=shared_scope) is expected


def test_rfc9111_3_5_a_collapsed_caller_of_an_unshareable_answer_asks_itself() -> None:
    fetch = Fetch(None, "uri-miss")
    waiter = Answer(503, None, False, False, False, led=False, collapsed=True, shareable=False)
    assert isinstance(settle(fetch, waiter, facts(), NOW, POLICY), Forward)
    leader = Answer(503, None, False, False, False, led=True, collapsed=False, shareable=False)
    assert isinstance(settle(fetch, leader, facts(), NOW, POLICY), Relay)


@pytest.mark.parametrize(
    "value",
    [
        "sun, 06 nov 1994 08:49:37 GMT",
        "SUN, 06 NOV 1994 08:49:37 GMT",
        "SUNDAY, 06-nOV-94 08:49:37 GMT",
        "sun nov  6 08:49:37 1994",
    ],
)
def test_rfc9110_5_6_7_day_and_month_names_are_read_in_any_case(value: str) -> None:
    assert parse_http_date(value) == NOV_6_1994


def test_rfc9111_5_3_an_expires_in_capitals_names_its_date_not_already_expired() -> None:
    from proxy.core.policy import CachePolicy, freshness_lifetime

    dated = entry(
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Expires", "SUN, 06 NOV 1994 08:59:37 GMT"),
        now=NOV_6_1994,
    )
    assert freshness_lifetime(dated, CachePolicy()) == 600.0


# -- RFC 9111 §4.1 Vary: nominated fields compared as their grammar allows ------------------------


@pytest.mark.parametrize(
    ("name", "one", "other"),
    [
        ("accept-encoding", ["gzip, br"], ["gzip,br"]),
        ("accept-encoding", ["GZIP, BR"], ["gzip,br"]),
        ("accept-language", ["en-US, de;q=0.5"], ["en-us,de; Q=0.5"]),
        ("accept-language", ["en-US", "de;q=0.5"], ["en-US,de;q=0.5"]),
        ("accept", ["Text/HTML ; Level=1, */*;q=0.1"], ["text/html;level=1,*/*;q=0.1"]),
        ("accept-charset", ["UTF-8 , ISO-8859-1"], ["utf-8,iso-8859-1"]),
        ("prefer", ["wait=25 , respond-async"], ["wait=25,respond-async"]),
    ],
)
def test_rfc9111_4_1_list_fields_compare_after_normalising_whitespace_and_case(
    name: str, one: list[str], other: list[str]
) -> None:
    from proxy.core.headers import normalise_selecting

    assert normalise_selecting(name, one) == normalise_selecting(name, other)


@pytest.mark.parametrize(
    ("name", "one", "other"),
    [
        ("accept-language", ["en"], ["de"]),
        ("accept", ['text/html;x="A"'], ['text/html;x="a"']),  # parameter values keep case
        ("prefer", ["wait=25"], ["WAIT=25"]),  # not a case-insensitive list
        ("x-tenant", ["A"], ["a"]),  # unknown grammar: case is significant
        ("x-tenant", ["a,b"], ["a, b"]),  # unknown grammar: not a list
    ],
)
def test_rfc9111_4_1_fields_that_differ_in_meaning_select_other_variants(
    name: str, one: list[str], other: list[str]
) -> None:
    from proxy.core.headers import normalise_selecting

    assert normalise_selecting(name, one) != normalise_selecting(name, other)
