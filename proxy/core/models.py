"""Frozen value types shared by the policy, the stores and the handler."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import Any

from proxy.core.coding import IDENTITY, Representation, coded_etag
from proxy.core.fields import (
    ACCEPT_RANGES,
    NOT_SERVED,
    NOT_SERVED_WITH_RANGES,
    Headers,
    Shape,
    ShapePart,
    coding_token,
    date_of,
    header_value,
    header_values,
    parsed_vary,
    represented,
    response_cache_control,
    served_fields,
    shared_fields,
    shared_pair,
    shared_shape,
)
from proxy.core.headers import CacheControl, parse_age, parse_entity_tag

__all__ = [
    "ACCEPT_RANGES",
    "NOT_SERVED",
    "NOT_SERVED_WITH_RANGES",
    "Headers",
    "header_value",
    "header_values",
    "response_cache_control",
]


class _Time:
    """``StoredResponse.request_time`` or ``response_time``, read from its one ``complex``."""

    __slots__ = ("response",)

    def __init__(self, *, response: bool) -> None:
        self.response = response

    def __get__(self, entry: Any, owner: Any = None) -> float:
        times: complex = entry._times
        return times.imag if self.response else times.real


class StoredResponse:
    """One stored response (RFC 9111 §3) and the request facts needed to reuse it.

    ``scope`` is the credential scope the response belongs to and ``selecting`` the values of the
    request fields its ``Vary`` names (§4.1), so a variant is only reused for matching requests.

    ``body`` is the one body kept, in content coding ``coding`` (``proxy.core.coding
    .stored_form``): None means as the origin sent it, served only so; otherwise identity is
    servable too (decoded on the way out when ``coding`` is not identity) and ``derived`` holds
    the bodies of other configured codings. ``representations`` lists what is served, the
    origin's own first, each with its validator (RFC 9110 §8.8.3).

    Memory is the point of this layout (issue 19): five slots per response (the shape, its
    ``ETag``, body, its two times as one complex number, ``expires``), the shape one tuple
    shared by every response that repeats the rest (status, reason, fields, coding, scope,
    directives, ``Vary``, ``Date``, ``Age``, no derived bodies: ``fields.shared_shape``), the
    ``ETag`` kept apart so that the rest can be shared. Derived facts
    (``corrected_initial_age``, dates, representations) are computed when asked. The last
    slot, ``expires``, belongs to the memory store (``proxy.stores.memory``), which keeps the
    retention of a one-variant record on it rather than in a tuple per key.
    """

    __slots__ = ("_shape", "_times", "body", "etag", "expires")

    _shape: Shape
    #: ``request_time`` and ``response_time`` as one object (a complex number holds two
    #: doubles in 32 bytes, where two floats take 64 and a slot more).
    _times: complex
    etag: str | None
    body: bytes
    expires: float | None

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
        scope: str = "",
        selecting: tuple[tuple[str, str], ...] = (),
        targeted: bool = False,
        derived: tuple[Representation, ...] = (),
        coding: str | None = None,
    ) -> None:
        # Content-Length is not kept: it is never served from here (the length is the body's,
        # in the coding sent), and dropping it lets responses of one shape share their fields.
        kept = [(str(k), str(v)) for k, v in headers if k.lower() != "content-length"]
        at, etag = -1, parse_entity_tag(header_value(tuple(kept), "etag"))
        tags = [index for index, (name, _) in enumerate(kept) if name.lower() == "etag"]
        if len(tags) == 1 and kept[tags[0]][1] == etag:
            # The one field unique to each response is kept apart (served as ``ETag``), so the
            # rest can be shared.
            at = tags[0]
            del kept[at]
        fields = shared_fields(tuple(shared_pair(name, value) for name, value in kept))
        vary = parsed_vary(tuple(header_values(fields, "vary")))
        if "accept-encoding" in vary and (
            coding is not None
            or IDENTITY
            in (
                coding_token(header_values(fields, "content-encoding")),
                *(rep.coding for rep in derived),
            )
        ):
            # Every client can be served from this one stored response (§12.5.3): the request's
            # Accept-Encoding picks a representation, not a stored response.
            selection_vary = tuple(name for name in vary if name != "accept-encoding")
        else:
            selection_vary = vary
        shape = (
            status, sys.intern(reason), fields, at, coding,
            # One string per credential scope, however many responses it holds.
            sys.intern(scope), selecting, targeted,
            response_cache_control(fields, targeted=targeted), vary, selection_vary,
            date_of(header_value(fields, "date"), response_time),
            parse_age(header_values(fields, "age")) or 0,
            derived,
        )  # fmt: skip
        setter = object.__setattr__
        # Derived bodies are each response's own: a shape holding them is not shared (nor kept
        # alive by the sharing table).
        setter(self, "_shape", shape if derived else shared_shape(shape))
        setter(self, "_times", complex(request_time, response_time))
        setter(self, "etag", etag)
        setter(self, "body", body)
        setter(self, "expires", None)

    status = ShapePart[int](0)
    reason = ShapePart[str](1)
    _fields = ShapePart[Headers](2)
    _etag_at = ShapePart[int](3)
    coding = ShapePart["str | None"](4)
    scope = ShapePart[str](5)
    selecting = ShapePart[tuple[tuple[str, str], ...]](6)
    targeted = ShapePart[bool](7)
    cache_control = ShapePart[CacheControl](8)
    vary = ShapePart[tuple[str, ...]](9)
    selection_vary = ShapePart[tuple[str, ...]](10)
    date = ShapePart["float | None"](11)
    derived = ShapePart[tuple[Representation, ...]](13)

    request_time = _Time(response=False)
    response_time = _Time(response=True)

    @property
    def corrected_initial_age(self) -> float:
        """§4.2.3 corrected_initial_age, with the receipt time at the one-second resolution of
        the Date it is compared with: a response dated in the second it arrives is not up to
        1 s old."""
        shape, times = self._shape, self._times
        response_time = times.imag
        date: float | None = shape[11]
        apparent_age = max(0.0, math.floor(response_time) - date) if date is not None else 0.0
        corrected_age_value: float = shape[12] + (response_time - times.real)
        return max(apparent_age, corrected_age_value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"StoredResponse is immutable: {name}")

    def _init_args(self) -> tuple[object, ...]:
        return (
            self.status, self.reason, self.headers, self.body, self.request_time,
            self.response_time, self.scope, self.selecting, self.targeted, self.derived,
            self.coding,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredResponse):
            return NotImplemented
        return self is other or self._init_args() == other._init_args()

    def __hash__(self) -> int:
        return hash(self._init_args())

    def __repr__(self) -> str:
        return (
            f"StoredResponse({self.status}, {self.reason!r}, {len(self.body)} bytes"
            f" {self.coding or 'as sent'}, response_time={self.response_time!r})"
        )

    def replace(self, **changes: Any) -> StoredResponse:
        """A copy with some constructor arguments changed (as ``dataclasses.replace``)."""
        args = dict(zip(_INIT_NAMES, self._init_args(), strict=True))
        args.update(changes)
        return StoredResponse(**args)  # type: ignore[arg-type]

    # -- fields ---------------------------------------------------------------------------------

    @property
    def headers(self) -> Headers:
        """The stored fields, in the order received."""
        at = self._etag_at
        if at < 0:
            return self._fields
        fields = self._fields
        return (*fields[:at], ("ETag", self.etag or ""), *fields[at:])

    def header(self, name: str) -> str | None:
        """The first value of a stored field (``name`` lower-case)."""
        if name == "etag" and self._etag_at >= 0:
            return self.etag
        return header_value(self._fields, name)

    def header_values(self, name: str) -> list[str]:
        """Every value of a stored field (``name`` lower-case)."""
        if name == "etag":
            return header_values(self.headers, name)
        return header_values(self._fields, name)

    @property
    def served(self) -> Headers:
        """The stored fields a response built from this one carries."""
        return served_fields(self.headers, self.status)

    @property
    def last_modified(self) -> float | None:
        return date_of(header_value(self._fields, "last-modified"), self.response_time)

    @property
    def has_validator(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    # -- representations ------------------------------------------------------------------------

    @property
    def origin_coding(self) -> str:
        """The coding the origin sent the body in, as one lower-case token."""
        return coding_token(header_values(self._fields, "content-encoding"))

    @property
    def representations(self) -> tuple[Representation, ...]:
        """What this stored response is served as, the origin's representation first.

        Each derived one has its own weak validator (``coded_etag``); a representation not
        stored (identity, when the body is kept coded) has no ``body`` here.
        """
        origin = self.origin_coding
        stored = self.coding
        if stored is None:
            return (Representation(origin, self.body, self.etag, False), *self.derived)
        bodies: dict[str, bytes | None] = {IDENTITY: None, stored: self.body}
        for rep in self.derived:
            bodies.setdefault(rep.coding, rep.body)
        first = Representation(origin, bodies.pop(origin, None), self.etag, False)
        derived = {rep.coding: rep for rep in self.derived}
        rest = []
        for coding, body in bodies.items():
            found = derived.get(coding)
            if found is None or found.body is not body:
                found = Representation(coding, body, coded_etag(self.etag, coding), True)
            rest.append(found)
        return (first, *rest)

    @property
    def codings(self) -> tuple[str, ...]:
        """The coding of each representation, in ``representations`` order."""
        return _codings(self.origin_coding, self.coding, tuple(r.coding for r in self.derived))

    def fields_of(self, rep: Representation, reps: tuple[Representation, ...]) -> Headers:
        """The served fields of one representation: its coding, its validator, and ``Vary``.

        ``Vary: Accept-Encoding`` whenever the stored response has several codings (RFC 9110
        §12.5.5), so no cache downstream hands one client's coding to another.
        """
        return represented(self.served, rep, reps)

    @property
    def represented(self) -> tuple[Headers, ...]:
        """The served fields of each representation, in ``representations`` order."""
        reps = self.representations
        served = self.served
        return tuple(represented(served, rep, reps) for rep in reps)

    @property
    def size(self) -> int:
        """Bytes this response is accounted in the cache budget: its bodies and fields, and
        Python's own memory per response (``ENTRY_OVERHEAD``, measured)."""
        fields = sum(len(k) + len(v) + FIELD_OVERHEAD for k, v in self._fields)
        selecting = sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in self.selecting)
        derived = sum(
            len(rep.body or b"") + len(rep.etag or "") + REPRESENTATION_OVERHEAD
            for rep in self.derived
        )
        # The scope carries the caller's Host when --public-host is unset: count it, so a
        # flood of long Host values is paid for out of the budget.
        etag = len(self.etag or "")
        return (
            len(self.body)
            + fields
            + selecting
            + derived
            + etag
            + len(self.scope)
            + (ENTRY_OVERHEAD)
        )


