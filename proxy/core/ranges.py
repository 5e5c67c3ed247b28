"""Byte ranges of a stored response (RFC 9110 §14, §13.1.5, §15.3.7, §15.5.17) as pure rules.

The cache answers ``Range`` requests from the stored response itself: the request's ``Range`` and
``If-Range`` are never sent upstream on a cacheable fetch (the fetch fills the cache with the
whole body), and ``range_decision`` says, for the representation chosen for the client, whether
the answer is the whole 200 (``Whole``), a 206 of some byte ranges (``Partial``) or a 416
(``NotSatisfiable``). ``multipart`` writes a ``multipart/byteranges`` body (§14.6).

Bounds (§14.2 lets a server ignore or coalesce what looks like abuse): ranges that overlap or
lie within ``COALESCE_GAP`` bytes of each other are coalesced and sent in ascending order; a
``Range`` of more than ``MAX_RANGES`` range-specs is ignored as nginx's ``max_ranges`` does (the
whole 200). Several ranges of a representation with a content coding are also ignored: the
parts would be pieces of a compressed stream in a body that is not itself compressed, which no
``Content-Encoding`` on the multipart response could describe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.core.headers import parse_entity_tag, parse_http_date, strong_match

#: More range-specs than this in one ``Range`` and it is ignored (nginx's ``max_ranges``).
MAX_RANGES = 16
#: Ranges closer than this are sent as one part: a part's own head costs about as much.
COALESCE_GAP = 80
#: A position of more digits than this cannot be within any stored body: unsatisfiable.
_MAX_DIGITS = 18
_PAST_ANY_BODY = 1_000_000_000_000_000_000  # 10**_MAX_DIGITS
_RANGE_UNIT = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)=(.*)", re.DOTALL)
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The bytes ``first`` to ``last`` inclusive, both within the representation (§14.1.1)."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def content_range(self, length: int) -> str:
        """The ``Content-Range`` of this part (§14.4)."""
        return f"bytes {self.first}-{self.last}/{length}"


@dataclass(frozen=True, slots=True)
class Whole:
    """Send the whole representation (200): no usable ``Range``, and ``reason`` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Partial:
    """206 (§15.3.7): one part with ``Content-Range``, or several as ``multipart/byteranges``."""

    ranges: tuple[ByteRange, ...]
    length: int


@dataclass(frozen=True, slots=True)
class NotSatisfiable:
    """416 (§15.5.17) with ``Content-Range: bytes */length``."""

    length: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"


RangeDecision = Whole | Partial | NotSatisfiable

#: A parsed range-spec: ``(first, last)`` with ``last`` None for ``first-``, or ``(None, n)``
#: for the suffix ``-n``.
RangeSpec = tuple[int | None, int | None]


def parse_range(value: str) -> tuple[RangeSpec, ...] | None:
    """§14.2 ``ranges-specifier`` in the ``bytes`` unit; ``None`` when it is not one (an other
    unit, a bad spec, a ``last-pos`` before its ``first-pos``, no spec at all)."""
    match = _RANGE_UNIT.fullmatch(value.strip(" \t"))
    if match is None or match.group(1).lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    for member in match.group(2).split(","):
        member = member.strip(" \t")
        if not member:
            continue  # §5.6.1: empty list elements do not count
        if (int_range := _INT_RANGE.fullmatch(member)) is not None:
            first_text, last_text = int_range.groups()
            first = _position(first_text)
            last = _position(last_text) if last_text else None
            if last is not None and last < first:
                return None
            specs.append((first, last))
        elif (suffix := _SUFFIX_RANGE.fullmatch(member)) is not None:
            specs.append((None, _position(suffix.group(1))))
        else:
            return None
    return tuple(specs) if specs else None


def _position(digits: str) -> int:
    """A position; one too long to be in any body is clamped (it stays past the end)."""
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        return _PAST_ANY_BODY
    return int(digits)


def satisfiable(specs: Sequence[RangeSpec], length: int) -> tuple[ByteRange, ...]:
    """§14.1.2: the specs that select bytes of a representation of ``length`` bytes, clamped to
    it; a ``first-pos`` at or past the end and a zero suffix select nothing."""
    ranges = []
    for first, last in specs:
        if first is None:
            suffix = last or 0
            if suffix == 0:
                continue
            ranges.append(ByteRange(max(0, length - suffix), length - 1))
        elif first < length:
            end = length - 1 if last is None else min(last, length - 1)
            ranges.append(ByteRange(first, end))
    return tuple(ranges)


