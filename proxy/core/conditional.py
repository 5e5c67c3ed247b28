"""Conditional requests as pure rules: validating a stored response upstream (RFC 9111 §4.3)
and answering a client's own validators (RFC 9110 §13).

Two directions meet here. Towards the origin: the validators a revalidation sends
(``conditional_headers``), whether a 304 selects the stored response (``validator_matches``) and
how it freshens it (``freshen``). Towards the client: whether a stored response answers a
conditional GET with 304 (``not_modified``) and which fields that 304 repeats. The policy's whole
decisions (``proxy.core.policy``) build on these; byte ranges and ``If-Range`` are answered from
the stored response by ``proxy.core.ranges``; the other preconditions
(``UNHANDLED_PRECONDITIONS``) are forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from proxy.core.coding import Representation, choose, could_hold
from proxy.core.headers import (
    HOP_BY_HOP,
    format_http_date,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_http_date,
    parse_vary,
    split_list,
    weak_match,
)
from proxy.core.models import Headers, StoredResponse, header_value

#: §3.2: fields a 304 must not overwrite in the stored response.
NOT_FRESHENED = frozenset({"content-length", "content-encoding", "content-range"}) | HOP_BY_HOP
#: RFC 9110 §15.4.5: the fields a 304 carries from the 200 it stands for.
NOT_MODIFIED_FIELDS = (
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "last-modified",
    "vary",
)


def freshen(
    entry: StoredResponse, not_modified: Headers, request_time: float, response_time: float
) -> StoredResponse:
    """§4.3.4: update a stored response with the fields of a 304 that validated it.

    ``Vary`` is the exception: a 304 whose ``Vary`` is narrower than its 200's (fronts that add
    ``Vary: Accept-Encoding`` only when they compress) must not unselect the stored response,
    so the stored ``Vary`` becomes the union of both; the caller recomputes the selection.
    Content codings and their derived bodies are unchanged by a 304 and are kept, and so is
    the stored ``ETag``.
    """
    if header_value(not_modified, "date") is None:
        # RFC 9110 §6.6.1: a recipient with a clock adds the Date the origin left out.
        not_modified = (*not_modified, ("Date", format_http_date(response_time)))
    # The stored bytes are unchanged, and so is their own validator: a 304 echoing another form
    # of the tag (validator_matches: the same opaque tag) does not make a gzip body's weak tag
    # strong, nor an identity body's strong tag weak.
    keep = NOT_FRESHENED | ({"etag"} if entry.etag is not None else set())
    updates = {key.lower(): None for key, _ in not_modified if key.lower() not in keep}
    kept = tuple((key, value) for key, value in entry.headers if key.lower() not in updates)
    fresh = tuple(
        (key, value)
        for key, value in not_modified
        if key.lower() in updates and key.lower() != "vary"
    )
    if "vary" in updates:
        stored_vary = [value for key, value in entry.headers if key.lower() == "vary"]
        new_vary = [value for key, value in not_modified if key.lower() == "vary"]
        names = {name: None for name in split_list(stored_vary + new_vary)}
        if names and parse_vary(list(names)) != ("*",):
            fresh = (*fresh, ("Vary", ", ".join(names)))
    return replace(
        entry, headers=kept + fresh, request_time=request_time, response_time=response_time
    )


def validator_matches(entry: StoredResponse, not_modified: Headers) -> bool:
    """§4.3.4: does a 304 to the conditional request this cache made for ``entry`` refresh it?

    The 304 answers the validators sent for this one stored response, so it refreshes that
    response whatever form of the tag it echoes: an origin behind nginx's gzip weakens the tag
    of the gzip 200 (``W/"x"``) but answers the revalidation with the strong ``"x"``, and
    nginx and Varnish take such a 304 as refreshing the response they asked about. The tags are
    compared weakly (the opaque tag, §8.8.3.2). A 304 whose validators contradict the stored
    ones (another opaque tag, an ETag where none is stored, another ``Last-Modified``) selects
    nothing and the body is fetched again. Without validators the request's own are trusted.
    """
    etag = header_value(not_modified, "etag")
    if etag is not None:
        tag = parse_entity_tag(etag)
        if tag is None or entry.etag is None or not weak_match(tag, entry.etag):
            return False
    last_modified = header_value(not_modified, "last-modified")
    if last_modified is not None and entry.last_modified is not None:
        date = parse_http_date(last_modified, entry.response_time)
        if date is not None and date != entry.last_modified:
            return False
    return True


def conditional_headers(entry: StoredResponse) -> dict[str, str]:
    """§4.3.1: the validators to send upstream when revalidating a stored response."""
    headers = {}
    if entry.etag is not None:
        headers["If-None-Match"] = entry.etag
    last_modified = entry.header("last-modified")
    if last_modified is not None and entry.last_modified is not None:
        headers["If-Modified-Since"] = last_modified
    return headers


def recently_validated(entry: StoredResponse, now: float, window: float) -> bool:
    """Does the origin's answer for this stored response satisfy a request's demand to
    revalidate (``max-age=0``, ``no-cache``, ``Pragma: no-cache``; RFC 9111 §5.2.1.1, §5.2.1.4)?

    Yes within ``window`` (``--revalidate-window``) seconds of its receipt (``response_time``:
    the fetch that stored it or the 304 that last freshened it), as if the request had joined
    that revalidation: browsers add ``max-age=0`` to every scripted conditional ``fetch()``,
    and each one asking the origin again would learn nothing new. ``entry`` is the request's own
    variant (its credential scope and ``Vary`` selection), so a revalidation only ever
    satisfies requests of that same scope and selection. A window of 0 never does.
    """
    return window > 0 and 0.0 <= now - entry.response_time <= window


def answered_by_watch(
    entry: StoredResponse, ttl: float, wait: int | None, window: float, max_wait: float
) -> bool:
    """May a long poll (RFC 7240 ``Prefer: wait``) that its own directives alone send upstream
    (``max-age=0``, ``no-cache``) be answered from its flight's watch instead?

    The watch revalidates the stored response each time its freshness ends while anyone waits
    on it, and wakes every waiter on a change: a long poll is answered from those
    revalidations, not from one of its own. Held if its ``If-None-Match`` matches; served at
    once if not and the flight is being watched (the driver knows which). Only while the
    stored response is fresh by the origin's terms (``ttl``), with a successful status, and
    with both ``--revalidate-window`` and ``--max-wait`` on.
    """
    if window <= 0 or max_wait <= 0 or wait is None or wait <= 0 or ttl <= 0:
        return False
    return 200 <= entry.status < 300


# -- conditional requests -------------------------------------------------------------------------

#: Preconditions this cache does not evaluate itself; such requests are forwarded (§4.3.2).
UNHANDLED_PRECONDITIONS = ("if-match", "if-unmodified-since")


def not_modified(
    entry: StoredResponse, headers: Mapping[str, str], chosen: Representation | None = None
) -> Representation | None:
    """RFC 9110 §13.1.2 / §13.1.3: the representation the client holds, if it gets a 304.

    ``chosen``: the representation negotiated for the client (by default, from its
    ``Accept-Encoding``, as ``coding.choose`` picks it).

    ``If-None-Match`` is compared with the representation chosen for the client and with each
    other one the client could hold (its coding is identity or one the client names,
    ``coding.could_hold``), so a client holding any of those is told it is current, under that
    one's tag. A client that cannot read gzip is never told its gzip tag is current: the
    representation it would be sent is another, with another validator (RFC 9110 §8.8.3).
    """
    if_none_match = headers.get("if-none-match")
    getall = getattr(headers, "getall", None)
    if getall is not None and "accept-encoding" in headers:
        accept_encoding: str | None = ", ".join(getall("accept-encoding"))
    else:
        accept_encoding = headers.get("accept-encoding")
    if chosen is None:
        index = choose(entry.codings, accept_encoding)
        chosen = entry.representations[index or 0]
    if if_none_match is not None:
        tags = parse_entity_tag_list(if_none_match)
        if tags is None:
            return None
        if tags == ("*",):
            return chosen
        for rep in (chosen, *entry.representations):
            if rep is not chosen and not could_hold(rep.coding, accept_encoding):
                continue
            if rep.etag is not None and any(weak_match(tag, rep.etag) for tag in tags):
                return rep
        return None
    since = parse_http_date(headers.get("if-modified-since"))
    if since is None:
        return None
    reference = entry.last_modified
    if reference is None:
        reference = entry.date if entry.date is not None else entry.response_time
    return chosen if reference <= since else None


def not_modified_headers(
    entry: StoredResponse, rep: Representation | None = None
) -> list[tuple[str, str]]:
    """RFC 9110 §15.4.5: the 200's fields a 304 repeats, for the representation it validates."""
    index = entry.representations.index(rep) if rep is not None else 0
    fields = entry.represented[index]
    return [(key, value) for key, value in fields if key.lower() in NOT_MODIFIED_FIELDS]
