"""The pure server-sent-event rules (``proxy.core.events``): which requests ask for a stream and
what bytes an event is, one rule each (HTML Living Standard §9.2)."""

from __future__ import annotations

import gzip
import re

from proxy.core.coding import Representation
from proxy.core.events import (
    HEARTBEAT,
    event_id,
    event_of,
    frame,
    identity_body,
    last_event_id,
    retry_field,
    status_of,
    wants_event_stream,
)
from proxy.core.models import StoredResponse

BODY = b'{"success": true, "data": {"status": "processing"}}'


def stored(body: bytes = BODY, **fields: str) -> StoredResponse:
    headers = tuple((name.replace("_", "-"), value) for name, value in fields.items())
    return StoredResponse(200, "OK", headers, body, 0.0, 0.0)


def test_accept_naming_the_event_stream_media_type_asks_for_a_stream() -> None:
    assert wants_event_stream(["text/event-stream"])
    assert wants_event_stream(["application/json, TEXT/Event-Stream;q=0.5"])
    assert wants_event_stream(["text/html", "text/event-stream"])


def test_wildcards_and_a_zero_weight_keep_the_json() -> None:
    assert not wants_event_stream(["*/*"])
    assert not wants_event_stream(["text/*"])
    assert not wants_event_stream(["text/event-stream;q=0"])
    assert not wants_event_stream(["text/event-stream; q=0.000"])
    assert not wants_event_stream([])


def test_last_event_id_is_the_trimmed_value_or_none() -> None:
    assert last_event_id(['  "abc"  ']) == '"abc"'
    assert last_event_id([""]) is None
    assert last_event_id([]) is None


def test_the_event_id_is_the_etag_as_sent() -> None:
    assert event_id(stored(etag='"v1"')) == '"v1"'
    assert event_id(stored(etag='W/"v1"')) == 'W/"v1"'


def test_without_an_etag_the_id_is_a_digest_of_the_body_that_changes_with_it() -> None:
    one, two = event_id(stored()), event_id(stored(b'{"v":2}'))
    assert one != two and re.fullmatch(r'"sha256-[0-9a-f]{32}"', one)
    assert event_id(stored()) == one


def test_the_event_name_is_the_status_of_the_envelope_or_the_top_level() -> None:
    assert status_of(BODY) == "processing"
    assert status_of(b'{"status": "completed"}') == "completed"
    assert status_of(b"[1, 2]") is None
    assert status_of(b"not json") is None
    assert status_of(b'{"data": {"status": 3}}') is None


def test_completed_and_failed_are_terminal() -> None:
    assert event_of(stored(b'{"data": {"status": "completed"}}')).terminal
    assert event_of(stored(b'{"data": {"status": "failed"}}')).terminal
    assert not event_of(stored(b'{"data": {"status": "queued"}}')).terminal


def test_an_unsafe_status_is_sent_as_the_default_message_event() -> None:
    event = event_of(stored(b'{"status": "bad\\nname: x"}'))
    assert event.name == "message"


def test_a_frame_is_id_event_and_one_data_line_per_body_line() -> None:
    event = event_of(stored(b'{"status": "queued",\r\n "a": 1}\n', etag='"t"'))
    assert frame(event) == (
        b'id: "t"\nevent: queued\ndata: {"status": "queued",\ndata:  "a": 1}\ndata: \n\n'
    )


def test_a_coded_body_is_sent_decoded() -> None:
    coded = StoredResponse(
        200, "OK", (("Content-Encoding", "gzip"),), gzip.compress(BODY), 0.0, 0.0
    )
    assert identity_body(coded) == BODY
    derived = Representation("identity", BODY, None, derived=True)
    with_identity = StoredResponse(
        200, "OK", (("Content-Encoding", "gzip"),), b"x", 0.0, 0.0, derived=(derived,)
    )
    assert identity_body(with_identity) == BODY


def test_heartbeats_and_retry_are_blocks_without_data() -> None:
    assert HEARTBEAT == b": hb\n\n"
    assert retry_field(5000) == b"retry: 5000\n\n"