_INIT_NAMES = (
    "status", "reason", "headers", "body", "request_time", "response_time", "scope",
    "selecting", "targeted", "derived", "coding",
)  # fmt: skip


@functools.lru_cache(maxsize=256)
def _codings(origin: str, stored: str | None, derived: tuple[str, ...]) -> tuple[str, ...]:
    """``representations``' codings: the origin's, identity, the stored one, the derived ones."""
    if stored is None:
        return (origin, *derived)
    rest = dict.fromkeys((IDENTITY, stored, *derived))
    rest.pop(origin, None)
    return (origin, *rest)


#: Python's own memory per stored response beyond its bytes and fields: the object and its
#: slots, its times, its share of the record tuple; measured with tracemalloc on CPython 3.11
#: (tests/cache/test_memory_budget.py), so the budget bounds real memory.
ENTRY_OVERHEAD = 320
#: Per field line beyond its characters: the pair tuple. Responses that repeat a field share one
#: pair (and the fields tuple), so this overstates what most of them cost.
FIELD_OVERHEAD = 64
#: Per derived coding beyond its bytes (its object, its ETag string, allocator slack).
REPRESENTATION_OVERHEAD = 160

#: All stored variants of one URI, most recent first (RFC 9111 §4.1).
Record = tuple[StoredResponse, ...]


