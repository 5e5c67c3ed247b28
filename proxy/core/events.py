"""Server-sent events (HTML Living Standard §9.2, ``text/event-stream``) as pure framing rules.

A subscriber of ``GET /v1/audio/transcribe/{id}`` with ``Accept: text/event-stream`` receives
one event per change of the stored representation: ``id:`` its entity tag (RFC 9110 §8.8.3),
``event:`` the transcription's ``status``, ``data:`` the JSON body exactly as the origin sent it
(one ``data:`` line per line of it). No I/O here: the driver (``proxy.cache.events``) reads the
store and the waiters, these functions say what bytes to send.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.core.coding import IDENTITY, CodingError, decode
from proxy.core.headers import split_list
from proxy.core.models import StoredResponse

MEDIA_TYPE = "text/event-stream"
#: A comment line (§9.2.5: a line starting with a colon is ignored), sent to keep the
#: connection and the intermediaries between alive while nothing changes.
HEARTBEAT = b": hb\n\n"
#: Statuses after which a transcription never changes (the API's ``completed`` / ``failed``).
TERMINAL = frozenset({"completed", "failed"})
#: Event names kept to a safe token; anything else is dispatched as the default ``message``.
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: §9.2.6: CR, LF and CRLF all end a line of the stream; a field value never holds one.
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: The most a coded body is decoded to for its ``data:`` lines.
DECODE_LIMIT = 16 * 1024 * 1024


def wants_event_stream(accept: Iterable[str]) -> bool:
    """Whether ``Accept`` (RFC 9110 §12.5.1) names ``text/event-stream`` with a weight above 0.

    Only the media type itself counts: ``*/*`` or ``text/*`` is any client's default and keeps
    the plain JSON answer.
    """
    for member in split_list(list(accept)):
        media, *params = (part.strip() for part in member.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 1.0
        if weight > 0:
            return True
    return False


def last_event_id(values: Iterable[str]) -> str | None:
    """The ``Last-Event-ID`` a reconnecting ``EventSource`` sends (§9.2.4), or None."""
    for value in values:
        value = value.strip()
        return value or None
    return None


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a stored response: its ``id``, ``event`` name and ``data`` bytes."""

    id: str
    name: str
    data: bytes
    terminal: bool


def event_id(entry: StoredResponse) -> str:
    """The event's ``id``: the origin's entity tag, or a digest of the body when it sent none
    (the ``id`` field may not hold a line end or NUL, so such a tag is replaced as well)."""
    tag = entry.etag
    if tag is not None and not any(c in tag for c in "\r\n\x00"):
        return tag
    return '"sha256-' + hashlib.sha256(entry.body).hexdigest()[:32] + '"'


def identity_body(entry: StoredResponse) -> bytes:
    """The body without content coding: the identity representation when stored, else decoded
    (an undecodable body is sent as it is; a client sees what the origin sent)."""
    for rep in entry.representations:
        if rep.coding == IDENTITY:
            return rep.body
    try:
        return decode(entry.representations[0].coding, entry.body, DECODE_LIMIT)
    except CodingError:
        return entry.body


def status_of(body: bytes) -> str | None:
    """The transcription's ``status``: ``data.status`` of the API's envelope, or a top-level
    ``status``; None when the body is no JSON object or names none."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    data = document.get("data")
    status = data.get("status") if isinstance(data, dict) else None
    if status is None:
        status = document.get("status")
    return status if isinstance(status, str) else None


def event_of(entry: StoredResponse) -> Event:
    """The event a stored response is sent as."""
    body = identity_body(entry)
    status = status_of(body)
    name = status if status is not None and _EVENT_NAME.fullmatch(status) else "message"
    return Event(event_id(entry), name, body, status in TERMINAL)


def frame(event: Event) -> bytes:
    """The event's lines (§9.2.5): ``id``, ``event``, one ``data`` per body line, a blank line.

    A body ending in a line end gets a last empty ``data:`` line, so the client's data (its
    lines joined by LF, the last LF removed) is the body as the origin sent it.
    """
    lines = [b"id: " + event.id.encode("utf-8", "surrogateescape")]
    lines.append(b"event: " + event.name.encode())
    lines.extend(b"data: " + line for line in _LINE_END.split(event.data))
    return b"\n".join(lines) + b"\n\n"


def retry_field(milliseconds: int) -> bytes:
    """§9.2.6 ``retry``: how long a client waits before it reconnects."""
    return b"retry: %d\n\n" % max(0, milliseconds)


__all__ = [
    "HEARTBEAT",
    "MEDIA_TYPE",
    "TERMINAL",
    "Event",
    "event_id",
    "event_of",
    "frame",
    "identity_body",
    "last_event_id",
    "retry_field",
    "status_of",
    "wants_event_stream",
]
