"""The field parsers: RFC syntax, and total on garbage."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.core import headers as fields


def test_cache_control_directives() -> None:
    cc = fields.parse_cache_control(['public, max-age="60"', "Stale-While-Revalidate=5, no-cache"])
    assert cc.public and cc.no_cache
    assert cc.max_age == 60
    assert cc.stale_while_revalidate == 5


def test_cache_control_qualified_forms_and_bare_max_stale() -> None:
    cc = fields.parse_cache_control('private="Set-Cookie, X-User", no-cache="X-A", max-stale')
    assert not cc.private and not cc.no_cache
    assert cc.private_fields == ("set-cookie", "x-user")
    assert cc.no_cache_fields == ("x-a",)
    assert cc.max_stale == 2**31


def test_split_list_respects_quotes() -> None:
    assert fields.split_list(['a, "b, c", d', ",,e"]) == ["a", '"b, c"', "d", "e"]


def test_connection_tokens() -> None:
    assert fields.connection_tokens(["keep-alive, X-Foo", "close"]) == {
        "keep-alive",
        "x-foo",
        "close",
    }


def test_http_date_formats() -> None:
    stamp = 784111777.0
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert fields.parse_http_date(text) == stamp
    assert fields.format_http_date(stamp) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert fields.parse_http_date("yesterday") is None


def test_entity_tags() -> None:
    assert fields.parse_entity_tag('W/"x"') == 'W/"x"'
    assert fields.parse_entity_tag("x") is None
    assert fields.parse_entity_tag('"a\x01"') is None
    assert fields.parse_entity_tag_list('"a", W/"b"') == ('"a"', 'W/"b"')
    assert fields.parse_entity_tag_list(" * ") == ("*",)
    assert fields.weak_match('W/"a"', '"a"')
    assert not fields.strong_match('W/"a"', '"a"')
    assert fields.strong_match('"a"', '"a"')


def test_vary_and_retry_after() -> None:
    assert fields.parse_vary(["Accept-Encoding, accept-language", "Accept-Encoding"]) == (
        "accept-encoding",
        "accept-language",
    )
    assert fields.parse_vary("a, *") == ("*",)
    assert fields.parse_retry_after("120", 0) == 120
    assert fields.parse_retry_after(fields.format_http_date(1000), 990) == 10
    assert fields.parse_retry_after("soon", 0) is None


text = st.text(alphabet=st.characters(codec="latin-1"), max_size=200)


@given(text)
def test_parsers_never_raise(value: str) -> None:
    fields.parse_cache_control(value)
    fields.parse_http_date(value)
    fields.parse_entity_tag(value)
    fields.parse_entity_tag_list(value)
    fields.parse_vary(value)
    fields.parse_retry_after(value, 0)
    fields.connection_tokens([value])
