"""The versioned record format: what it writes reads back exactly; anything else is refused."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.codec import MAGIC, VERSION, CodecError, decode_record, encode_record
from proxy.core.coding import Representation
from proxy.core.models import StoredResponse

JSON_ENTRY = StoredResponse(
    status=200,
    reason="OK",
    headers=(
        ("Content-Type", "application/json"),
        ("Cache-Control", "max-age=60"),
        ("ETag", '"v1"'),
        ("X-Odd", "caf\u00e9 \udcff"),  # aiohttp keeps undecodable header bytes as surrogates
    ),
    body=b'{"status": "completed"}',
    request_time=1_800_000_000.25,
    response_time=1_800_000_000.5,
    scope="3f1c9a",
    selecting=(("accept-language", "de"),),
    targeted=True,
)
BINARY_ENTRY = StoredResponse(
    status=203,
    reason="",
    headers=(("Vary", "Accept-Language"),),
    body=bytes(range(256)) * 4,
    request_time=1.0,
    response_time=2.0,
)


def frame(meta: object, body: bytes = b"", version: int = VERSION, magic: bytes = MAGIC) -> bytes:
    text = json.dumps(meta).encode()
    return struct.pack(">3sBI", magic, version, len(text)) + text + body


def meta_of(entry: StoredResponse) -> dict[str, object]:
    data = encode_record((entry,))
    (length,) = struct.unpack_from(">I", data, 4)
    variants = json.loads(data[8 : 8 + length])["variants"]
    return dict(variants[0])


def test_a_record_reads_back_exactly_with_every_variant_in_order() -> None:
    record = (JSON_ENTRY, BINARY_ENTRY)
    decoded = decode_record(encode_record(record))
    assert decoded == record
    assert [entry.body for entry in decoded] == [JSON_ENTRY.body, BINARY_ENTRY.body]
    assert decoded[0].etag == '"v1"' and decoded[0].targeted


def test_the_format_starts_with_magic_and_version_and_keeps_bodies_raw() -> None:
    data = encode_record((BINARY_ENTRY,))
    assert data[:3] == MAGIC and data[3] == VERSION
    assert data.endswith(BINARY_ENTRY.body)


header_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.builds(
            StoredResponse,
            status=st.integers(100, 999),
            reason=header_text,
            headers=st.lists(st.tuples(header_text, header_text), max_size=4).map(tuple),
            body=st.binary(max_size=64),
            request_time=st.floats(0, 4e9),
            response_time=st.floats(0, 4e9),
            scope=header_text,
            selecting=st.lists(st.tuples(header_text, header_text), max_size=2).map(tuple),
            targeted=st.booleans(),
            derived=st.lists(
                st.builds(
                    Representation,
                    coding=header_text,
                    body=st.binary(max_size=16),
                    etag=st.none() | header_text,
                    derived=st.just(True),
                ),
                max_size=2,
            ).map(tuple),
        ),
        min_size=1,
        max_size=3,
    ).map(tuple)
)
def test_any_record_round_trips(record: tuple[StoredResponse, ...]) -> None:
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"acp", id="shorter-than-a-header"),
        pytest.param(b"\x80\x04\x95 pickled", id="a-pickle"),
        pytest.param(frame({"variants": []}, magic=b"xyz"), id="other-magic"),
        pytest.param(encode_record((JSON_ENTRY,))[:-1], id="truncated-body"),
        pytest.param(encode_record((JSON_ENTRY,)) + b"x", id="trailing-bytes"),
        pytest.param(encode_record((JSON_ENTRY,))[:20], id="truncated-metadata"),
        pytest.param(frame({"variants": []}), id="no-variants"),
        pytest.param(frame(["not", "an", "object"]), id="metadata-not-an-object"),
        pytest.param(struct.pack(">3sBI", MAGIC, VERSION, 3) + b"{x}", id="not-json"),
        pytest.param(struct.pack(">3sBI", MAGIC, VERSION, 2) + b"\xff\xfe", id="not-utf8"),
    ],
)
def test_bytes_that_are_not_a_record_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_record(data)


def test_another_format_version_is_refused_not_guessed() -> None:
    meta = {"variants": [meta_of(JSON_ENTRY)]}
    with pytest.raises(CodecError, match=f"version {VERSION + 1}"):
        decode_record(frame(meta, JSON_ENTRY.body, version=VERSION + 1))


def test_a_version_1_record_without_derived_codings_is_refused() -> None:
    """Version 2 added derived representations; an older replica's record is a miss, not a guess."""
    meta = meta_of(JSON_ENTRY)
    del meta["derived"]
    with pytest.raises(CodecError, match="version 1"):
        decode_record(frame({"variants": [meta]}, JSON_ENTRY.body, version=1))


CODED_ENTRY = StoredResponse(
    status=200,
    reason="OK",
    headers=(("Content-Type", "application/json"), ("ETag", '"v2"'), ("Vary", "Accept-Encoding")),
    body=b'{"text": "' + b"word " * 400 + b'"}',
    request_time=1.0,
    response_time=2.0,
    derived=(
        Representation("gzip", b"\x1f\x8bgzipped", 'W/"v2-gzip"', True),
        Representation("br", b"brotli", None, True),
    ),
)


def test_derived_representations_read_back_so_no_replica_recompresses() -> None:
    decoded = decode_record(encode_record((CODED_ENTRY, JSON_ENTRY)))
    assert decoded == (CODED_ENTRY, JSON_ENTRY)
    assert [rep.coding for rep in decoded[0].representations] == ["identity", "gzip", "br"]
    assert decoded[0].representations[1].body == b"\x1f\x8bgzipped"
    assert decoded[0].represented == CODED_ENTRY.represented


@pytest.mark.parametrize(
    "derived",
    [
        pytest.param("gzip", id="not-a-list"),
        pytest.param([["gzip", None]], id="too-short"),
        pytest.param([["gzip", None, -1]], id="negative-length"),
        pytest.param([["gzip", None, 10**9]], id="past-the-end"),
        pytest.param([["gzip", 7, 1]], id="etag-not-a-string"),
        pytest.param([[1, None, 1]], id="coding-not-a-string"),
        pytest.param([["gzip", None, True]], id="length-a-bool"),
    ],
)
def test_a_bad_derived_representation_is_refused(derived: object) -> None:
    meta = meta_of(JSON_ENTRY)
    meta["derived"] = derived
    with pytest.raises(CodecError):
        decode_record(frame({"variants": [meta]}, JSON_ENTRY.body + b"x"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "200"),
        ("status", True),
        ("status", 42),
        ("reason", None),
        ("headers", [["Content-Type"]]),
        ("headers", {"Content-Type": "text/plain"}),
        ("headers", [["X", 1]]),
        ("request_time", "yesterday"),
        ("response_time", None),
        ("targeted", 1),
        ("scope", 7),
        ("selecting", "accept"),
        ("body", -1),
        ("body", 10**9),
    ],
)
def test_a_field_of_the_wrong_type_is_refused(field: str, value: object) -> None:
    meta = meta_of(JSON_ENTRY)
    meta[field] = value
    with pytest.raises(CodecError):
        decode_record(frame({"variants": [meta]}, JSON_ENTRY.body))


def test_a_non_finite_time_is_refused() -> None:
    meta = meta_of(JSON_ENTRY)
    text = json.dumps({"variants": [meta]}).replace(json.dumps(JSON_ENTRY.response_time), "NaN", 1)
    data = struct.pack(">3sBI", MAGIC, VERSION, len(text)) + text.encode() + JSON_ENTRY.body
    with pytest.raises(CodecError):
        decode_record(data)