def coalesce(ranges: Sequence[ByteRange], gap: int = COALESCE_GAP) -> tuple[ByteRange, ...]:
    """§15.3.7.2: ranges that overlap or are fewer than ``gap`` bytes apart become one part;
    the parts come in ascending order, so their sum never exceeds the representation."""
    merged: list[ByteRange] = []
    for item in sorted(ranges, key=lambda r: r.first):
        if merged and item.first <= merged[-1].last + 1 + gap:
            last = merged[-1]
            merged[-1] = ByteRange(last.first, max(last.last, item.last))
        else:
            merged.append(item)
    return tuple(merged)


def strong_last_modified(last_modified: float | None, date: float | None) -> bool:
    """§8.8.2.2: a cache entry's ``Last-Modified`` is strong when its ``Date`` is at least one
    second later (no second change could have been hidden in the same second)."""
    return last_modified is not None and date is not None and date - last_modified >= 1


def if_range_holds(
    value: str,
    *,
    etag: str | None,
    last_modified: float | None,
    date: float | None,
    derived: bool,
) -> bool:
    """§13.1.5: whether ``If-Range`` lets the ranges be sent for the selected representation.

    An entity-tag must match its ``ETag`` by strong comparison, so a weak tag never does (the
    derived codings' tags are weak, as their bytes are this cache's compressor's). An HTTP-date
    must equal its ``Last-Modified`` exactly and be a strong validator, which it is not for a
    coding this cache derived. Anything else is false: the whole representation is sent.
    """
    value = value.strip(" \t")
    if value.startswith('"') or value.startswith("W/"):
        tag = parse_entity_tag(value)
        return tag is not None and etag is not None and strong_match(tag, etag)
    when = parse_http_date(value)
    if when is None or derived or last_modified is None:
        return False
    return when == last_modified and strong_last_modified(last_modified, date)


def range_decision(
    *,
    method: str,
    status: int,
    ranges: Sequence[str],
    if_range: str | None,
    length: int,
    etag: str | None,
    last_modified: float | None,
    date: float | None,
    coded: bool,
    derived: bool,
) -> RangeDecision:
    """The answer to a request's ``Range`` (its field lines ``ranges``) for one representation.

    Only a GET of a 200 has ranges (§14.2: HEAD and other methods ignore them); ``If-Range`` is
    evaluated first (§13.2.2 step 5); an empty representation is sent whole (no ``Content-Range``
    can name a part of nothing); ``coded``: the representation has a content coding, and is
    then sent as one range or whole, never as several parts.
    """
    if not ranges:
        return Whole("no-range")
    if method != "GET" or status != 200:
        return Whole("method" if method != "GET" else "status")
    if len(ranges) != 1:
        return Whole("invalid")  # Range is a singleton field
    specs = parse_range(ranges[0])
    if specs is None:
        return Whole("invalid")
    if len(specs) > MAX_RANGES:
        return Whole("too-many")
    if if_range is not None and not if_range_holds(
        if_range, etag=etag, last_modified=last_modified, date=date, derived=derived
    ):
        return Whole("if-range")
    if length == 0:
        return Whole("empty")
    selected = satisfiable(specs, length)
    if not selected:
        return NotSatisfiable(length)
    parts = coalesce(selected)
    if len(parts) > 1 and coded:
        return Whole("coding")
    return Partial(parts, length)


def multipart(body: bytes, decision: Partial, content_type: str | None, boundary: str) -> bytes:
    """§14.6 ``multipart/byteranges``: each part with its ``Content-Type`` and ``Content-Range``
    (RFC 2046 §5.1.1 delimiters); ``boundary`` must not occur in ``body`` (a random token)."""
    delimiter = b"--" + boundary.encode("ascii")
    kind = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n" if content_type else b""
    chunks: list[bytes] = []
    for part in decision.ranges:
        chunks += (
            delimiter,
            b"\r\n",
            kind,
            b"Content-Range: ",
            part.content_range(decision.length).encode("ascii"),
            b"\r\n\r\n",
            body[part.first : part.last + 1],
            b"\r\n",
        )
    chunks += (delimiter, b"--\r\n")
    return b"".join(chunks)


def multipart_type(boundary: str) -> str:
    """The ``Content-Type`` of a multipart 206 (§14.6)."""
    return f"multipart/byteranges; boundary={boundary}"
