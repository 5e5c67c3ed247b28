"""RFC 9110 §14 byte ranges as pure rules (proxy.core.ranges): one rule per test."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.headers import format_http_date
from proxy.core.ranges import (
    MAX_RANGES,
    ByteRange,
    NotSatisfiable,
    Partial,
    Whole,
    coalesce,
    if_range_holds,
    multipart,
    parse_range,
    range_decision,
    satisfiable,
)

LENGTH = 10_000
MODIFIED = 1_800_000_000.0
TAG = '"abc"'


def decide(value: str | None, **overrides: Any) -> object:
    facts: dict[str, Any] = {
        "method": "GET",
        "status": 200,
        "ranges": [] if value is None else [value],
        "if_range": None,
        "length": LENGTH,
        "etag": TAG,
        "last_modified": MODIFIED,
        "date": MODIFIED + 60,
        "coded": False,
        "derived": False,
    }
    facts.update(overrides)
    return range_decision(**facts)


@pytest.mark.parametrize(
    ("value", "specs"),
    [
        ("bytes=0-99", ((0, 99),)),
        ("bytes=500-", ((500, None),)),
        ("bytes=-500", ((None, 500),)),
        ("BYTES=0-0", ((0, 0),)),
        ("bytes=0-1, 5-6 ,, -3", ((0, 1), (5, 6), (None, 3))),
        ("bytes=007-008", ((7, 8),)),
    ],
)
def test_the_three_range_spec_forms_parse(value: str, specs: tuple[object, ...]) -> None:
    assert parse_range(value) == specs


@pytest.mark.parametrize(
    "value",
    ["bytes=5-1", "bytes=a-b", "items=0-1", "bytes=", "bytes=,", "bytes 0-1", "bytes=0-1;x",
     "bytes=--1", "bytes=1", "=0-1", "bytes=0-1-2", "bytes = 0-1"],
)  # fmt: skip
def test_an_invalid_ranges_specifier_is_none(value: str) -> None:
    assert parse_range(value) is None


def test_positions_are_clamped_to_the_representation() -> None:
    assert satisfiable([(9_990, 20_000)], LENGTH) == (ByteRange(9_990, 9_999),)
    assert satisfiable([(None, 20_000)], LENGTH) == (ByteRange(0, 9_999),)
    assert satisfiable([(None, 10)], LENGTH) == (ByteRange(9_990, 9_999),)


def test_a_first_pos_past_the_end_and_a_zero_suffix_select_nothing() -> None:
    assert satisfiable([(LENGTH, None), (None, 0)], LENGTH) == ()


def test_a_huge_position_is_past_the_end_not_an_error() -> None:
    assert decide("bytes=" + "9" * 400 + "-") == NotSatisfiable(LENGTH)
    assert decide("bytes=0-" + "9" * 400) == Partial((ByteRange(0, LENGTH - 1),), LENGTH)


def test_overlapping_adjacent_and_near_ranges_coalesce_in_ascending_order() -> None:
    ranges = [ByteRange(500, 600), ByteRange(0, 10), ByteRange(5, 20), ByteRange(21, 30)]
    assert coalesce(ranges) == (ByteRange(0, 30), ByteRange(500, 600))
    assert coalesce([ByteRange(0, 9), ByteRange(50, 59)]) == (ByteRange(0, 59),)
    assert coalesce([ByteRange(0, 9), ByteRange(200, 209)]) == (
        ByteRange(0, 9),
        ByteRange(200, 209),
    )


def test_many_overlapping_ranges_cost_at_most_the_body() -> None:
    decision = decide("bytes=" + ",".join(["0-"] * MAX_RANGES))
    assert decision == Partial((ByteRange(0, LENGTH - 1),), LENGTH)


def test_more_range_specs_than_max_ranges_are_ignored() -> None:
    spread = ",".join(f"{i * 200}-{i * 200 + 1}" for i in range(MAX_RANGES + 1))
    assert decide("bytes=" + spread) == Whole("too-many")


def test_no_range_and_an_invalid_range_send_the_whole_representation() -> None:
    assert decide(None) == Whole("no-range")
    assert decide("bytes=5-1") == Whole("invalid")
    assert decide("bytes=0-1", ranges=["bytes=0-1", "bytes=2-3"]) == Whole("invalid")


def test_only_a_get_of_a_200_has_ranges() -> None:
    assert decide("bytes=0-1", method="HEAD") == Whole("method")
    assert decide("bytes=0-1", status=404) == Whole("status")


def test_all_ranges_unsatisfiable_is_416_with_the_length() -> None:
    decision = decide("bytes=10000-, -0")
    assert decision == NotSatisfiable(LENGTH)
    assert isinstance(decision, NotSatisfiable)
    assert decision.content_range == "bytes */10000"


def test_one_satisfiable_range_among_unsatisfiable_ones_is_served() -> None:
    assert decide("bytes=20000-, 0-0") == Partial((ByteRange(0, 0),), LENGTH)


def test_an_empty_representation_is_sent_whole() -> None:
    assert decide("bytes=-5", length=0) == Whole("empty")


def test_several_ranges_of_a_coded_representation_are_sent_whole() -> None:
    assert decide("bytes=0-1,5000-5001", coded=True) == Whole("coding")
    assert decide("bytes=0-1", coded=True) == Partial((ByteRange(0, 1),), LENGTH)


def test_if_range_with_the_strong_etag_sends_the_range() -> None:
    assert isinstance(decide("bytes=0-1", if_range=TAG), Partial)
    assert decide("bytes=0-1", if_range='"other"') == Whole("if-range")


def test_if_range_with_a_weak_etag_never_matches() -> None:
    assert not if_range_holds('W/"abc"', etag=TAG, last_modified=None, date=None, derived=False)
    assert not if_range_holds('W/"abc"', etag='W/"abc"', last_modified=None, date=None,
                              derived=False)  # fmt: skip
    assert not if_range_holds(TAG, etag='W/"abc"', last_modified=None, date=None, derived=False)


def test_if_range_with_the_exact_strong_last_modified_sends_the_range() -> None:
    exact = format_http_date(MODIFIED)
    assert isinstance(decide("bytes=0-1", if_range=exact), Partial)
    assert decide("bytes=0-1", if_range=format_http_date(MODIFIED + 1)) == Whole("if-range")
    # "exact match", not If-Unmodified-Since's "earlier or equal" (§13.1.5)
    assert decide("bytes=0-1", if_range=format_http_date(MODIFIED - 1)) == Whole("if-range")


def test_if_range_with_a_date_needs_a_strong_last_modified() -> None:
    exact = format_http_date(MODIFIED)
    assert decide("bytes=0-1", if_range=exact, date=MODIFIED) == Whole("if-range")
    assert decide("bytes=0-1", if_range=exact, last_modified=None) == Whole("if-range")
    assert decide("bytes=0-1", if_range=exact, derived=True) == Whole("if-range")


def test_an_invalid_if_range_is_false() -> None:
    assert decide("bytes=0-1", if_range="yesterday") == Whole("if-range")


def test_if_range_is_evaluated_before_the_range_is_satisfiable() -> None:
    assert decide("bytes=20000-", if_range='"other"') == Whole("if-range")


def test_multipart_byteranges_body_has_each_part_with_its_fields() -> None:
    body = bytes(range(256)) * 4
    partial = Partial((ByteRange(0, 2), ByteRange(1000, 1023)), len(body))
    out = multipart(body, partial, "audio/mpeg", "B0UND")
    assert out == (
        b"--B0UND\r\nContent-Type: audio/mpeg\r\nContent-Range: bytes 0-2/1024\r\n\r\n"
        + body[0:3]
        + b"\r\n--B0UND\r\nContent-Type: audio/mpeg\r\nContent-Range: bytes 1000-1023/1024\r\n"
        + b"\r\n"
        + body[1000:]
        + b"\r\n--B0UND--\r\n"
    )
    untyped = multipart(body, partial, None, "B0UND")
    assert b"Content-Type" not in untyped
