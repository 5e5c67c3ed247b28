"""Frozen value types shared by the policy, the stores and the handler."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field

from proxy.core.coding import IDENTITY, Representation
from proxy.core.headers import (
    HOP_BY_HOP,
    CacheControl,
    parse_age,
    parse_cache_control,
    parse_cdn_cache_control,
    parse_entity_tag,
    parse_http_date,
    parse_vary,
)

Headers = tuple[tuple[str, str], ...]

#: Fields not copied from a stored response onto a response built from it: recomputed per
#: response (``Age``, ``Cache-Status``, ``Content-Length``) or connection-specific.
NOT_SERVED = frozenset({"age", "content-length", "cache-status"}) | HOP_BY_HOP
#: RFC 9110 §14.3: this cache serves byte ranges of every stored 200 (``proxy.core.ranges``),
#: whatever the origin said, since it holds the whole body.
ACCEPT_RANGES = ("Accept-Ranges", "bytes")
#: ``Content-Range`` means nothing on a 200 (RFC 9110 §14.4) and would contradict a 206's own.
NOT_SERVED_WITH_RANGES = NOT_SERVED | {"accept-ranges", "content-range"}


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


@functools.lru_cache(maxsize=256)
def _parsed_cdn_cache_control(values: tuple[str, ...]) -> CacheControl | None:
    return parse_cdn_cache_control(values)


def response_cache_control(headers: Headers, *, targeted: bool) -> CacheControl:
    """The directives a response gives this cache: ``CDN-Cache-Control`` (RFC 9213) when it is
    present and valid, else ``Cache-Control``."""
    if targeted:
        cdn = tuple(header_values(headers, "cdn-cache-control"))
        if cdn:
            parsed = _parsed_cdn_cache_control(cdn)
            if parsed is not None:
                return parsed
    return _parsed_cache_control(tuple(header_values(headers, "cache-control")))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response (RFC 9111 §3) and the request facts needed to reuse it.

    ``scope`` is the credential scope the response belongs to and ``selecting`` the values of the
    request fields its ``Vary`` names (§4.1), so a variant is only reused for matching requests.
    The derived fields are computed once here, never on the hot path of a hit.

    ``derived`` holds the representations in other content codings computed from the body
    (``proxy.core.coding``); ``representations`` puts the origin's own first, ``represented``
    holds each one's served fields (its ``Content-Encoding``, ``ETag`` and ``Vary``).
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
    derived: tuple[Representation, ...] = ()

    representations: tuple[Representation, ...] = field(init=False, compare=False, repr=False)
    codings: tuple[str, ...] = field(init=False, compare=False, repr=False)
    represented: tuple[Headers, ...] = field(init=False, compare=False, repr=False)
    selection_vary: tuple[str, ...] = field(init=False, compare=False, repr=False)

    cache_control: CacheControl = field(init=False, compare=False, repr=False)
    date: float | None = field(init=False, compare=False, repr=False)
    etag: str | None = field(init=False, compare=False, repr=False)
    last_modified: float | None = field(init=False, compare=False, repr=False)
    vary: tuple[str, ...] = field(init=False, compare=False, repr=False)
    corrected_initial_age: float = field(init=False, compare=False, repr=False)
    size: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        headers = _shared_fields(self.headers)
        cache_control = response_cache_control(headers, targeted=self.targeted)
        date = parse_http_date(header_value(headers, "date"), self.response_time)
        age = parse_age(header_values(headers, "age")) or 0
        # §4.2.3 apparent_age, with the receipt time at the one-second resolution of the Date it
        # is compared with: a response dated in the second it arrives is not up to 1 s old.
        apparent_age = max(0.0, math.floor(self.response_time) - date) if date is not None else 0.0
        corrected_age_value = age + (self.response_time - self.request_time)
        setter = object.__setattr__
        setter(self, "headers", headers)
        setter(self, "cache_control", cache_control)
        setter(self, "date", date)
        setter(self, "etag", parse_entity_tag(header_value(headers, "etag")))
        last_modified = parse_http_date(header_value(headers, "last-modified"), self.response_time)
        setter(self, "last_modified", last_modified)
        setter(self, "vary", parse_vary(header_values(headers, "vary")))
        setter(self, "corrected_initial_age", max(apparent_age, corrected_age_value))
        served = _served_fields(headers, self.status)
        original = Representation(
            _coding_token(header_values(headers, "content-encoding")),
            self.body,
            self.etag,
            derived=False,
        )
        reps = (original, *self.derived)
        setter(self, "representations", reps)
        setter(self, "codings", tuple(rep.coding for rep in reps))
        setter(self, "represented", tuple(_represented(served, rep, reps) for rep in reps))
        vary = self.vary
        if "accept-encoding" in vary and any(rep.coding == IDENTITY for rep in reps):
            # Every client can be served from this one stored response (§12.5.3): the request's
            # Accept-Encoding picks a representation, not a stored response.
            vary = tuple(name for name in vary if name != "accept-encoding")
        setter(self, "selection_vary", vary)
        fields = sum(len(k) + len(v) + FIELD_OVERHEAD for k, v in headers)
        selecting = sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in self.selecting)
        derived = sum(
            len(rep.body) + len(rep.etag or "") + REPRESENTATION_OVERHEAD + 8 * len(served)
            for rep in self.derived
        )
        # The scope carries the caller's Host when --public-host is unset: count it, so a
        # flood of long Host values is paid for out of the budget.
        size = len(self.body) + fields + selecting + derived + len(self.scope) + ENTRY_OVERHEAD
        setter(self, "size", size)

    @property
    def served(self) -> Headers:
        """The stored fields a response built from this one carries (not kept: a hit on the
        front is written from its prepared head, and 100k entries would pay ~14 MB for it)."""
        return _served_fields(self.headers, self.status)

    @property
    def has_validator(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


def _served_fields(headers: Headers, status: int) -> Headers:
    """The stored fields a response built from a stored one carries, with ``Accept-Ranges:
    bytes`` on a 200 (the ranges this cache serves of it)."""
    if status != 200:
        return tuple(item for item in headers if item[0].lower() not in NOT_SERVED)
    kept = (item for item in headers if item[0].lower() not in NOT_SERVED_WITH_RANGES)
    return (*kept, ACCEPT_RANGES)


def _coding_token(values: list[str]) -> str:
    """The body's coding as one lower-case token (``identity`` when it has none)."""
    joined = ", ".join(value.strip().lower() for value in values if value.strip())
    return {"": IDENTITY, "x-gzip": "gzip"}.get(joined, joined)


