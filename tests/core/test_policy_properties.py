"""Properties of the policy and the header parsers, over generated input (hypothesis).

CI runs a modest number of examples; ``PROXY_FUZZ_EXAMPLES=20000 pytest -p no:randomly
tests/core/test_policy_properties.py`` runs a fuzzing pass.
"""

from __future__ import annotations

import os
from email.utils import formatdate

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.core.conditional import not_modified
from proxy.core.headers import (
    DELTA_SECONDS_MAX,
    connection_tokens,
    normalize_field_value,
    parse_cache_control,
    parse_delta_seconds,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_http_date,
    parse_retry_after,
    parse_vary,
    split_list,
    valid_field,
)
from proxy.core.models import Fresh, Miss, Revalidate, StoredResponse, Unsatisfiable
from proxy.core.policy import (
    CachePolicy,
    credential_scope,
    current_age,
    decide,
    freshness_lifetime,
    may_serve_stale,
    request_facts,
    select_variant,
    stale_if_error_allows,
    storable,
)

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_750_000_000.0

# Field values as aiohttp hands them over: any text, including undecodable bytes as surrogates.
field_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
DIRECTIVES = [
    "max-age",
    "s-maxage",
    "no-cache",
    "no-store",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "stale-while-revalidate",
    "stale-if-error",
    "max-stale",
    "min-fresh",
    "only-if-cached",
    "immutable",
    "no-transform",
]
argument = st.one_of(
    st.integers(min_value=-5, max_value=10**12).map(str),
    st.integers(min_value=0, max_value=100).map(lambda n: f'"{n}"'),
    st.sampled_from(["", "abc", "1.5", '"', "-0", "0x10", "1e3", '"a, b"', "set-cookie"]),
    field_text,
)
directive = st.tuples(st.sampled_from(DIRECTIVES), st.one_of(st.none(), argument)).map(
    lambda pair: pair[0] if pair[1] is None else f"{pair[0]}={pair[1]}"
)
cache_control = st.one_of(
    st.lists(directive, max_size=5).map(", ".join),
    field_text,
)
http_date = st.one_of(
    st.floats(min_value=T0 - 10**7, max_value=T0 + 10**7).map(lambda t: formatdate(t, usegmt=True)),
    field_text,
)
etag = st.one_of(
    st.from_regex(r'(W/)?"[a-z0-9]{0,8}"', fullmatch=True),
    field_text,
)
scope = st.sampled_from(["", "anonymous", "scope-a", "scope-b", "scope-c"])


@st.composite
def stored_responses(draw: st.DrawFn, scopes: st.SearchStrategy[str] = scope) -> StoredResponse:
    headers: list[tuple[str, str]] = []
    for name, strategy in (
        ("Cache-Control", cache_control),
        ("Date", http_date),
        ("Expires", http_date),
        ("Last-Modified", http_date),
        ("ETag", etag),
        ("Age", st.one_of(st.integers(-5, 10**6).map(str), field_text)),
    ):
        if draw(st.booleans()):
            headers.append((name, draw(strategy)))
    request_time = draw(st.floats(min_value=T0, max_value=T0 + 100))
    response_time = request_time + draw(st.floats(min_value=0, max_value=10))
    return StoredResponse(
        status=draw(st.sampled_from([200, 203, 301, 404, 500, 503])),
        reason="",
        headers=tuple(headers),
        body=b"x",
        request_time=request_time,
        response_time=response_time,
        scope=draw(scopes),
    )


policies = st.builds(
    CachePolicy,
    heuristic_max=st.floats(min_value=0, max_value=10**5),
    keep_stale=st.floats(min_value=0, max_value=10**5),
    stale_grace=st.floats(min_value=0, max_value=10**5),
)


def facts_for(request_cc: str, scope_value: str, pragma: str | None = None):  # type: ignore[no-untyped-def]
    headers = CIMultiDict[str]()
    if request_cc:
        headers["Cache-Control"] = request_cc
    if pragma is not None:
        headers["Pragma"] = pragma
    return request_facts(
        headers, scope=scope_value, cache_control=headers.getall("cache-control", ())
    )


# -- parsers are total -----------------------------------------------------------------------------


@FUZZ
@given(
    field_text, st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
)
def test_header_parsers_never_raise(value: str, now: float) -> None:
    parsed = parse_cache_control(value)
    for delta in (
        parsed.max_age,
        parsed.s_maxage,
        parsed.max_stale,
        parsed.min_fresh,
        parsed.stale_while_revalidate,
        parsed.stale_if_error,
    ):
        assert delta is None or 0 <= delta <= DELTA_SECONDS_MAX
    parse_http_date(value)
    assert parse_entity_tag(value) in (None, value.strip())
    parse_entity_tag_list(value)
    assert all(name == "*" or name == name.lower() for name in parse_vary(value))
    retry = parse_retry_after(value, now)
    assert retry is None or retry >= 0
    split_list(value)
    connection_tokens([value])
    delta = parse_delta_seconds(value)
    assert delta is None or 0 <= delta <= DELTA_SECONDS_MAX
    normalize_field_value([value, value])
    valid_field(value, value)


