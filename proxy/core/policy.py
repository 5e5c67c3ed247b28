"""RFC 9111 decisions as pure functions over plain values.

Nothing here does I/O or reads a clock: every time-dependent function takes ``now`` (epoch
seconds), so the rules can be tested one by one without an event loop or a frozen clock.

The cache layer asks only for whole decisions (the last section; frozen values from
``proxy.core.models``, after hishel's state objects) and carries each out with one ``match``:

- a request: ``admit`` (forward it untouched?) then ``lookup`` (``Serve``, ``Fetch`` or
  ``Refuse``);
- an origin's answer to a fetch: ``receive`` (``Refetch``, ``Freshen``, ``StoreAndUse``,
  ``KeepStale``, ``ShareError`` or ``Stream``), and ``new_entry`` for what is stored;
- the flight's outcome for each caller: ``settle`` (or ``settle_error`` when there was none).

The rules they are made of come first, one RFC section each; conditional requests (validators,
304s) live in ``proxy.core.conditional``. A new rule (a range, another precondition) belongs in
a rule function there or here, and reaches the driver as a field or a new case of one of these
decisions, never as a further question the driver asks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.core.coding import Representation, normalise_accept_encoding
from proxy.core.conditional import (
    UNHANDLED_PRECONDITIONS,
    answered_by_watch,
    freshen,
    recently_validated,
    validator_matches,
)
from proxy.core.credentials import credential_scope as credential_scope
from proxy.core.headers import (
    HOP_BY_HOP,
    CacheControl,
    format_http_date,
    normalise_selecting,
    parse_cache_control,
    parse_http_date,
    split_list,
)
from proxy.core.models import (
    Answer,
    Decision,
    Fetch,
    Forward,
    Fresh,
    Freshen,
    Headers,
    KeepStale,
    Lookup,
    Miss,
    Reception,
    Record,
    Refetch,
    Refuse,
    Relay,
    Revalidate,
    Serve,
    Settlement,
    ShareError,
    StoreAndUse,
    StoredResponse,
    Stream,
    Unsatisfiable,
    UpstreamHead,
    header_value,
    response_cache_control,
)
from proxy.core.prefer import requested_wait

#: RFC 9110 §15.1: status codes a cache may store with heuristic freshness.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: Final status codes this cache understands well enough to store (§3, must-understand).
UNDERSTOOD_STATUSES = HEURISTICALLY_CACHEABLE | {302, 303, 307, 400, 403, 500, 502, 503, 504}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: The most of an error answer that may not be stored which is read whole to share it with the
#: flight; a larger one is streamed to the caller that asked.
ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The operator's knobs that the RFCs leave to the cache."""

    heuristic_fraction: float = 0.1
    heuristic_max: float = 3600.0
    keep_stale: float = 3600.0
    stale_grace: float = 300.0
    #: The largest body stored (``--max-entry-bytes``).
    max_entry_bytes: int = 8 * 1024**2
    #: ``--cache-scope shared``: callers with other credentials share the stored responses.
    shared_scope: bool = False
    #: ``--revalidate-window`` (``conditional.recently_validated``); 0: none, as RFC 9111 reads.
    revalidate_window: float = 0.0
    #: ``--max-wait``; 0: no request is held (RFC 7240 ``Prefer: wait``).
    max_wait: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the policy needs to know of a request, extracted once by the handler."""

    scope: str
    cache_control: CacheControl
    pragma_no_cache: bool
    headers: Mapping[str, str]
    #: RFC 7240 ``Prefer: wait`` in seconds, if the request asks to be held.
    wait: int | None = None


# -- keys and scope -------------------------------------------------------------------------------

# The credential scope lives in proxy.core.credentials (re-exported here).


def request_facts(
    headers: Mapping[str, str],
    *,
    scope: str,
    cache_control: Iterable[str] = (),
    prefer: Iterable[str] = (),
) -> RequestFacts:
    pragma = headers.get("pragma", "")
    return RequestFacts(
        scope=scope,
        cache_control=parse_cache_control(list(cache_control)),
        pragma_no_cache="no-cache" in pragma.lower() and not cache_control,
        headers=headers,
        wait=requested_wait(prefer),
    )


def selecting_values(
    vary: tuple[str, ...], headers: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The request fields a ``Vary`` names (§4.1), normalised and then digested.

    Only equality matters for selecting a variant, and a response may vary on a credential
    (``Vary: Authorization``), so stored entries keep a digest, never the value itself.
    ``Accept-Encoding`` is normalised to the coding this cache would serve, so every spelling
    of one preference selects the same variant; other list fields as their grammar allows
    (``headers.normalise_selecting``: list whitespace, and case where it is insignificant).
    """
    getall = getattr(headers, "getall", None)
    values = []
    for name in vary:
        if getall is not None:
            found = getall(name, [])
        else:
            single = headers.get(name)
            found = [single] if single is not None else []
        if name == "accept-encoding":
            values.append((name, normalise_accept_encoding(found)))
            continue
        if not found:
            values.append((name, ""))
            continue
        normalized = normalise_selecting(name, found).encode("utf-8", "surrogateescape")
        values.append((name, hashlib.blake2b(normalized, digest_size=16).hexdigest()))
    return tuple(values)