def _represented(served: Headers, rep: Representation, reps: tuple[Representation, ...]) -> Headers:
    """The served fields of one representation: its coding, its validator, and ``Vary``.

    ``Vary: Accept-Encoding`` whenever the stored response has several codings (RFC 9110
    §12.5.5), so no cache downstream hands one client's coding to another.
    """
    if len(reps) == 1:
        return served
    drop = {"content-encoding", "etag", "vary"}
    fields = [item for item in served if item[0].lower() not in drop]
    if rep.coding != IDENTITY:
        fields.append(_shared_pair("Content-Encoding", rep.coding))
    if rep.etag is not None:
        fields.append(("ETag", rep.etag))
    vary = parse_vary(header_values(served, "vary"))
    names = [value for key, value in served if key.lower() == "vary"]
    if "accept-encoding" not in vary:
        names.append("Accept-Encoding")
    fields.append(_shared_pair("Vary", ", ".join(names)))
    return tuple(fields)


@functools.lru_cache(maxsize=512)
def _shared_pair(name: str, value: str) -> tuple[str, str]:
    """One field tuple for all stored responses that repeat it (a few codings, a few Varys)."""
    return (name, sys.intern(value))


#: Python's own memory per stored response beyond its bytes (the object, its derived fields, the
#: served-headers tuple) and per field line (two tuples, a string object): measured with
#: tracemalloc on CPython 3.11 (tests/cache/test_memory_budget.py), so the budget bounds real
#: memory.
ENTRY_OVERHEAD = 1024
FIELD_OVERHEAD = 160
#: Per derived coding beyond its bytes (its object, its served-fields tuple, its ETag pair,
#: allocator slack), plus 8 bytes per served field: measured with 10,000 stored responses.
REPRESENTATION_OVERHEAD = 640

