"""Bytes on the wire: status lines, header sections and the per-second ``Date`` field.

Hand-written because it is the whole cost of an answer: a response head is a few joins of bytes
kept ready in advance, which no HTTP library exposes without building its own response object.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from proxy.cache.exchange import Fields

#: Statuses whose responses never carry a body (RFC 9110 §6.4.1).
BODYLESS = frozenset({204, 304})
CRLF = b"\r\n"


def reason_of(status: int, reason: str = "") -> str:
    if reason:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_line(status: int, reason: str = "") -> bytes:
    return f"HTTP/1.1 {status} {reason_of(status, reason)}\r\n".encode("latin-1", "replace")


def field_lines(headers: Fields) -> bytes:
    """``name: value CRLF`` for each field, bytes as the origin sent them (surrogateescape)."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(
        "utf-8", "surrogateescape"
    )


def has_field(headers: Fields, name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


class DateField:
    """``Date: <IMF-fixdate> CRLF`` for the current second, formatted once per second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = b"Date: " + formatdate(second, usegmt=True).encode() + CRLF
        return self._line


date_field = DateField()


def connection_field(keep_alive: bool, http10: bool) -> bytes:
    """``Connection`` as the framing needs it: close, or keep-alive for an HTTP/1.0 client."""
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""
