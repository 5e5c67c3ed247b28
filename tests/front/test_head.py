"""The pure head rules of ``proxy.front.head``, each on its own (no sockets)."""

from __future__ import annotations

import itertools

import pytest

from proxy.front.head import (
    MAX_HEADER_FIELDS,
    HeadFacts,
    expectations,
    fields_too_large,
    has_body,
    http09,
    plain_head,
    refusal,
    unfinished_head,
    unfinished_refusal,
)

LIMIT = 1000


def status(
    facts: HeadFacts, method: bytes = b"GET", version: str = "1.1", target: str = "/"
) -> int:
    rejected = refusal(facts, method, version, target, LIMIT)
    return 0 if rejected is None else rejected.status


@pytest.mark.parametrize(
    ("facts", "method", "version", "target", "expected"),
    [
        (HeadFacts(["h"]), b"GET", "1.1", "/", 0),
        (HeadFacts(["h"]), b"GET", "2.0", "/", 505),
        (HeadFacts(["h"]), b"GET", "1.1", "http://h/", 400),
        (HeadFacts(["h"]), b"CONNECT", "1.1", "/", 405),
        (HeadFacts([]), b"GET", "1.1", "/", 400),
        (HeadFacts([]), b"GET", "1.0", "/", 0),
        (HeadFacts(["a", "b"]), b"GET", "1.1", "/", 400),
        (HeadFacts(["h"], repeated_credential=True), b"GET", "1.1", "/", 400),
        (HeadFacts(["h"], codings=["chunked"]), b"POST", "1.0", "/", 400),
        (HeadFacts(["h"], codings=["gzip"]), b"POST", "1.1", "/", 400),
        (HeadFacts(["h"], codings=["gzip", "chunked"]), b"POST", "1.1", "/", 501),
        (HeadFacts(["h"], codings=["chunked"]), b"POST", "1.1", "/", 0),
        (HeadFacts(["h"], expectations=["x"]), b"POST", "1.1", "/", 417),
        (HeadFacts(["h"], length=str(LIMIT + 1)), b"POST", "1.1", "/", 413),
        (HeadFacts(["h"], length=str(LIMIT)), b"POST", "1.1", "/", 0),
    ],
)
def test_refusal(facts: HeadFacts, method: bytes, version: str, target: str, expected: int) -> None:
    assert status(facts, method, version, target) == expected


def test_connect_is_refused_with_allow() -> None:
    rejected = refusal(HeadFacts(["h"]), b"CONNECT", "1.1", "/", LIMIT)
    assert (
        rejected is not None
        and ("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS") in rejected.headers
    )


def test_expectations_keep_all_but_100_continue() -> None:
    assert expectations("100-Continue") == []
    assert expectations(" 100-continue , Foo ,") == ["foo"]


def test_has_body() -> None:
    assert not has_body(None)
    assert not has_body(HeadFacts(length="0"))
    assert has_body(HeadFacts(length="3"))
    assert has_body(HeadFacts(codings=["chunked"]))


def test_plain_head_passes_refusal_but_for_connect() -> None:
    """The hit path's shortcut never lets through a head ``refusal`` would refuse."""
    for version, hosts, target, method in itertools.product(
        ("1.1", "1.0", "2.0"),
        ([], ["h"], ["h", "i"]),
        ("/", "*", "http://h/"),
        (b"GET", b"CONNECT"),
    ):
        if plain_head(True, version, hosts, target):
            expected = 405 if method == b"CONNECT" else 0
            assert status(HeadFacts(hosts), method, version, target) == expected
    assert not plain_head(False, "1.1", ["h"], "/")


def test_unfinished_head_counts_from_the_last_blank_line() -> None:
    assert unfinished_head(b"GET / HTTP/1.1\r\n\r\nGET /x", False, 0) == 6
    assert unfinished_head(b"GET /x", False, 0) == 6
    assert unfinished_head(b"abc", True, 10) == 13


def test_unfinished_refusal_is_414_on_the_request_line_else_431() -> None:
    assert unfinished_refusal(b"/x", False, 30, 10, 20) is None
    assert unfinished_refusal(b"/x", False, 31, 10, 20).status == 414  # type: ignore[union-attr]
    assert unfinished_refusal(b"/x", True, 31, 10, 20).status == 431  # type: ignore[union-attr]
    assert unfinished_refusal(b"", False, 31, 10, 20).status == 431  # type: ignore[union-attr]


def test_http09_is_a_request_line_without_a_version() -> None:
    assert http09(b"/", False, b"GET /\r\n")
    assert not http09(b"/", True, b"GET /\r\n")
    assert not http09(b"", False, b"\r\n")


def test_fields_too_large() -> None:
    assert not fields_too_large(100, MAX_HEADER_FIELDS, 100)
    assert fields_too_large(101, 1, 100)
    assert fields_too_large(1, MAX_HEADER_FIELDS + 1, 100)
