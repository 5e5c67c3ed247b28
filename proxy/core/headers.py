"""Parsing and formatting of the HTTP fields a cache reads (RFC 9110, RFC 9111).

Every parser here is total: it takes whatever bytes a peer sent and returns a value or ``None``;
it never raises. Invalid input is mapped to the interpretation the RFCs prescribe (for example an
invalid ``max-age`` is treated as 0, RFC 9111 §4.2.1).

HTTP-dates are parsed by hand against the three grammars of RFC 9110 §5.6.7: ``email.utils``
accepts any RFC 5322 date (other zones, missing commas, one-digit hours), which HTTP forbids.
``CDN-Cache-Control`` is an RFC 9651 Structured Field, parsed with the ``http-sf`` package
(mnot's reference implementation of RFC 9651, kept current and tested against the official
test suite) rather than by hand.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

import http_sf

#: RFC 9111 §1.2.2: a delta-seconds too large to represent is treated as 2**31.
DELTA_SECONDS_MAX = 2**31

#: RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones nginx and Varnish also drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Forwarding fields the proxy owns: whatever a client sends under these names is dropped, so a
#: caller cannot steer what the origin generates (links, redirects, routing) for others; the
#: proxy sets its own X-Forwarded-For / -Proto (and -Host where configured) and ``Via``.
PROXY_OWNED_FORWARDING_FIELDS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-proto",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "x-forwarded-uri",
        "x-host",
        "x-original-host",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method",
        "x-http-method-override",
        "x-method-override",
        "x-real-ip",
        "x-scheme",
        "front-end-https",
    }
)


def proxy_owned_or_invalid_name(name: str) -> bool:
    """A client field never forwarded: one the proxy owns, or a name with an underscore.

    Underscores: nginx drops such fields by default (``underscores_in_headers off``), because
    CGI-style origins map ``Transfer_Encoding`` and ``Transfer-Encoding`` to the same variable.
    """
    lowered = name.lower()
    return lowered in PROXY_OWNED_FORWARDING_FIELDS or "_" in lowered


_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ENTITY_TAG_RE = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_DIGITS_RE = re.compile(r"^[0-9]+$")


def split_list(values: Iterable[str] | str | None) -> list[str]:
    """Split comma-separated list fields (RFC 9110 §5.6.1), respecting quoted strings."""
    if values is None:
        return []
    if isinstance(values, str):
        values = (values,)
    return [
        item
        for value in values
        for part in _split_outside_quotes(value, ",")
        if (item := part.strip())
    ]


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-cased field names a ``Connection`` header lists as hop-by-hop (RFC 9110 §7.6.1)."""
    return frozenset(token.lower() for token in split_list(values) if _TOKEN_RE.match(token))