def same_record(a: Record, b: Record) -> bool:
    """Whether two records hold the very same stored responses: the memory store hands a
    one-variant record out as a new tuple on each read (``proxy.stores.memory``)."""
    if a is b:
        return True
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def record_size(record: Record) -> int:
    return sum(entry.size for entry in record)


@dataclass(frozen=True, slots=True)
class Found:
    """A stored response and its current age (§4.2.3): what the decisions on it start from."""

    entry: StoredResponse
    age: float


@dataclass(frozen=True, slots=True)
class Fresh(Found):
    """The stored response may be served as it is (§4.2).

    ``validated``: the request's ``max-age=0`` / ``no-cache`` is satisfied by the origin's answer
    for this very stored response within ``--revalidate-window`` (``recently_validated``).
    """

    ttl: float
    stale: bool = False
    validated: bool = False


@dataclass(frozen=True, slots=True)
class Revalidate(Found):
    """A stored response exists but must be validated upstream before (or while) it is used.

    ``fwd`` is the RFC 9211 reason: ``stale`` for an expired entry, ``request`` when the request's
    directives forbade using a fresh one. ``background`` means RFC 5861 stale-while-revalidate
    lets the stale entry be served at once while the validation runs.
    """

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
class Serve(Found):
    """Answer from ``entry`` (RFC 9111 §4.2), with ``Age`` and this ``Cache-Status`` member.

    ``result`` is the metrics label; ``saved`` says the body did not come from the origin now;
    ``refresh`` asks for an RFC 5861 background revalidation after answering.
    """

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
class Passed:
    """An answer not served from the store: its ``Cache-Status`` member and metrics label."""

    cache_status: str
    result: str


@dataclass(frozen=True, slots=True)
class Forward(Passed):
    """Pass the request through uncached, relaying the origin's answer as it streams."""


@dataclass(frozen=True, slots=True)
class Relay(Passed):
    """Send the fetched answer as it is (not served from the store)."""


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