@FUZZ
@given(st.lists(st.tuples(field_text, field_text), max_size=8), st.floats(min_value=0, max_value=5))
def test_a_stored_response_can_be_built_from_any_fields(
    headers: list[tuple[str, str]], delay: float
) -> None:
    entry = StoredResponse(200, "", tuple(headers), b"", T0, T0 + delay)
    assert entry.corrected_initial_age >= 0
    assert freshness_lifetime(entry, CachePolicy()) >= 0


@FUZZ
@given(stored_responses(), field_text, field_text)
def test_conditional_evaluation_never_raises(
    entry: StoredResponse, if_none_match: str, if_modified_since: str
) -> None:
    not_modified(entry, {"if-none-match": if_none_match})
    not_modified(entry, {"if-modified-since": if_modified_since})


# -- freshness -------------------------------------------------------------------------------------


@FUZZ
@given(
    stored_responses(),
    cache_control,
    st.sampled_from([None, "no-cache", ""]),
    st.floats(min_value=0, max_value=10**6),
    policies,
)
def test_a_stored_response_is_never_served_past_its_freshness_unless_a_stale_rule_allows(
    entry: StoredResponse, request_cc: str, pragma: str | None, elapsed: float, policy: CachePolicy
) -> None:
    facts = facts_for(request_cc, entry.scope, pragma)
    now = entry.response_time + elapsed
    decision = decide((entry,), facts, now, policy)
    lifetime = freshness_lifetime(entry, policy)
    age = current_age(entry, now)
    req = facts.cache_control
    match decision:
        case Fresh(served, _age, ttl, stale=False):
            assert served is entry
            assert lifetime - age > 0 and ttl > 0
            assert not entry.cache_control.no_cache
            if not req.only_if_cached:
                assert not req.no_cache and not facts.pragma_no_cache
                assert req.max_age is None or age <= req.max_age
                assert req.min_fresh is None or ttl >= req.min_fresh
        case Fresh(served, _age, ttl, stale=True):
            assert may_serve_stale(served), "served stale despite must-revalidate/no-cache/s-maxage"
            assert req.max_stale is not None and -ttl <= req.max_stale
        case Revalidate(served, _age, _fwd, background=True):
            swr = served.cache_control.stale_while_revalidate
            assert may_serve_stale(served) and swr is not None
            assert age - lifetime <= swr
        case Revalidate() | Miss() | Unsatisfiable():
            pass


@FUZZ
@given(stored_responses(), cache_control, st.floats(min_value=0, max_value=10**6), policies)
def test_stale_if_error_never_overrides_a_directive_forbidding_stale_use(
    entry: StoredResponse, request_cc: str, elapsed: float, policy: CachePolicy
) -> None:
    facts = facts_for(request_cc, entry.scope)
    if stale_if_error_allows(entry, facts, entry.response_time + elapsed, policy):
        assert may_serve_stale(entry)


# -- credential scopes -----------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(stored_responses(), min_size=1, max_size=6).map(tuple),
    scope,
    cache_control,
    st.floats(min_value=0, max_value=10**5),
)
def test_an_entry_of_one_scope_is_never_returned_to_another(
    record: tuple[StoredResponse, ...], asking: str, request_cc: str, elapsed: float
) -> None:
    facts = facts_for(request_cc, asking)
    now = T0 + elapsed
    selected = select_variant(record, facts)
    assert selected is None or selected.scope == asking
    decision = decide(record, facts, now, CachePolicy())
    if isinstance(decision, Fresh | Revalidate):
        assert decision.entry.scope == asking
    if all(entry.scope != asking for entry in record):
        assert isinstance(decision, Miss | Unsatisfiable)


credential = st.one_of(st.none(), field_text)


@FUZZ
@given(st.tuples(credential, credential), st.tuples(credential, credential))
def test_different_credentials_never_share_a_scope(
    first: tuple[str | None, str | None], second: tuple[str | None, str | None]
) -> None:
    # An empty line is not no line (the origin may tell them apart): only equal values share.
    a = credential_scope(first, shared=False)
    b = credential_scope(second, shared=False)
    assert (a == b) == (first == second)
    assert (a == "anonymous") == (first == (None, None))
    for value in first:
        if value and len(value) > 3:
            assert value not in a
    assert credential_scope(first, shared=True) == credential_scope(second, shared=True)


@FUZZ
@given(
    st.sampled_from([200, 203, 204, 301, 404, 410]),
    st.lists(st.tuples(st.sampled_from(["Cache-Control", "Expires", "Vary", "X-A"]), field_text)),
    st.sampled_from(["Set-Cookie", "set-cookie", "SET-COOKIE"]),
)
def test_a_response_setting_a_cookie_is_never_storable(
    status: int, headers: list[tuple[str, str]], cookie_field: str
) -> None:
    facts = facts_for("", "anonymous")
    received = (*headers, ("Cache-Control", "public, max-age=60"), (cookie_field, "sid=1"))
    assert not storable(status, received, facts, has_authorization=False)
    assert not storable(status, received, facts, has_authorization=True)