def select_variant(record: Record, request: RequestFacts) -> StoredResponse | None:
    """The most recent stored response whose scope and selecting fields match (§4.1)."""
    for entry in record:
        if entry.scope != request.scope:
            continue
        vary = entry.selection_vary
        if not vary or selecting_values(vary, request.headers) == entry.selecting:
            return entry
    return None


# -- freshness ------------------------------------------------------------------------------------


def freshness_lifetime(entry: StoredResponse, policy: CachePolicy) -> float:
    """§4.2.1: s-maxage, then max-age, then Expires - Date, then the heuristic of §4.2.2."""
    cc = entry.cache_control
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    expires_values = entry.header_values("expires")
    if expires_values:
        # §5.3: an invalid Expires, several Expires lines included, means already expired.
        expires = parse_http_date(expires_values[0], entry.response_time)
        if expires is None or len(expires_values) > 1:
            return 0.0
        date = entry.date if entry.date is not None else entry.response_time
        return max(0.0, expires - date)
    heuristic_allowed = entry.status in HEURISTICALLY_CACHEABLE or cc.public
    if heuristic_allowed and entry.last_modified is not None:
        date = entry.date if entry.date is not None else entry.response_time
        heuristic = policy.heuristic_fraction * max(0.0, date - entry.last_modified)
        return min(heuristic, policy.heuristic_max)
    return 0.0


def current_age(entry: StoredResponse, now: float) -> float:
    """§4.2.3: corrected initial age plus the time the response has been resident here."""
    return entry.corrected_initial_age + max(0.0, now - entry.response_time)


def may_serve_stale(entry: StoredResponse) -> bool:
    """§4.2.4: must-revalidate, proxy-revalidate and s-maxage forbid serving stale at all."""
    cc = entry.cache_control
    return not (cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None or cc.no_cache)


def decide(
    record: Record | None, request: RequestFacts, now: float, policy: CachePolicy
) -> Decision:
    """Choose what to do with a GET or HEAD given what is stored (§4)."""
    req = request.cache_control
    entry = select_variant(record, request) if record else None
    if entry is None:
        if req.only_if_cached:
            return Unsatisfiable()
        if record and any(candidate.scope == request.scope for candidate in record):
            return Miss("vary-miss")
        return Miss("uri-miss")
    age = current_age(entry, now)
    lifetime = freshness_lifetime(entry, policy)
    ttl = lifetime - age
    if req.only_if_cached:
        # §5.2.1.7 with §4.2.4: a stored response, but a stale one only if max-stale allows it,
        # and never one that no-cache says must be validated first (§5.2.2.4).
        if ttl > 0 and not entry.cache_control.no_cache:
            return Fresh(entry, age, ttl)
        allowed = req.max_stale is not None and -ttl <= req.max_stale and may_serve_stale(entry)
        return Fresh(entry, age, ttl, stale=True) if allowed else Unsatisfiable()
    if entry.cache_control.no_cache:
        return Revalidate(entry, age, "stale")
    if req.no_cache or request.pragma_no_cache:
        if ttl > 0 and recently_validated(entry, now, policy.revalidate_window):
            return Fresh(entry, age, ttl, validated=True)
        return Revalidate(entry, age, "request")
    if ttl > 0:
        if req.max_age is not None and age > req.max_age:
            if recently_validated(entry, now, policy.revalidate_window):
                return Fresh(entry, age, ttl, validated=True)
            return Revalidate(entry, age, "request")
        if req.min_fresh is not None and ttl < req.min_fresh:
            return Revalidate(entry, age, "request")
        return Fresh(entry, age, ttl)
    staleness = -ttl
    if may_serve_stale(entry):
        if req.max_stale is not None and staleness <= req.max_stale:
            return Fresh(entry, age, ttl, stale=True)
        swr = entry.cache_control.stale_while_revalidate
        if swr is not None and staleness <= swr:
            return Revalidate(entry, age, "stale", background=True)
    return Revalidate(entry, age, "stale")


