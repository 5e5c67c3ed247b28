"""Stored fields as plain, shared values: the tables that let stored responses share them.

Responses of one API repeat the same field lines (``Content-Type``, ``Cache-Control``,
``Server``, ``Via``, the ``Date`` of a busy second): each distinct pair, and each distinct tuple
of them, is kept once for every stored response that repeats it (issue 19: per-response
objects, not bodies, were most of what 50,000 small stored responses cost). The tables are
bounded LRU caches; a value they forgot is simply not shared any more.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Generic, TypeVar

from proxy.core.coding import IDENTITY, Representation
from proxy.core.headers import (
    HOP_BY_HOP,
    CacheControl,
    parse_cache_control,
    parse_cdn_cache_control,
    parse_http_date,
    parse_vary,
)

Headers = tuple[tuple[str, str], ...]
T = TypeVar("T")

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


@functools.lru_cache(maxsize=1024)
def shared_pair(name: str, value: str) -> tuple[str, str]:
    """One field tuple for every stored response that repeats it (``Content-Type``,
    ``Cache-Control``, ``Server``, ``Via``, the ``Date`` of a busy second): plain ``str`` names
    and values (not the client's ``istr``), written out without conversion."""
    return (sys.intern(name), value)


@functools.lru_cache(maxsize=256)
def shared_fields(fields: Headers) -> Headers:
    """One tuple for every stored response whose fields are the same (apart from ``ETag``)."""
    return fields


#: What most stored responses of one API repeat (``StoredResponse``'s shape): status, reason,
#: fields (``ETag`` apart), where the ``ETag`` goes, stored coding, scope, selecting fields,
#: targeted, directives, ``Vary``, its selection part, the ``Date`` as a time, the ``Age`` and the
#: derived bodies (a shape with some is the response's own, not shared).
Shape = tuple[Any, ...]


@functools.lru_cache(maxsize=1024)
def shared_shape(shape: Shape) -> Shape:
    """One shape tuple for every stored response that repeats it: a completed transcription
    then costs its body, its ``ETag``, two times and a small object of five slots."""
    return shape


class ShapePart(Generic[T]):
    """A ``StoredResponse`` attribute read from its shared shape (``shape[index]``)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, entry: Any, owner: Any = None) -> T:
        value: T = entry._shape[self.index]
        return value


@functools.lru_cache(maxsize=4096)
def _parsed_date(value: str) -> float | None:
    return parse_http_date(value)


def date_of(value: str | None, now: float) -> float | None:
    """An HTTP-date field as epoch seconds; only the RFC 850 form (with ``-``) depends on now."""
    if value is None or "-" in value:
        return parse_http_date(value, now)
    return _parsed_date(value)


@functools.lru_cache(maxsize=256)
def parsed_vary(values: tuple[str, ...]) -> tuple[str, ...]:
    return parse_vary(values)


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


def coding_token(values: list[str]) -> str:
    """The body's coding as one lower-case token (``identity`` when it has none)."""
    joined = ", ".join(value.strip().lower() for value in values if value.strip())
    return {"": IDENTITY, "x-gzip": "gzip"}.get(joined, joined)


def represented(served: Headers, rep: Representation, reps: tuple[Representation, ...]) -> Headers:
    """The served fields of one of a stored response's representations (``fields_of``)."""
    if len(reps) == 1:
        return served
    drop = {"content-encoding", "etag", "vary"}
    fields = [item for item in served if item[0].lower() not in drop]
    if rep.coding != IDENTITY:
        fields.append(shared_pair("Content-Encoding", rep.coding))
    if rep.etag is not None:
        fields.append(("ETag", rep.etag))
    vary = parse_vary(header_values(served, "vary"))
    names = [value for key, value in served if key.lower() == "vary"]
    if "accept-encoding" not in vary:
        names.append("Accept-Encoding")
    fields.append(shared_pair("Vary", ", ".join(names)))
    return tuple(fields)


def served_fields(headers: Headers, status: int) -> Headers:
    """The stored fields a response built from a stored one carries, with ``Accept-Ranges:
    bytes`` on a 200 (the ranges this cache serves of it)."""
    if status != 200:
        return tuple(item for item in headers if item[0].lower() not in NOT_SERVED)
    kept = (item for item in headers if item[0].lower() not in NOT_SERVED_WITH_RANGES)
    return (*kept, ACCEPT_RANGES)
