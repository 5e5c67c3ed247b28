"""RFC 9111 rules, one test each, as plain functions with an explicit ``now``."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from proxy.core.coding import Representation
from proxy.core.conditional import (
    conditional_headers,
    freshen,
    not_modified,
    not_modified_headers,
    validator_matches,
)
from proxy.core.headers import format_http_date
from proxy.core.models import Fresh, Miss, Revalidate, StoredResponse, Unsatisfiable
from proxy.core.policy import (
    CachePolicy,
    RequestFacts,
    cache_status,
    credential_scope,
    current_age,
    decide,
    freshness_lifetime,
    invalidates,
    invalidation_targets,
    request_facts,
    retention,
    select_variant,
    selecting_values,
    stale_if_error_allows,
    storable,
    stored_headers,
)

NOW = 1_800_000_000.0
POLICY = CachePolicy(heuristic_max=3600, keep_stale=600, stale_grace=60)


def stored(
    *headers: tuple[str, str],
    status: int = 200,
    at: float = NOW,
    scope: str = "s",
    selecting: tuple[tuple[str, str], ...] = (),
    request_time: float | None = None,
) -> StoredResponse:
    return StoredResponse(
        status=status,
        reason="OK",
        headers=(("Date", format_http_date(at)), *headers),
        body=b"body",
        request_time=at if request_time is None else request_time,
        response_time=at,
        scope=scope,
        selecting=selecting,
        targeted=True,
    )


def facts(scope: str = "s", **headers: str) -> RequestFacts:
    multi = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    return request_facts(multi, scope=scope, cache_control=multi.getall("cache-control", []))


# §4.2.1 calculating freshness lifetime


def test_s_maxage_wins_over_max_age() -> None:
    entry = stored(("Cache-Control", "max-age=5, s-maxage=50"))
    assert freshness_lifetime(entry, POLICY) == 50


def test_max_age_wins_over_expires() -> None:
    entry = stored(("Cache-Control", "max-age=5"), ("Expires", format_http_date(NOW + 100)))
    assert freshness_lifetime(entry, POLICY) == 5


def test_expires_minus_date() -> None:
    entry = stored(("Expires", format_http_date(NOW + 100)))
    assert freshness_lifetime(entry, POLICY) == 100


def test_invalid_expires_means_already_expired() -> None:
    entry = stored(("Expires", "0"))
    assert freshness_lifetime(entry, POLICY) == 0


def test_invalid_max_age_is_stale() -> None:
    entry = stored(("Cache-Control", "max-age=abc"))
    assert freshness_lifetime(entry, POLICY) == 0


def test_negative_max_age_is_stale() -> None:
    entry = stored(("Cache-Control", "max-age=-5"))
    assert freshness_lifetime(entry, POLICY) == 0


def test_duplicate_max_age_uses_the_first() -> None:
    entry = stored(("Cache-Control", "max-age=10, max-age=1000"))
    assert freshness_lifetime(entry, POLICY) == 10


def test_huge_max_age_is_clamped_to_2_pow_31() -> None:
    entry = stored(("Cache-Control", "max-age=99999999999999999999"))
    assert freshness_lifetime(entry, POLICY) == 2**31


def test_cdn_cache_control_is_used_instead_of_cache_control() -> None:
    entry = stored(("Cache-Control", "max-age=1"), ("CDN-Cache-Control", "max-age=90"))
    assert freshness_lifetime(entry, POLICY) == 90


# §4.2.2 heuristic freshness


def test_heuristic_is_a_tenth_of_time_since_last_modified() -> None:
    entry = stored(("Last-Modified", format_http_date(NOW - 1000)))
    assert freshness_lifetime(entry, POLICY) == 100


def test_heuristic_is_capped() -> None:
    entry = stored(("Last-Modified", format_http_date(NOW - 10**7)))
    assert freshness_lifetime(entry, POLICY) == 3600


def test_no_heuristic_for_status_not_heuristically_cacheable() -> None:
    entry = stored(("Last-Modified", format_http_date(NOW - 1000)), status=302)
    assert freshness_lifetime(entry, POLICY) == 0


# §4.2.3 calculating age


def test_age_counts_resident_time() -> None:
    entry = stored(("Cache-Control", "max-age=60"))
    assert current_age(entry, NOW + 7) == 7


def test_age_includes_upstream_age_and_response_delay() -> None:
    entry = stored(("Age", "10"), at=NOW, request_time=NOW - 2)
    assert current_age(entry, NOW + 1) == 13


def test_age_uses_apparent_age_when_date_is_old() -> None:
    entry = StoredResponse(200, "OK", (("Date", format_http_date(NOW - 20)),), b"", NOW, NOW, "s")
    assert current_age(entry, NOW) == 20


def test_apparent_age_compares_date_at_its_one_second_resolution() -> None:
    dated = StoredResponse(
        200, "OK", (("Date", format_http_date(NOW)),), b"", NOW + 0.9, NOW + 0.9, "s"
    )
    assert current_age(dated, NOW + 0.9) == 0
    assert current_age(dated, NOW + 2.9) == 2


# §4 constructing responses from caches


def test_fresh_entry_is_served() -> None:
    decision = decide((stored(("Cache-Control", "max-age=5")),), facts(), NOW + 2, POLICY)
    assert isinstance(decision, Fresh)
    assert decision.ttl == 3


def test_stale_entry_must_be_revalidated() -> None:
    decision = decide((stored(("Cache-Control", "max-age=5")),), facts(), NOW + 6, POLICY)
    assert decision == Revalidate(decision.entry, 6, "stale")  # type: ignore[union-attr]


def test_empty_record_is_a_uri_miss() -> None:
    assert decide(None, facts(), NOW, POLICY) == Miss("uri-miss")


def test_response_no_cache_always_revalidates() -> None:
    decision = decide((stored(("Cache-Control", "max-age=60, no-cache")),), facts(), NOW, POLICY)
    assert isinstance(decision, Revalidate)


# §5.2.1 request directives


def test_request_no_cache_forces_validation() -> None:
    record = (stored(("Cache-Control", "max-age=60")),)
    decision = decide(record, facts(cache_control="no-cache"), NOW, POLICY)
    assert isinstance(decision, Revalidate) and decision.fwd == "request"


def test_pragma_no_cache_without_cache_control_forces_validation() -> None:
    record = (stored(("Cache-Control", "max-age=60")),)
    assert isinstance(decide(record, facts(pragma="no-cache"), NOW, POLICY), Revalidate)


def test_request_max_age_limits_acceptable_age() -> None:
    record = (stored(("Cache-Control", "max-age=60")),)
    decision = decide(record, facts(cache_control="max-age=3"), NOW + 5, POLICY)
    assert isinstance(decision, Revalidate) and decision.fwd == "request"


def test_request_min_fresh_requires_remaining_freshness() -> None:
    record = (stored(("Cache-Control", "max-age=60")),)
    assert isinstance(
        decide(record, facts(cache_control="min-fresh=58"), NOW + 5, POLICY), Revalidate
    )
    assert isinstance(decide(record, facts(cache_control="min-fresh=10"), NOW + 5, POLICY), Fresh)


def test_request_max_stale_accepts_stale_entry() -> None:
    record = (stored(("Cache-Control", "max-age=5")),)
    decision = decide(record, facts(cache_control="max-stale=10"), NOW + 12, POLICY)
    assert isinstance(decision, Fresh) and decision.stale


def test_max_stale_does_not_override_must_revalidate() -> None:
    record = (stored(("Cache-Control", "max-age=5, must-revalidate")),)
    decision = decide(record, facts(cache_control="max-stale"), NOW + 12, POLICY)
    assert isinstance(decision, Revalidate)


def test_only_if_cached_without_entry_is_unsatisfiable() -> None:
    assert decide(None, facts(cache_control="only-if-cached"), NOW, POLICY) == Unsatisfiable()


def test_only_if_cached_serves_stale_only_within_max_stale() -> None:
    record = (stored(("Cache-Control", "max-age=5")),)
    assert isinstance(decide(record, facts(cache_control="only-if-cached"), NOW + 1, POLICY), Fresh)
    assert decide(record, facts(cache_control="only-if-cached"), NOW + 9, POLICY) == Unsatisfiable()
    lenient = facts(cache_control="only-if-cached, max-stale=10")
    assert isinstance(decide(record, lenient, NOW + 9, POLICY), Fresh)


# §4.1 Vary and the credential scope


def language(value: str) -> tuple[tuple[str, str], ...]:
    return selecting_values(("accept-language",), CIMultiDict({"Accept-Language": value}))


def test_vary_selects_matching_variant() -> None:
    english = stored(("Vary", "Accept-Language"), selecting=language("en"))
    german = stored(("Vary", "Accept-Language"), selecting=language("de"))
    chosen = select_variant((german, english), facts(accept_language="en"))
    assert chosen is english


def test_vary_mismatch_is_a_vary_miss() -> None:
    english = stored(("Vary", "Accept-Language"), selecting=language("en"))
    assert decide((english,), facts(accept_language="fr"), NOW, POLICY) == Miss("vary-miss")


def test_selecting_values_never_hold_a_credential_in_clear() -> None:
    headers = CIMultiDict({"Authorization": "Bearer secret-token", "Accept": " a,  b "})
    selecting = selecting_values(("accept", "authorization", "x-absent"), headers)
    assert "secret-token" not in repr(selecting)
    assert selecting[0] == selecting_values(("accept",), CIMultiDict({"Accept": "a, b"}))[0]
    assert selecting[2] == ("x-absent", "")


def test_entry_of_another_scope_is_never_selected() -> None:
    record = (stored(("Cache-Control", "max-age=60"), scope="alice"),)
    assert decide(record, facts(scope="bob"), NOW, POLICY) == Miss("uri-miss")


def test_credential_scope_separates_tokens_and_hides_them() -> None:
    alice = credential_scope(["Bearer alice"], shared=False)
    bob = credential_scope(["Bearer bob"], shared=False)
    assert alice != bob
    assert "alice" not in alice
    assert credential_scope([None, None], shared=False) == "anonymous"
    assert credential_scope(["Bearer alice"], shared=True) == ""
    assert credential_scope(["Bearer alice"], shared=False, secret=b"k") != alice


# §3 storing responses


def test_public_response_with_authorization_is_storable() -> None:
    headers = (("Cache-Control", "public, max-age=5"),)
    assert storable(200, headers, facts(), has_authorization=True)


def test_response_to_authorized_request_without_public_is_not_storable() -> None:
    headers = (("Cache-Control", "max-age=5"),)
    assert not storable(200, headers, facts(), has_authorization=True)
    assert storable(200, headers, facts(), has_authorization=False)


def test_s_maxage_or_must_revalidate_allow_storing_authorized_responses() -> None:
    for value in ("s-maxage=5", "must-revalidate, max-age=5"):
        assert storable(200, (("Cache-Control", value),), facts(), has_authorization=True)


@pytest.mark.parametrize("value", ["no-store", "private", "public, no-store"])
def test_no_store_and_private_are_not_storable(value: str) -> None:
    assert not storable(200, (("Cache-Control", value),), facts(), has_authorization=False)


def test_request_no_store_forbids_storing() -> None:
    headers = (("Cache-Control", "public, max-age=5"),)
    assert not storable(200, headers, facts(cache_control="no-store"), has_authorization=False)


def test_must_understand_overrides_no_store_for_understood_status() -> None:
    headers = (("Cache-Control", "max-age=5, no-store, must-understand"),)
    assert storable(200, headers, facts(), has_authorization=False)
    assert not storable(299, headers, facts(), has_authorization=False)


def test_vary_star_is_not_storable() -> None:
    headers = (("Cache-Control", "public, max-age=5"), ("Vary", "*"))
    assert not storable(200, headers, facts(), has_authorization=False)


def test_partial_content_and_304_are_not_storable() -> None:
    headers = (("Cache-Control", "public, max-age=5"),)
    for status in (206, 304, 101):
        assert not storable(status, headers, facts(), has_authorization=False)


def test_status_not_heuristically_cacheable_needs_explicit_freshness() -> None:
    assert not storable(302, (), facts(), has_authorization=False)
    assert storable(302, (("Cache-Control", "max-age=5"),), facts(), has_authorization=False)


def test_qualified_private_fields_are_not_stored() -> None:
    from proxy.core.headers import parse_cache_control

    headers = (("Cache-Control", 'private="X-User", max-age=5'), ("X-User", "alice"), ("A", "1"))
    kept = stored_headers(headers, parse_cache_control(headers[0][1]))
    assert ("X-User", "alice") not in kept and ("A", "1") in kept


# §4.3 validation


def test_conditional_request_carries_stored_validators() -> None:
    entry = stored(("ETag", '"v1"'), ("Last-Modified", format_http_date(NOW - 10)))
    assert conditional_headers(entry) == {
        "If-None-Match": '"v1"',
        "If-Modified-Since": format_http_date(NOW - 10),
    }


def test_freshening_updates_headers_but_not_content_length() -> None:
    entry = stored(("ETag", '"v1"'), ("Content-Length", "4"), ("Cache-Control", "max-age=5"))
    update = (("Cache-Control", "max-age=50"), ("Content-Length", "0"), ("ETag", '"v1"'))
    fresh = freshen(entry, update, NOW + 100, NOW + 100)
    assert fresh.header("cache-control") == "max-age=50"
    assert fresh.header("content-length") == "4"
    assert fresh.body == b"body"
    assert decide((fresh,), facts(), NOW + 110, POLICY).__class__ is Fresh


def test_304_with_another_etag_does_not_select_the_entry() -> None:
    entry = stored(("ETag", '"v1"'))
    assert validator_matches(entry, (("ETag", '"v1"'),))
    assert not validator_matches(entry, (("ETag", '"v2"'),))


def test_if_none_match_weak_comparison_and_lists() -> None:
    entry = stored(("ETag", 'W/"v1"'))
    assert not_modified(entry, {"if-none-match": '"v0", "v1"'})
    assert not_modified(entry, {"if-none-match": "*"})
    assert not not_modified(entry, {"if-none-match": '"v2"'})


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    entry = stored(("ETag", '"v1"'), ("Last-Modified", format_http_date(NOW - 100)))
    headers = {"if-none-match": '"v2"', "if-modified-since": format_http_date(NOW)}
    assert not not_modified(entry, headers)


def test_if_modified_since_uses_date_without_last_modified() -> None:
    entry = stored()
    assert not_modified(entry, {"if-modified-since": format_http_date(NOW)})
    assert not not_modified(entry, {"if-modified-since": format_http_date(NOW - 1)})


# RFC 5861 and grace


def test_stale_while_revalidate_serves_in_background() -> None:
    record = (stored(("Cache-Control", "max-age=5, stale-while-revalidate=10")),)
    decision = decide(record, facts(), NOW + 12, POLICY)
    assert isinstance(decision, Revalidate) and decision.background
    assert not decide(record, facts(), NOW + 16, POLICY).background  # type: ignore[union-attr]


def test_stale_if_error_window_and_operator_grace() -> None:
    entry = stored(("Cache-Control", "max-age=5, stale-if-error=300"))
    assert stale_if_error_allows(entry, facts(), NOW + 200, POLICY)
    assert not stale_if_error_allows(entry, facts(), NOW + 400, POLICY)
    plain = stored(("Cache-Control", "max-age=5"))
    assert stale_if_error_allows(plain, facts(), NOW + 60, POLICY)
    assert not stale_if_error_allows(plain, facts(), NOW + 70, POLICY)


def test_must_revalidate_forbids_stale_on_error() -> None:
    entry = stored(("Cache-Control", "max-age=5, must-revalidate"))
    assert not stale_if_error_allows(entry, facts(), NOW + 6, POLICY)


def test_retention_keeps_validatable_entries_for_revalidation() -> None:
    with_etag = stored(("Cache-Control", "max-age=5"), ("ETag", '"v"'))
    without = stored(("Cache-Control", "max-age=5"))
    assert retention(with_etag, NOW, POLICY) == 5 + 600
    assert retention(without, NOW, POLICY) == 5 + 60


# §4.4 invalidation


def test_only_successful_unsafe_methods_invalidate() -> None:
    assert invalidates("POST", 201)
    assert invalidates("DELETE", 302)
    assert not invalidates("DELETE", 500)
    assert not invalidates("GET", 200)


def test_invalidation_includes_same_origin_location() -> None:
    headers = (
        ("Location", "http://api.example/v1/x?y=1"),
        ("Content-Location", "https://evil.example/v1/z"),
    )
    assert invalidation_targets("/v1/t", headers, frozenset({"api.example"})) == [
        "/v1/t",
        "/v1/x?y=1",
    ]


# RFC 9211


def test_cache_status_members() -> None:
    assert cache_status(hit=True, ttl=3.7) == "aitronos-cache-proxy; hit; ttl=3"
    assert cache_status(fwd="stale", fwd_status=304, stored=True) == (
        "aitronos-cache-proxy; fwd=stale; fwd-status=304; stored"
    )


def test_a_response_without_date_gets_one_when_stored() -> None:
    from proxy.core.policy import with_date

    assert with_date((("A", "1"),), NOW) == (("A", "1"), ("Date", format_http_date(NOW)))
    dated = (("Date", "x"),)
    assert with_date(dated, NOW) is dated


# -- content codings (RFC 9110 §12.5.3, §8.8.3; RFC 9111 §4.1, §4.3.4) ----------------------------


def test_every_spelling_of_one_accept_encoding_selects_the_same_variant() -> None:
    spellings = ["gzip", "gzip, deflate", "gzip,deflate", "GZIP, DEFLATE", "x-gzip;q=1"]
    values = {
        selecting_values(("accept-encoding",), CIMultiDict({"Accept-Encoding": s}))
        for s in spellings
    }
    assert values == {(("accept-encoding", "gzip"),)}
    absent = selecting_values(("accept-encoding",), CIMultiDict())
    empty = selecting_values(("accept-encoding",), CIMultiDict({"Accept-Encoding": ""}))
    assert absent == empty == (("accept-encoding", "identity"),)


def test_a_transformable_response_is_selected_whatever_the_accept_encoding() -> None:
    gzip_rep = Representation("gzip", b"..", 'W/"v1-gzip"', derived=True)
    entry = replace(
        stored(("Vary", "Accept-Encoding"), ("ETag", '"v1"')), selecting=(), derived=(gzip_rep,)
    )
    assert select_variant((entry,), facts(accept_encoding="br")) is entry
    assert select_variant((entry,), facts()) is entry


def test_a_coded_only_response_is_selected_by_the_normalised_accept_encoding() -> None:
    entry = stored(
        ("Vary", "Accept-Encoding"),
        ("Content-Encoding", "gzip"),
        selecting=(("accept-encoding", "gzip"),),
    )
    assert select_variant((entry,), facts(accept_encoding="GZIP, deflate")) is entry
    assert select_variant((entry,), facts(accept_encoding="")) is None


def test_a_304_to_our_conditional_request_refreshes_whatever_form_of_the_tag_it_echoes() -> None:
    """§4.3.4 as nginx and Varnish apply it: the 304 answers the validators sent for this one
    stored response, so the tags compare weakly (nginx's gzip weakens the 200's tag, not the
    304's); another opaque tag, or an ETag where none is stored, selects nothing."""
    strong = stored(("ETag", '"v1"'))
    weak = stored(("ETag", 'W/"v1"'))
    assert validator_matches(strong, (("ETag", '"v1"'),))
    assert validator_matches(weak, (("ETag", '"v1"'),))
    assert validator_matches(weak, (("ETag", 'W/"v1"'),))
    assert validator_matches(strong, (("ETag", 'W/"v1"'),))
    assert not validator_matches(weak, (("ETag", '"v2"'),))
    assert not validator_matches(strong, (("ETag", 'W/"v2"'),))
    assert not validator_matches(stored(), (("ETag", '"v1"'),))
    assert validator_matches(stored(), ())


def test_a_304_whose_last_modified_contradicts_the_stored_one_selects_nothing() -> None:
    """§4.3.4: a 304 for another Last-Modified describes another response: fetch the body."""
    last_modified = format_http_date(NOW - 3600)
    entry = stored(("ETag", 'W/"v1"'), ("Last-Modified", last_modified))
    assert validator_matches(entry, (("ETag", '"v1"'), ("Last-Modified", last_modified)))
    later = format_http_date(NOW - 60)
    assert not validator_matches(entry, (("ETag", '"v1"'), ("Last-Modified", later)))
    assert not validator_matches(entry, (("Last-Modified", later),))
    assert validator_matches(stored(("ETag", '"v1"')), (("Last-Modified", later),))


def test_freshening_keeps_the_stored_etag_whatever_form_the_304_echoes() -> None:
    entry = stored(("ETag", 'W/"v1"'), ("Cache-Control", "max-age=5"))
    freshened = freshen(entry, (("ETag", '"v1"'), ("Cache-Control", "max-age=9")), NOW, NOW)
    assert freshened.etag == 'W/"v1"' and freshened.header("cache-control") == "max-age=9"


def test_a_304_with_a_narrower_vary_keeps_the_stored_vary() -> None:
    entry = stored(("Vary", "Accept-Encoding, Origin"), ("ETag", '"v1"'))
    freshened = freshen(entry, (("Vary", "Origin"), ("ETag", '"v1"')), NOW + 5, NOW + 5)
    assert freshened.vary == ("accept-encoding", "origin")
    wider = freshen(entry, (("Vary", "Origin, Accept-Language"),), NOW + 5, NOW + 5)
    assert wider.vary == ("accept-encoding", "accept-language", "origin")


def test_freshening_keeps_the_derived_codings() -> None:
    gzip_rep = Representation("gzip", b"..", 'W/"v1-gzip"', derived=True)
    entry = replace(stored(("ETag", '"v1"')), derived=(gzip_rep,))
    freshened = freshen(entry, (("Cache-Control", "max-age=9"),), NOW + 5, NOW + 5)
    assert freshened.derived == (gzip_rep,)
    assert dict(freshened.represented[1])["Cache-Control"] == "max-age=9"


def test_if_none_match_matches_the_representation_the_client_holds() -> None:
    gzip_rep = Representation("gzip", b"..", 'W/"v1-gzip"', derived=True)
    entry = replace(stored(("ETag", '"v1"')), derived=(gzip_rep,))
    identity = entry.representations[0]
    gzip_client = {"if-none-match": 'W/"v1-gzip"', "accept-encoding": "gzip"}
    assert not_modified(entry, gzip_client, identity) is gzip_rep
    assert not_modified(entry, {"if-none-match": '"v1"'}, gzip_rep) is identity
    assert not_modified(entry, {"if-none-match": '"v2"'}, gzip_rep) is None
    assert not_modified(entry, {"if-none-match": "*"}, gzip_rep) is gzip_rep
    headers = dict(not_modified_headers(entry, gzip_rep))
    assert headers["ETag"] == 'W/"v1-gzip"' and "Accept-Encoding" in headers["Vary"]


def test_a_client_that_cannot_read_a_coding_never_holds_its_validator() -> None:
    """RFC 9110 §8.8.3, §13.1.2: an identity client sending the gzip representation's tag is
    compared with the identity representation it would be sent, and gets that one (200)."""
    gzip_rep = Representation("gzip", b"..", 'W/"v1-gzip"', derived=True)
    entry = replace(stored(("ETag", '"v1"')), derived=(gzip_rep,))
    assert not_modified(entry, {"if-none-match": 'W/"v1-gzip"'}) is None
    no_gzip = {"if-none-match": 'W/"v1-gzip"', "accept-encoding": "identity, gzip;q=0"}
    assert not_modified(entry, no_gzip) is None
    assert not_modified(entry, {"if-none-match": '"v1"'}) is entry.representations[0]


# --revalidate-window: a request's demand to revalidate, satisfied by a recent one (issue 19)

WINDOW = CachePolicy(keep_stale=600, revalidate_window=1.0, max_wait=30.0)


def forced(**headers: str) -> RequestFacts:
    multi = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    return request_facts(
        multi,
        scope="s",
        cache_control=multi.getall("cache-control", []),
        prefer=multi.getall("prefer", []),
    )


def test_max_age_0_is_satisfied_by_the_origins_answer_within_the_window() -> None:
    entry = stored(("Cache-Control", "max-age=60"), ("ETag", '"v1"'))
    request = forced(cache_control="max-age=0")
    assert decide((entry,), request, NOW + 0.5, WINDOW) == Fresh(
        entry, 0.5, 59.5, validated=True
    )
    assert isinstance(decide((entry,), request, NOW + 1.5, WINDOW), Revalidate)
    assert isinstance(decide((entry,), request, NOW + 0.5, POLICY), Revalidate)  # window 0


def test_no_cache_and_pragma_are_satisfied_within_the_window_but_not_an_origins_no_cache() -> None:
    entry = stored(("Cache-Control", "max-age=60"))
    for request in (forced(cache_control="no-cache"), forced(pragma="no-cache")):
        assert decide((entry,), request, NOW + 0.5, WINDOW) == Fresh(
            entry, 0.5, 59.5, validated=True
        )
    must = stored(("Cache-Control", "no-cache"), ("ETag", '"v1"'))
    assert decide((must,), forced(cache_control="no-cache"), NOW + 0.5, WINDOW) == Revalidate(
        must, 0.5, "stale"
    )


def test_a_recent_validation_does_not_satisfy_min_fresh_nor_make_a_stale_entry_fresh() -> None:
    entry = stored(("Cache-Control", "max-age=1"), ("ETag", '"v1"'))
    assert isinstance(
        decide((entry,), forced(cache_control="min-fresh=5"), NOW + 0.5, WINDOW), Revalidate
    )
    stale = stored(("Cache-Control", "max-age=0"), ("ETag", '"v1"'))
    decision = decide((stale,), forced(cache_control="no-cache"), NOW + 0.5, WINDOW)
    assert isinstance(decision, Revalidate)


def test_a_forced_long_poll_is_answered_from_the_watch_rather_than_its_own_revalidation() -> None:
    from proxy.core.policy import lookup

    entry = stored(("Cache-Control", "max-age=60"), ("ETag", '"v1"'))
    poll = forced(cache_control="max-age=0", if_none_match='"v1"', prefer="wait=25")
    decision = lookup((entry,), poll, NOW + 5, WINDOW)
    assert decision.long_poll is not None  # type: ignore[union-attr]
    assert 'detail="watched"' in decision.long_poll.cache_status  # type: ignore[union-attr]
    plain = forced(cache_control="max-age=0", if_none_match='"v1"')
    assert lookup((entry,), plain, NOW + 5, WINDOW).long_poll is None  # type: ignore[union-attr]
    assert lookup((entry,), poll, NOW + 5, POLICY).long_poll is None  # type: ignore[union-attr]
    expired = stored(("Cache-Control", "max-age=1"), ("ETag", '"v1"'))
    assert lookup((expired,), poll, NOW + 5, WINDOW).long_poll is None  # type: ignore[union-attr]