#: All stored variants of one URI, most recent first (RFC 9111 §4.1).
Record = tuple[StoredResponse, ...]


def record_size(record: Record) -> int:
    return sum(entry.size for entry in record)


@dataclass(frozen=True, slots=True)
class Fresh:
    """The stored response may be served as it is (§4.2).

    ``validated``: the request's ``max-age=0`` / ``no-cache`` is satisfied by the origin's answer
    for this very stored response within ``--revalidate-window`` (``recently_validated``).
    """

    entry: StoredResponse
    age: float
    ttl: float
    stale: bool = False
    validated: bool = False


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
    (§4.3.1), ``fwd`` the RFC 9211 reason, ``vary`` the selecting fields the flight is keyed on.

    ``long_poll``: a long poll (RFC 7240 ``Prefer: wait``) that only its own directives send
    upstream is answered from its flight's watch instead, where the driver can: held on this
    ``Serve`` when its ``If-None-Match`` matches, served it at once when its flight is already
    watched; otherwise it revalidates as any other request.
    """

    stale: StoredResponse | None
    fwd: str
    vary: tuple[str, ...] = ()
    long_poll: Serve | None = None


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
    ``collapsed`` whether the answer came from another caller's (or replica's) fetch;
    ``shareable`` whether every caller of the fetch may receive it (``policy.shareable``).
    """

    status: int
    entry: StoredResponse | None
    stored: bool
    revalidated: bool
    streamed: bool
    led: bool
    collapsed: bool
    shareable: bool = True


# -- decisions on an upstream answer (after hishel's ``_core/_spec.py`` state objects) ------------


@dataclass(frozen=True, slots=True)
class UpstreamHead:
    """An origin's answer to a fetch as the policy sees it: its head, before the body is read.

    ``headers`` are the end-to-end fields as received, with this cache's ``Via``; the times are
    those of §4.2.3 (request sent, response received), read by the driver.
    """

    status: int
    reason: str
    headers: Headers
    content_length: int | None
    request_time: float
    response_time: float


@dataclass(frozen=True, slots=True)
class Refetch:
    """A 304 that cannot be used: it selects no stored response (§4.3.4), or it carries
    ``Set-Cookie``, which would put one caller's cookie into the shared entry (§3.5). Ask the
    origin again, without validators."""


@dataclass(frozen=True, slots=True)
class Freshen:
    """A 304 validated the stored response: store ``entry``, the stored response updated with
    the 304's fields (§4.3.4), and serve it (hishel's ``NeedToBeUpdated``)."""

    entry: StoredResponse


@dataclass(frozen=True, slots=True)
class StoreAndUse:
    """Storable (§3): read the body, at most ``limit`` bytes, store it and serve it (as hishel's
    state of that name). A body past the limit is streamed to the caller instead (not stored).

    ``shareable``: every caller of the flight may receive it (``policy.shareable``);
    ``hold_back``: a 429/503 every caller may receive, so its ``Retry-After`` holds the flight.
    """

    limit: int
    shareable: bool
    hold_back: bool


@dataclass(frozen=True, slots=True)
class KeepStale:
    """An error that could be stored, but the stale entry stands in for it (RFC 5861
    stale-if-error, §4.2.4): storing it would replace the entry and serve the error to everyone
    after this caller. Read it whole (at most ``limit``) for this flight, and do not store it."""

    limit: int
    shareable: bool
    hold_back: bool


@dataclass(frozen=True, slots=True)
class ShareError:
    """An error (5xx, 429) that may not be stored: read it whole (at most ``limit``, it is small)
    so every caller of the flight gets the origin's own envelope."""

    limit: int
    shareable: bool
    hold_back: bool


@dataclass(frozen=True, slots=True)
class Stream:
    """Not to be stored, or announced larger than may be read whole: hand the response to the
    one caller that asked, streamed as it arrives."""

    hold_back: bool


#: What to do with an origin's answer to a fetch: exactly one of these (``policy.receive``).
Reception = Refetch | Freshen | StoreAndUse | KeepStale | ShareError | Stream
#: The decisions whose body is read whole before the flight is answered.
ReadWhole = StoreAndUse | KeepStale | ShareError
