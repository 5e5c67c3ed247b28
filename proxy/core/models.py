"""Frozen value types shared by the policy, the stores and the handler."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field

from proxy.core.headers import (
    HOP_BY_HOP,
    CacheControl,
    parse_cache_control,
    parse_delta_seconds,
    parse_entity_tag,
    parse_http_date,
    parse_vary,
)

Headers = tuple[tuple[str, str], ...]

#: Fields not copied from a stored response onto a response built from it: recomputed per
#: response (``Age``, ``Cache-Status``, ``Content-Length``) or connection-specific.
NOT_SERVED = frozenset({"age", "content-length", "cache-status"}) | HOP_BY_HOP


def header_values(headers: Headers, name: str) -> list[str]:
    """All values of a field in a stored header tuple (``name`` lower-case)."""
    return [value for key, value in headers if key.lower() == name]


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of a field in a stored header tuple (``name`` lower-case)."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _shared_fields(headers: Headers) -> Headers:
    """The fields as plain interned strings: one copy of each name and repeated value.

    Stored responses of one API repeat the same names and most values (``Content-Type``,
    ``Cache-Control``, ``Server``, ``Via``); interning keeps one string for all of them, and
    plain ``str`` names (not the client's ``istr``) are written out without conversion.
    """
    return tuple((sys.intern(str(name)), sys.intern(str(value))) for name, value in headers)


@functools.lru_cache(maxsize=1024)
def _parsed_cache_control(values: tuple[str, ...]) -> CacheControl:
    """One shared (frozen) ``CacheControl`` per distinct field value, as most entries repeat it."""
    return parse_cache_control(values)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response (RFC 9111 §3) and the request facts needed to reuse it.

    ``scope`` is the credential scope the response belongs to and ``selecting`` the values of the
    request fields its ``Vary`` names (§4.1), so a variant is only reused for matching requests.
    The derived fields are computed once here, never on the hot path of a hit.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes
    request_time: float
    response_time: float
    scope: str = ""
    selecting: tuple[tuple[str, str], ...] = ()
    targeted: bool = field(default=False)

    cache_control: CacheControl = field(init=False, compare=False, repr=False)
    date: float | None = field(init=False, compare=False, repr=False)
    etag: str | None = field(init=False, compare=False, repr=False)
    last_modified: float | None = field(init=False, compare=False, repr=False)
    vary: tuple[str, ...] = field(init=False, compare=False, repr=False)
    corrected_initial_age: float = field(init=False, compare=False, repr=False)
    size: int = field(init=False, compare=False, repr=False)
    served: Headers = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        headers = _shared_fields(self.headers)
        cdn = header_values(headers, "cdn-cache-control") if self.targeted else []
        cache_control = _parsed_cache_control(tuple(cdn or header_values(headers, "cache-control")))
        date = parse_http_date(header_value(headers, "date"))
        age = parse_delta_seconds(header_value(headers, "age")) or 0
        # §4.2.3 apparent_age, with the receipt time at the one-second resolution of the Date it
        # is compared with: a response dated in the second it arrives is not up to 1 s old.
        apparent_age = max(0.0, math.floor(self.response_time) - date) if date is not None else 0.0
        corrected_age_value = age + (self.response_time - self.request_time)
        setter = object.__setattr__
        setter(self, "headers", headers)
        setter(self, "cache_control", cache_control)
        setter(self, "date", date)
        setter(self, "etag", parse_entity_tag(header_value(headers, "etag")))
        setter(self, "last_modified", parse_http_date(header_value(headers, "last-modified")))
        setter(self, "vary", parse_vary(header_values(headers, "vary")))
        setter(self, "corrected_initial_age", max(apparent_age, corrected_age_value))
        setter(self, "served", tuple(item for item in headers if item[0].lower() not in NOT_SERVED))
        setter(
            self,
            "size",
            len(self.body) + sum(len(k) + len(v) for k, v in headers) + 256,
        )

    @property
    def has_validator(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


#: All stored variants of one URI, most recent first (RFC 9111 §4.1).
Record = tuple[StoredResponse, ...]


def record_size(record: Record) -> int:
    return sum(entry.size for entry in record)


@dataclass(frozen=True, slots=True)
class Fresh:
    """The stored response may be served as it is (§4.2)."""

    entry: StoredResponse
    age: float
    ttl: float
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Revalidate:
    """A stored response exists but must be validated upstream before (or while) it is used.

    ``fwd`` is the RFC 9211 reason: ``stale`` for an expired entry, ``request`` when the request's
    directives forbade using a fresh one. ``background`` means RFC 5861 stale-while-revalidate
    lets the stale entry be served at once while the validation runs.
    """

    entry: StoredResponse
    age: float
    fwd: str
    background: bool = False


@dataclass(frozen=True, slots=True)
class Miss:
    """Nothing stored can satisfy the request: ``fwd`` is ``uri-miss`` or ``vary-miss``."""

    fwd: str


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """``only-if-cached`` and nothing usable is stored: answer 504 (§5.2.1.7)."""


Decision = Fresh | Revalidate | Miss | Unsatisfiable


# -- whole decisions the cache layer carries out ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer from ``entry`` (RFC 9111 §4.2), with ``Age`` and this ``Cache-Status`` member.

    ``result`` is the metrics label; ``saved`` says the body did not come from the origin now;
    ``refresh`` asks for an RFC 5861 background revalidation after answering.
    """

    entry: StoredResponse
    age: float
    cache_status: str
    result: str
    saved: bool = True
    refresh: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask the origin (shared by concurrent callers): ``stale`` is the entry it would validate
    (§4.3.1), ``fwd`` the RFC 9211 reason, ``vary`` the selecting fields the flight is keyed on."""

    stale: StoredResponse | None
    fwd: str
    vary: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the request through uncached, relaying the origin's answer as it streams."""

    cache_status: str
    result: str


@dataclass(frozen=True, slots=True)
class Relay:
    """Send the fetched answer as it is (not served from the store)."""

    cache_status: str
    result: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer locally with the API's error envelope without asking the origin."""

    status: int
    code: str
    message: str
    cache_status: str
    result: str


#: What to do with a GET or HEAD once the store was read.
Lookup = Serve | Fetch | Refuse
#: What to do once the shared fetch answered.
Settlement = Serve | Fetch | Forward | Relay


@dataclass(frozen=True, slots=True)
class Answer:
    """What a shared fetch brought back, as far as the policy needs to know it.

    ``entry`` is the stored (or freshened) response when there is one; ``streamed`` an answer
    too large or not storable, relayed to one caller; ``led`` whether this caller ran the fetch;
    ``collapsed`` whether the answer came from another caller's (or replica's) fetch.
    """

    status: int
    entry: StoredResponse | None
    stored: bool
    revalidated: bool
    streamed: bool
    led: bool
    collapsed: bool