def parse_delta_seconds(value: str | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds: ``None`` when invalid, clamped to 2**31."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _DIGITS_RE.match(value):
        return None
    return min(int(value), DELTA_SECONDS_MAX)


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The directives of a ``Cache-Control`` (or ``CDN-Cache-Control``) field, RFC 9111 §5.2.

    Delta-seconds directives are ``None`` when absent; when present with an invalid value they
    are 0, which makes a response stale (§4.2.1) and a request stricter. For duplicated
    directives the first occurrence wins (§4.2.1).
    """

    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    no_cache: bool = False
    no_cache_fields: tuple[str, ...] = ()
    no_store: bool = False
    private: bool = False
    private_fields: tuple[str, ...] = ()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    no_transform: bool = False
    only_if_cached: bool = False
    immutable: bool = False
    present: bool = False


#: The directives of a message without ``Cache-Control``: most requests, parsed once.
NO_DIRECTIVES = CacheControl()

_DELTA_DIRECTIVES = {
    "max-age": "max_age",
    "s-maxage": "s_maxage",
    "min-fresh": "min_fresh",
    "stale-while-revalidate": "stale_while_revalidate",
    "stale-if-error": "stale_if_error",
}
_FLAG_DIRECTIVES = {
    "no-store": "no_store",
    "public": "public",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "must-understand": "must_understand",
    "no-transform": "no_transform",
    "only-if-cached": "only_if_cached",
    "immutable": "immutable",
}


def _field_names(argument: str) -> tuple[str, ...]:
    return tuple(
        name.strip().lower()
        for name in argument.strip().strip('"').split(",")
        if _TOKEN_RE.match(name.strip())
    )


def parse_cache_control(values: Iterable[str] | str | None) -> CacheControl:
    """Parse one or more ``Cache-Control`` field values; unknown directives are ignored (§5.2.3)."""
    if not values:
        return NO_DIRECTIVES
    found: dict[str, object] = {}
    items = split_list(values)
    for item in items:
        name, sep, argument = item.partition("=")
        name = name.strip().lower()
        arg: str | None = argument.strip() if sep else None
        if name in _DELTA_DIRECTIVES:
            attr = _DELTA_DIRECTIVES[name]
            if attr not in found:
                found[attr] = parse_delta_seconds(arg) if arg is not None else 0
                if found[attr] is None:
                    found[attr] = 0
        elif name == "max-stale":
            if "max_stale" not in found:
                delta = parse_delta_seconds(arg) if arg is not None else DELTA_SECONDS_MAX
                found["max_stale"] = 0 if delta is None else delta
        elif name in _FLAG_DIRECTIVES:
            found[_FLAG_DIRECTIVES[name]] = True
        elif name in ("no-cache", "private"):
            attr = name.replace("-", "_")
            fields = _field_names(arg) if arg else ()
            if fields:
                existing = found.get(f"{attr}_fields", ())
                assert isinstance(existing, tuple)
                found[f"{attr}_fields"] = existing + fields
            else:
                found[attr] = True
    return CacheControl(present=bool(items), **found)  # type: ignore[arg-type]


#: RFC 9213 §2.1 with RFC 9111 §5.2.2: the Structured Field type each known directive must have.
_CDN_INTEGER = frozenset(_DELTA_DIRECTIVES) | {"max-stale"}
_CDN_FIELD_LIST = frozenset({"no-cache", "private"})


def parse_cdn_cache_control(values: Iterable[str] | str | None) -> CacheControl | None:
    """``CDN-Cache-Control`` (RFC 9213) as an RFC 9651 Dictionary; ``None`` means ignore it.

    RFC 9213 §2.1: a field that does not parse as a Dictionary, or a known directive with a value
    of the wrong type (``max-age="10"``, a negative or fractional age), makes the whole field
    ignored, so the cache falls back to ``Cache-Control``. Unknown directives are ignored (§2.1).
    """
    if values is None:
        return None
    lines = [values] if isinstance(values, str) else list(values)
    if not lines:
        return None
    try:
        parsed = http_sf.parse(", ".join(lines).encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        return None
    if not isinstance(parsed, dict):
        return None
    found: dict[str, object] = {}
    for name, member in parsed.items():
        value = member[0] if isinstance(member, tuple) else member
        if name in _CDN_INTEGER:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return None
            found[name.replace("-", "_")] = min(value, DELTA_SECONDS_MAX)
        elif name in _CDN_FIELD_LIST:
            attr = name.replace("-", "_")
            if value is True:
                found[attr] = True
            elif isinstance(value, str) and not isinstance(value, http_sf.Token):
                found[f"{attr}_fields"] = _field_names(value)
            else:
                return None
        elif name in _FLAG_DIRECTIVES:
            if value is not True:
                return None
            found[_FLAG_DIRECTIVES[name]] = True
    return CacheControl(present=bool(parsed), **found)  # type: ignore[arg-type]


# Day and month names in any case (``SUN``, ``nov``), as browsers and Python's email.utils read
# them; everything else in the grammar (the comma, the spaces, ``GMT``, the digits) stays exact.
_DAY = r"(?i:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_L = r"(?i:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(?P<month>(?i:" + "|".join(_MONTHS) + "))"
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_IMF_FIXDATE = re.compile(
    rf"{_DAY}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT", re.ASCII
)
_RFC850_DATE = re.compile(
    rf"{_DAY_L}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT", re.ASCII
)
_ASCTIME_DATE = re.compile(
    rf"{_DAY} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})", re.ASCII
)
_SECONDS_PER_YEAR = 365.2425 * 86400


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """An HTTP-date as epoch seconds: exactly IMF-fixdate, RFC 850 or asctime (RFC 9110 §5.6.7).

    Day and month names are read in any case (``sun, 06 NOV 1994``): a sender must use the
    grammar's spelling, but an ``Expires`` an origin wrote in capitals still names its date
    rather than "already expired" (RFC 9111 §5.3), as browsers read it. Anything else (zones
    other than ``GMT``, a missing comma, extra spaces, a one-digit hour, a two-digit year
    outside the RFC 850 form, an impossible day) is invalid: ``None``. An RFC 850
    two-digit year more than 50 years after ``now`` means the most recent such year in the past
    (§5.6.7); without ``now`` the years 70-99 are 19xx and 00-69 are 20xx.
    """
    if not value:
        return None
    value = value.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(value) or _ASCTIME_DATE.fullmatch(value)
    if match is not None:
        year = int(match["year"])
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is None:
            return None
        year = _rfc850_year(int(match["year"]), now)
    month = _MONTHS.index(match["month"].title()) + 1
    day, hour = int(match["day"]), int(match["hour"])
    minute, second = int(match["minute"]), int(match["second"])
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _rfc850_year(two_digits: int, now: float | None) -> int:
    if now is None:
        return (1900 if two_digits >= 70 else 2000) + two_digits
    current = 1970 + int(now // _SECONDS_PER_YEAR)
    year = current - current % 100 + two_digits
    if year > current + 50:
        year -= 100
    elif year <= current - 50:
        year += 100
    return year


def parse_age(values: Iterable[str] | str | None) -> int | None:
    """RFC 9111 §5.1 ``Age``: a list-valued field uses its first member; invalid means absent."""
    members = split_list(values)
    if not members:
        return None
    first = members[0]
    return parse_delta_seconds(first) if _DIGITS_RE.match(first) else None


def format_http_date(timestamp: float) -> str:
    """Format epoch seconds as an IMF-fixdate."""
    return formatdate(timestamp, usegmt=True)


def parse_entity_tag(value: str | None) -> str | None:
    """Validate a single entity-tag (RFC 9110 §8.8.3); returns it normalised, or ``None``."""
    if value is None:
        return None
    value = value.strip()
    match = _ENTITY_TAG_RE.fullmatch(value)
    return value if match else None


def parse_entity_tag_list(value: str | None) -> tuple[str, ...] | None:
    """``If-None-Match`` / ``If-Match``: ``("*",)`` for any, the valid tags, or ``None``."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped == "*":
        return ("*",)
    tags = tuple(match.group(0) for match in _ENTITY_TAG_RE.finditer(stripped))
    return tags or None


def opaque_tag(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: opaque tags equal, weakness ignored."""
    return opaque_tag(a) == opaque_tag(b)


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: neither weak and opaque tags equal."""
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def parse_vary(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """The lower-cased field names of ``Vary`` (RFC 9110 §12.5.5); ``("*",)`` if it has ``*``."""
    names: list[str] = []
    for item in split_list(values):
        if item == "*":
            return ("*",)
        lowered = item.lower()
        if _TOKEN_RE.match(lowered) and lowered not in names:
            names.append(lowered)
    return tuple(sorted(names))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) as seconds from ``now``; ``None`` when invalid."""
    if value is None:
        return None
    delta = parse_delta_seconds(value)
    if delta is not None:
        return float(delta)
    date = parse_http_date(value, now)
    if date is None:
        return None
    return max(0.0, date - now)


def normalize_field_value(values: Iterable[str]) -> str:
    """Combine field lines and fold whitespace, for comparing selecting headers (§4.1)."""
    return ", ".join(" ".join(value.split()) for value in values)


#: Request fields defined as comma-separated lists (RFC 9110 §5.6.1), whose members compare
#: equal whatever whitespace surrounds the commas and however the lines are split.
LIST_FIELDS = frozenset(
    {
        "accept", "accept-charset", "accept-encoding", "accept-language", "cache-control",
        "connection", "expect", "if-match", "if-none-match", "prefer", "te", "upgrade", "via",
    }
)  # fmt: skip
#: Of those, the ones whose members are case-insensitive tokens (media ranges, charsets,
#: codings, language ranges) with parameters whose names are too; parameter values keep their
#: case (§5.6.6) except ``q``, a number.
CASELESS_LIST_FIELDS = frozenset(
    {"accept", "accept-charset", "accept-encoding", "accept-language", "te"}
)


def normalise_selecting(name: str, values: Iterable[str]) -> str:
    """A request field as ``Vary`` compares it (RFC 9111 §4.1: normalised as its grammar allows).

    A list field becomes its members joined by ``,`` (``gzip, br`` == ``gzip,br`` ==
    ``gzip`` + ``br`` on two lines); in a case-insensitive one (``Accept-Language: EN-us``) each
    member's token and parameter names are lower-cased, whitespace around ``;`` and ``=``
    dropped. Any other field is only combined and whitespace-folded: its grammar is unknown.
    """
    values = list(values)
    if name not in LIST_FIELDS:
        return normalize_field_value(values)
    members = split_list(values)
    if name in CASELESS_LIST_FIELDS:
        members = [_caseless_member(member) for member in members]
    else:
        members = [" ".join(member.split()) for member in members]
    return ",".join(members)


def _caseless_member(member: str) -> str:
    """``Text/HTML ; Level = 1; Q=0.5`` -> ``text/html;level=1;q=0.5``."""
    token, *params = _split_outside_quotes(member, ";")
    parts = [token.strip().lower()]
    for param in params:
        key, eq, value = param.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "q":
            value = value.lower()
        if key:
            parts.append(f"{key}{eq}{value}")
    return ";".join(parts)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == separator and not in_quotes:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def valid_field(name: str, value: str) -> bool:
    """RFC 9110 §5.5: no control characters but HTAB; such a field cannot be sent on."""
    return _FORBIDDEN_IN_FIELD.search(name) is None and _FORBIDDEN_IN_FIELD.search(value) is None