def stale_if_error_allows(
    entry: StoredResponse, request: RequestFacts, now: float, policy: CachePolicy
) -> bool:
    """RFC 5861 §4 stale-if-error, or the operator's grace: may a stale entry replace an error?"""
    if not may_serve_stale(entry):
        return False
    staleness = current_age(entry, now) - freshness_lifetime(entry, policy)
    windows = [policy.stale_grace]
    for cc in (entry.cache_control, request.cache_control):
        if cc.stale_if_error is not None:
            windows.append(float(cc.stale_if_error))
    return staleness <= max(windows)


def retention(entry: StoredResponse, now: float, policy: CachePolicy) -> float:
    """How long to keep an entry: its freshness, then the windows in which stale use is allowed.

    An expired entry with a validator is kept for ``keep_stale`` so the next fetch can be
    conditional instead of downloading the body again.
    """
    lifetime = freshness_lifetime(entry, policy)
    cc = entry.cache_control
    extra = 0.0
    if may_serve_stale(entry):
        extra = max(
            policy.stale_grace,
            float(cc.stale_while_revalidate or 0),
            float(cc.stale_if_error or 0),
        )
    if entry.has_validator:
        extra = max(extra, policy.keep_stale)
    return lifetime + extra - current_age(entry, now)


# -- storing --------------------------------------------------------------------------------------


def storable(
    status: int,
    headers: Headers,
    request: RequestFacts,
    *,
    has_authorization: bool,
    targeted: bool = False,
) -> bool:
    """§3: may a shared cache store this response to a GET?"""
    if status < 200 or status in (206, 304):
        return False
    cc = response_cache_control(headers, targeted=targeted)
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return False
    elif cc.no_store:
        return False
    if request.cache_control.no_store:
        return False
    if cc.private:
        return False
    if has_authorization and not (cc.public or cc.s_maxage is not None or cc.must_revalidate):
        return False
    lowered = {key.lower() for key, _ in headers}
    if "set-cookie" in lowered:
        return False
    vary = [v for k, v in headers if k.lower() == "vary"]
    if any(item == "*" for item in split_list(vary)):
        return False
    explicit = (
        cc.public
        or cc.max_age is not None
        or cc.s_maxage is not None
        or "expires" in lowered
        or cc.no_cache
    )
    return explicit or status in HEURISTICALLY_CACHEABLE


def shareable(headers: Headers, *, shared_scope: bool, targeted: bool = False) -> bool:
    """May an answer fetched for one request be handed to the others that waited for it
    (collapsed fetches, the Retry-After hold-back)?

    Only if every waiter may receive it: no ``Set-Cookie`` (a session), not ``private`` in any
    form nor ``no-store`` (§5.2.2.7, §5.2.2.5). Under ``--cache-scope shared`` the waiters may
    carry other credentials (or none) than the request that fetched it, so only with
    ``public``, ``s-maxage`` or ``must-revalidate`` (§3.5): one token's 429 is not another's.
    """
    cc = response_cache_control(headers, targeted=targeted)
    if cc.private or cc.private_fields or (cc.no_store and not cc.must_understand):
        return False
    if any(key.lower() == "set-cookie" for key, _ in headers):
        return False
    if shared_scope:
        return cc.public or cc.s_maxage is not None or cc.must_revalidate
    return True


def stored_headers(headers: Headers, cache_control: CacheControl) -> Headers:
    """The fields to store: all but hop-by-hop ones and those a qualified private/no-cache names."""
    drop = set(HOP_BY_HOP) | set(cache_control.private_fields) | set(cache_control.no_cache_fields)
    return tuple((key, value) for key, value in headers if key.lower() not in drop)


def with_date(headers: Headers, now: float) -> Headers:
    """RFC 9110 §6.6.1: a cache with a clock adds ``Date`` to a response that has none."""
    if header_value(headers, "date") is not None:
        return headers
    return (*headers, ("Date", format_http_date(now)))


