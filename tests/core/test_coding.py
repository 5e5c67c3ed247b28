"""Content-coding rules (RFC 9110 §8.4, §12.5.3, §8.8.3, §7.7), one test each, no I/O."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.coding import (
    CodingError,
    CodingPolicy,
    Representation,
    accepts,
    available_codings,
    choose,
    coded_etag,
    compressible_type,
    content_coding,
    decode,
    encode,
    negotiate,
    normalise_accept_encoding,
    readable,
    representations,
)
from proxy.core.models import StoredResponse

JSON = b'{"text": "' + b"the meeting agreed on the release plan " * 60 + b'"}'
ALL = (*available_codings(), "identity")


def test_brotli_and_zstandard_are_installed_with_the_dev_extra() -> None:
    assert available_codings() == ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("spelling", "coding"),
    [
        ("", "identity"),
        ("gzip", "gzip"),
        ("gzip, deflate", "gzip"),
        ("gzip,deflate", "gzip"),
        ("GZIP, DEFLATE", "gzip"),
        ("deflate, gzip, br, zstd", "zstd"),  # curl --compressed
        ("gzip, deflate, br, zstd", "zstd"),  # Chromium
        ("x-gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("gzip;q=0.2, br;q=0.9", "br"),
        ("*", "zstd"),
        ("gzip;q=0, *", "zstd"),
        ("zstd;q=0, br;q=0, *;q=0.1", "gzip"),
        ("identity", "identity"),
        ("identity, gzip;q=0.5", "identity"),
        ("deflate", "identity"),
        ("identity;q=0, gzip", "gzip"),
        ("identity;q=0", "none"),
        ("*;q=0", "none"),
        ("gzip;q=2, br;q=nope", "identity"),
        ("gzip ; q=0.000, br; Q=1", "br"),
    ],
)
def test_every_spelling_normalises_to_the_coding_the_cache_serves(
    spelling: str, coding: str
) -> None:
    assert normalise_accept_encoding([spelling]) == coding


def test_a_missing_accept_encoding_is_identity() -> None:
    assert normalise_accept_encoding([]) == "identity"


def test_field_lines_are_combined_before_negotiating() -> None:
    assert normalise_accept_encoding(["deflate", "br"]) == "br"


def test_negotiation_offers_only_what_is_stored() -> None:
    assert negotiate("gzip, br", ("gzip", "identity")) == "gzip"
    assert negotiate("zstd", ("gzip", "identity")) == "identity"
    assert negotiate("zstd, identity;q=0", ("gzip", "identity")) is None


@pytest.mark.parametrize("coding", available_codings())
def test_each_coding_round_trips(coding: str) -> None:
    encoded = encode(coding, JSON)
    assert len(encoded) < len(JSON) / 3
    assert decode(coding, encoded, len(JSON)) == JSON


@pytest.mark.parametrize("coding", available_codings())
def test_decoding_stops_at_the_limit_so_a_bomb_cannot_exhaust_memory(coding: str) -> None:
    bomb = encode(coding, b"\0" * 10_000_000)
    with pytest.raises(CodingError):
        decode(coding, bomb, 1_000_000)


@pytest.mark.parametrize("coding", available_codings())
def test_a_body_not_in_its_declared_coding_is_refused(coding: str) -> None:
    with pytest.raises(CodingError):
        decode(coding, b"plain text, not compressed at all", 1000)


def test_a_derived_validator_is_weak_suffixed_and_distinct_even_under_weak_comparison() -> None:
    assert coded_etag('"abc"', "gzip") == 'W/"abc-gzip"'
    assert coded_etag('W/"abc"', "br") == 'W/"abc-br"'
    assert coded_etag(None, "gzip") is None
    assert coded_etag("garbage", "gzip") is None


def test_compressible_types_follow_the_gzip_types_patterns() -> None:
    patterns = ("text/*", "application/json")
    assert compressible_type("application/json; charset=utf-8", patterns)
    assert compressible_type("TEXT/VTT", patterns)
    assert not compressible_type("image/png", patterns)
    assert not compressible_type(None, patterns)
    assert compressible_type("image/png", ("*",))


def test_content_coding_names_one_known_coding_or_none() -> None:
    assert content_coding([]) == "identity"
    assert content_coding(["identity"]) == "identity"
    assert content_coding(["X-GZIP"]) == "gzip"
    assert content_coding(["gzip, br"]) is None
    assert content_coding(["compress"]) is None


def reps(body: bytes = JSON, **overrides: object) -> tuple[Representation, ...]:
    arguments: dict[str, object] = {
        "body": body,
        "etag": '"v1"',
        "content_type": "application/json",
        "content_encoding": [],
        "no_transform": False,
        "policy": CodingPolicy(),
    }
    arguments.update(overrides)
    return representations(**arguments)  # type: ignore[arg-type]


def test_an_identity_json_body_is_compressed_once_in_every_coding() -> None:
    result = reps()
    assert [r.coding for r in result] == ["identity", "zstd", "br", "gzip"]
    assert result[0] == Representation("identity", JSON, '"v1"', derived=False)
    assert result[0].body is JSON
    for rep in result[1:]:
        assert rep.derived and rep.etag == f'W/"v1-{rep.coding}"'
        assert decode(rep.coding, rep.body, len(JSON)) == JSON


def test_no_transform_keeps_only_what_the_origin_sent() -> None:
    """RFC 9110 §7.7: an intermediary must not change the coding of a no-transform response."""
    assert [r.coding for r in reps(no_transform=True)] == ["identity"]
    coded = gzip.compress(JSON)
    result = reps(coded, content_encoding=["gzip"], no_transform=True)
    assert [(r.coding, r.body) for r in result] == [("gzip", coded)]


def test_small_bodies_and_other_types_are_not_compressed() -> None:
    assert len(reps(b'{"a": 1}')) == 1
    assert len(reps(JSON, content_type="image/png")) == 1
    assert len(reps(JSON, policy=CodingPolicy(min_bytes=len(JSON) + 1))) == 1
    assert len(reps(JSON, policy=CodingPolicy(compress_types=()))) == 1


def test_a_coded_body_is_decoded_for_clients_that_accept_none() -> None:
    coded = gzip.compress(JSON)
    result = reps(coded, content_encoding=["gzip"], etag='W/"v1"')
    assert [r.coding for r in result] == ["gzip", "identity", "zstd", "br"]
    assert result[1] == Representation("identity", JSON, 'W/"v1-identity"', derived=True)


def test_a_coded_body_that_does_not_decode_is_kept_as_it_is() -> None:
    assert [r.coding for r in reps(b"not gzip", content_encoding=["gzip"])] == ["gzip"]
    too_big = gzip.compress(JSON)
    result = reps(too_big, content_encoding=["gzip"], policy=CodingPolicy(max_bytes=100))
    assert [r.coding for r in result] == ["gzip"]


def test_an_unknown_coding_is_never_transformed() -> None:
    assert [r.coding for r in reps(b"x" * 2000, content_encoding=["compress"])] == ["unknown"]


def test_choose_serves_the_best_accepted_coding_and_identity_when_none_is() -> None:
    codings = tuple(rep.coding for rep in reps())
    assert codings == ("identity", "zstd", "br", "gzip")

    def chosen(accept: str | None) -> str | None:
        index = choose(codings, accept)
        return None if index is None else codings[index]

    assert chosen("gzip, deflate") == "gzip"
    assert chosen("gzip, deflate, br, zstd") == "zstd"
    assert chosen("") == "identity"
    assert chosen(None) == "identity"
    assert chosen("identity;q=0") == "identity"
    assert chosen("deflate, identity;q=0") == "identity"
    assert chosen("br;q=0.1, gzip;q=0.2") == "gzip"


def test_choose_finds_nothing_for_a_coded_only_body_the_client_cannot_read() -> None:
    assert choose(("gzip",), "") is None
    assert choose(("gzip",), "br") is None
    assert choose(("gzip",), "gzip") == 0
    assert choose(("deflate",), "gzip, deflate") == 0


def stored(derived: tuple[Representation, ...], *headers: tuple[str, str]) -> StoredResponse:
    return StoredResponse(
        status=200,
        reason="OK",
        headers=(("Content-Type", "application/json"), ("ETag", '"v1"'), *headers),
        body=JSON,
        request_time=0.0,
        response_time=0.0,
        derived=derived,
    )


def test_each_representation_is_served_with_its_coding_validator_and_vary() -> None:
    entry = stored(reps()[1:], ("Vary", "Origin"))
    by_coding = {
        rep.coding: dict(h) for rep, h in zip(entry.representations, entry.represented, strict=True)
    }
    assert by_coding["identity"]["ETag"] == '"v1"'
    assert "Content-Encoding" not in by_coding["identity"]
    assert by_coding["gzip"]["Content-Encoding"] == "gzip"
    assert by_coding["gzip"]["ETag"] == 'W/"v1-gzip"'
    for fields in by_coding.values():
        assert fields["Vary"] == "Origin, Accept-Encoding"


def test_a_response_with_one_coding_is_served_unchanged() -> None:
    entry = stored(())
    assert entry.represented == (entry.served,)


def test_derived_bodies_count_in_the_memory_budget() -> None:
    derived = reps()[1:]
    assert stored(derived).size - stored(()).size >= sum(len(r.body) for r in derived)


def test_accept_encoding_does_not_select_among_stored_responses_the_cache_can_transform() -> None:
    assert stored(reps()[1:], ("Vary", "Accept-Encoding, Origin")).selection_vary == ("origin",)
    coded_only = StoredResponse(
        status=200,
        reason="OK",
        headers=(("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")),
        body=gzip.compress(JSON),
        request_time=0.0,
        response_time=0.0,
    )
    assert coded_only.selection_vary == ("accept-encoding",)


def test_long_accept_encoding_values_are_negotiated_but_never_cached() -> None:
    """A hostile client sending long, distinct fields cannot fill memory with cache keys."""
    from proxy.core import coding

    before = coding._cached_choose.cache_info().currsize
    for i in range(50):
        value = f"x-{i}, " * 100 + "gzip"
        assert choose(("identity", "gzip"), value) == 1
    assert coding._cached_choose.cache_info().currsize == before


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_accept_encoding_normalises_to_a_known_coding_without_raising(value: str) -> None:
    assert normalise_accept_encoding([value]) in {*available_codings(), "identity", "none"}
    index = choose(("identity", "gzip"), value)
    assert index in (0, 1)


def test_accepts_names_the_coding_a_client_can_read() -> None:
    assert accepts([], "")
    assert accepts(["identity"], "gzip")
    assert accepts(["gzip"], "GZIP, deflate")
    assert accepts(["x-gzip"], "gzip")
    assert accepts(["deflate"], "gzip, deflate")
    assert not accepts(["gzip"], "")
    assert not accepts(["br"], "gzip, deflate")
    assert not accepts(["gzip, br"], "gzip, br")


def test_an_unstored_answer_is_decoded_only_for_a_client_that_cannot_read_it() -> None:
    coded = gzip.compress(JSON)
    headers = (("Content-Encoding", "gzip"), ("ETag", '"e"'), ("Content-Type", "text/plain"))
    assert readable(headers, coded, "gzip", 10**7) == (headers, coded)
    assert readable(headers, coded, "", 10**7) == ((("Content-Type", "text/plain"),), JSON)
    assert readable(headers, coded, "", 10) == (headers, coded)  # past the limit: as it is
    kept = (*headers, ("Cache-Control", "no-transform"))
    assert readable(kept, coded, "", 10**7) == (kept, coded)


def test_the_budget_counts_what_derived_codings_really_allocate() -> None:
    """tracemalloc over 2,000 stored responses with and without their codings: what the codings
    add to the accounted size (checked against --cache-max-bytes) covers what they allocate."""
    import gc
    import tracemalloc

    bodies = [JSON.replace(b"release", f"rel{i:04d}".encode()) for i in range(2000)]
    derived = [reps(body, etag=f'"v{i}"')[1:] for i, body in enumerate(bodies)]

    def build(with_codings: bool) -> tuple[int, int]:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            entries = [
                StoredResponse(
                    status=200,
                    reason="OK",
                    headers=(("Content-Type", "application/json"), ("ETag", f'"v{i}"')),
                    body=body,
                    request_time=0.0,
                    response_time=0.0,
                    derived=coded if with_codings else (),
                )
                for i, (body, coded) in enumerate(zip(bodies, derived, strict=True))
            ]
            allocated = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return allocated, sum(entry.size for entry in entries)

    plain_allocated, plain_size = build(False)
    coded_allocated, coded_size = build(True)
    codings_bytes = sum(len(rep.body) for coded in derived for rep in coded)
    # The derived bodies existed before: only their entries' own objects were allocated here.
    assert coded_allocated - plain_allocated <= coded_size - plain_size - codings_bytes
