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

from proxy.core.coding import Representation
from proxy.core.headers import (
    HOP_BY_HOP,
    format_http_date,
    parse_entity_tag_list,
    parse_http_date,
    parse_vary,
    split_list,
    strong_match,
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
    Content codings and their derived bodies are unchanged by a 304 and are kept.
    """
    if header_value(not_modified, "date") is None:
        # RFC 9110 §6.6.1: a recipient with a clock adds the Date the origin left out.
        not_modified = (*not_modified, ("Date", format_http_date(response_time)))
    updates = {key.lower(): None for key, _ in not_modified if key.lower() not in NOT_FRESHENED}
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
    """§4.3.4: does a 304 select this stored response for update?

    A strong ``ETag`` selects only stored responses with that same strong validator, so a
    representation in another coding never takes over the origin's strong tag; a weak one
    selects by weak comparison; without an ``ETag`` the request's own validator is trusted.
    """
    etag = header_value(not_modified, "etag")
    if etag is None:
        return True
    etag = etag.strip()
    if entry.etag is None:
        return False
    if not etag.startswith("W/"):
        return strong_match(etag, entry.etag)
    return weak_match(etag, entry.etag)


def conditional_headers(entry: StoredResponse) -> dict[str, str]:
    """§4.3.1: the validators to send upstream when revalidating a stored response."""
    headers = {}
    if entry.etag is not None:
        headers["If-None-Match"] = entry.etag
    last_modified = entry.header("last-modified")
    if last_modified is not None and entry.last_modified is not None:
        headers["If-Modified-Since"] = last_modified
    return headers


# -- conditional requests -------------------------------------------------------------------------

#: Preconditions this cache does not evaluate itself; such requests are forwarded (§4.3.2).
UNHANDLED_PRECONDITIONS = ("if-match", "if-unmodified-since")


def not_modified(
    entry: StoredResponse, headers: Mapping[str, str], chosen: Representation | None = None
) -> Representation | None:
    """RFC 9110 §13.1.2 / §13.1.3: the representation the client holds, if it gets a 304.

    ``If-None-Match`` is compared with every representation of the stored response (its own
    coding first), so a client holding any of them is told it is current, under that one's tag.
    """
    chosen = chosen or entry.representations[0]
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = parse_entity_tag_list(if_none_match)
        if tags is None:
            return None
        if tags == ("*",):
            return chosen
        for rep in (chosen, *entry.representations):
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