# -- invalidation ---------------------------------------------------------------------------------


def invalidates(method: str, status: int) -> bool:
    """§4.4: a non-error response to an unsafe method invalidates the target URI."""
    return method not in SAFE_METHODS and 200 <= status < 400


def invalidation_targets(target: str, headers: Headers, origin_hosts: frozenset[str]) -> list[str]:
    """The target URI plus same-origin ``Location`` and ``Content-Location`` (§4.4)."""
    targets = [target]
    for name in ("location", "content-location"):
        value = header_value(headers, name)
        if not value:
            continue
        parts = urlsplit(value.strip())
        if parts.netloc and parts.netloc.lower() not in origin_hosts:
            continue
        if not parts.path.startswith("/"):
            continue
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if path not in targets:
            targets.append(path)
    return targets


# -- responses ------------------------------------------------------------------------------------


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> str:
    """The RFC 9211 ``Cache-Status`` member for this cache."""
    parts = ["aitronos-cache-proxy"]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if detail is not None:
        parts.append(f'detail="{detail}"')
    return "; ".join(parts)


# -- whole decisions ------------------------------------------------------------------------------


def admit(headers: Mapping[str, str], *, has_body: bool) -> Forward | None:
    """Before reading the store: a GET or HEAD the cache does not answer itself (§4.3.2)."""
    if has_body or any(name in headers for name in UNHANDLED_PRECONDITIONS):
        return Forward(cache_status(fwd="request"), "bypass")
    return None


def lookup(record: Record | None, request: RequestFacts, now: float, policy: CachePolicy) -> Lookup:
    """§4 as one decision: serve (fresh, stale allowed, or while revalidating), fetch, or refuse."""
    match decide(record, request, now, policy):
        case Fresh(entry, age, ttl, stale, validated):
            detail = "recently-validated" if validated else None
            status = cache_status(hit=True, ttl=ttl, detail=detail)
            return Serve(entry, age, status, "stale" if stale else "hit")
        case Revalidate(entry, age, fwd, background=True):
            ttl = freshness_lifetime(entry, policy) - age
            status = cache_status(hit=True, ttl=ttl, detail="stale-while-revalidate")
            return Serve(entry, age, status, "stale", refresh=True)
        case Revalidate(entry, age, fwd):
            ttl = freshness_lifetime(entry, policy) - age
            window, max_wait = policy.revalidate_window, policy.max_wait
            if fwd == "request" and answered_by_watch(entry, ttl, request.wait, window, max_wait):
                status = cache_status(hit=True, ttl=ttl, detail="watched")
                return Fetch(entry, fwd, long_poll=Serve(entry, age, status, "hit"))
            return Fetch(entry, fwd)
        case Miss(fwd):
            return Fetch(None, fwd)
    return Refuse(
        504,
        "NOT_CACHED",
        "only-if-cached was requested and nothing is stored",
        cache_status(fwd="miss", detail="only-if-cached"),
        "miss",
    )


def settle_error(
    fetch: Fetch, request: RequestFacts, detail: str, now: float, policy: CachePolicy
) -> Serve | None:
    """The origin gave no answer: the stale entry if RFC 5861 stale-if-error allows, else none."""
    stale = fetch.stale
    if stale is None or not stale_if_error_allows(stale, request, now, policy):
        return None
    status = cache_status(fwd=fetch.fwd, detail=detail)
    return Serve(stale, current_age(stale, now), status, "stale")


