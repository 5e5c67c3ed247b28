"""The field parsers: RFC syntax, and total on garbage."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core.headers import (
    connection_tokens,
    format_http_date,
    parse_cache_control,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_http_date,
    parse_retry_after,
    parse_vary,
    split_list,
    strong_match,
    weak_match,
)


def test_cache_control_directives() -> None:
    cc = parse_cache_control(['public, max-age="60"', "Stale-While-Revalidate=5, no-cache"])
    assert cc.public and cc.no_cache
    assert cc.max_age == 60
    assert cc.stale_while_revalidate == 5


def test_cache_control_qualified_forms_and_bare_max_stale() -> None:
    cc = parse_cache_control('private="Set-Cookie, X-User", no-cache="X-A", max-stale')
    assert not cc.private and not cc.no_cache
    assert cc.private_fields == ("set-cookie", "x-user")
    assert cc.no_cache_fields == ("x-a",)
    assert cc.max_stale == 2**31


def test_split_list_respects_quotes() -> None:
    assert split_list(['a, "b, c", d', ",,e"]) == ["a", '"b, c"', "d", "e"]


def test_connection_tokens() -> None:
    assert connection_tokens(["keep-alive, X-Foo", "close"]) == {"keep-alive", "x-foo", "close"}


def test_http_date_formats() -> None:
    stamp = 784111777.0
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert parse_http_date(text) == stamp
    assert format_http_date(stamp) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date("yesterday") is None


def test_entity_tags() -> None:
    assert parse_entity_tag('W/"x"') == 'W/"x"'
    assert parse_entity_tag("x") is None
    assert parse_entity_tag('"a\x01"') is None
    assert parse_entity_tag_list('"a", W/"b"') == ('"a"', 'W/"b"')
    assert parse_entity_tag_list(" * ") == ("*",)
    assert weak_match('W/"a"', '"a"')
    assert not strong_match('W/"a"', '"a"')
    assert strong_match('"a"', '"a"')


def test_vary_and_retry_after() -> None:
    assert parse_vary(["Accept-Encoding, accept-language", "Accept-Encoding"]) == (
        "accept-encoding",
        "accept-language",
    )
    assert parse_vary("a, *") == ("*",)
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after(format_http_date(1000), 990) == 10
    assert parse_retry_after("soon", 0) is None


text = st.text(alphabet=st.characters(codec="latin-1"), max_size=200)


@given(text)
def test_parsers_never_raise(value: str) -> None:
    parse_cache_control(value)
    parse_http_date(value)
    parse_entity_tag(value)
    parse_entity_tag_list(value)
    parse_vary(value)
    parse_retry_after(value, 0)
    connection_tokens([value])