def settle(
    fetch: Fetch, answer: Answer, request: RequestFacts, now: float, policy: CachePolicy
) -> Settlement:
    """What to send once the shared fetch answered (§4.3.3, §4.2.4, RFC 5861 stale-if-error)."""
    failed = answer.status >= 500 or answer.status == 429
    stale = fetch.stale
    if failed and stale is not None and stale_if_error_allows(stale, request, now, policy):
        status = cache_status(fwd=fetch.fwd, fwd_status=answer.status, collapsed=not answer.led)
        return Serve(stale, current_age(stale, now), status, "stale")
    if not answer.led and not answer.shareable:
        # Set-Cookie, private, or another caller's credentials under a shared scope: the answer
        # is the leader's alone, and this caller asks the origin itself.
        return Forward(cache_status(fwd=fetch.fwd), "miss")
    if answer.streamed:
        # Only the caller that led the fetch may read a streamed body; the others ask again.
        # So does a range request (RFC 9110 §14.2): the whole body was asked for to fill the
        # cache, but it is not stored (too large, not storable), so the origin sends the range.
        if answer.led and "range" not in request.headers:
            return Relay(cache_status(fwd=fetch.fwd), "miss")
        return Forward(cache_status(fwd=fetch.fwd), "miss")
    entry = answer.entry
    if entry is None:
        status = cache_status(fwd=fetch.fwd, fwd_status=answer.status, collapsed=not answer.led)
        return Relay(status, "error" if failed else "miss")
    selection = entry.selection_vary
    if selection and selecting_values(selection, request.headers) != entry.selecting:
        # Collapsed onto a fetch for another variant: fetch our own, once (§4.1).
        if fetch.vary:
            return Forward(cache_status(fwd="vary-miss"), "miss")
        return Fetch(None, "vary-miss", selection)
    status = cache_status(
        fwd=fetch.fwd,
        fwd_status=304 if answer.revalidated else answer.status,
        stored=answer.stored,
        collapsed=answer.collapsed,
    )
    result = "revalidated" if answer.revalidated else "miss"
    return Serve(entry, current_age(entry, now), status, result, saved=answer.revalidated)


def receive(
    head: UpstreamHead,
    request: RequestFacts,
    stale: StoredResponse | None,
    now: float,
    policy: CachePolicy,
) -> Reception:
    """What to do with an origin's answer to a fetch, decided on its head (§3, §4.3.3, §4.3.4).

    ``stale`` is the stored response the fetch validates (``None`` for an unconditional fetch);
    ``request`` the facts of the flight's request. A 304 freshens ``stale`` or is refetched; any
    other answer is stored, kept out in favour of the stale entry, read whole as an error for
    the flight, or streamed to its one caller.
    """
    headers = head.headers
    status = head.status
    if status == 304 and stale is not None:
        if not validator_matches(stale, headers) or header_value(headers, "set-cookie"):
            return Refetch()
        entry = freshen(stale, headers, head.request_time, head.response_time)
        if entry.selection_vary != stale.selection_vary:
            selecting = selecting_values(entry.selection_vary, request.headers)
            entry = entry.replace(selecting=selecting)
        return Freshen(entry)
    share = shareable(headers, shared_scope=policy.shared_scope, targeted=True)
    hold_back = status in (429, 503) and share
    failed = status >= 500 or status == 429
    can_store = not request.cache_control.no_store and storable(
        status,
        headers,
        request,
        has_authorization="authorization" in request.headers,
        targeted=True,
    )
    reading: StoreAndUse | KeepStale | ShareError
    if (
        can_store
        and failed
        and stale is not None
        and stale_if_error_allows(stale, request, now, policy)
    ):
        reading = KeepStale(ERROR_BODY_LIMIT, share, hold_back)
    elif can_store:
        reading = StoreAndUse(policy.max_entry_bytes, share, hold_back)
    elif failed:
        reading = ShareError(ERROR_BODY_LIMIT, share, hold_back)
    else:
        return Stream(hold_back)
    if head.content_length is not None and head.content_length > reading.limit:
        return Stream(hold_back)
    return reading


def new_entry(
    head: UpstreamHead,
    body: bytes,
    request: RequestFacts,
    derived: tuple[Representation, ...] = (),
    coding: str | None = None,
) -> StoredResponse:
    """The stored response for a ``StoreAndUse`` answer (§3.1: its storable fields, a ``Date``
    if it had none), in the request's scope and selected by the fields its ``Vary`` names;
    ``body`` in ``coding`` and ``derived`` are how it is kept (``coding.stored_form``)."""
    cache_control = parse_cache_control(
        [value for key, value in head.headers if key.lower() == "cache-control"]
    )
    entry = StoredResponse(
        status=head.status,
        reason=head.reason,
        headers=with_date(stored_headers(head.headers, cache_control), head.response_time),
        body=body,
        request_time=head.request_time,
        response_time=head.response_time,
        scope=request.scope,
        selecting=(),
        targeted=True,
        derived=derived,
        coding=coding,
    )
    if entry.selection_vary:
        selecting = selecting_values(entry.selection_vary, request.headers)
        entry = entry.replace(selecting=selecting)
    return entry
