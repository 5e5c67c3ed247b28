"""The one handler where the store, the policy and the upstream meet (RFC 9111 wiring)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from cachetools import TLRUCache
from multidict import CIMultiDict

from proxy import CACHE_NAME
from proxy.cache.wait import Observation, WaitRoom, Wake
from proxy.core.headers import (
    HOP_BY_HOP,
    CacheControl,
    connection_tokens,
    parse_cache_control,
    parse_retry_after,
    valid_field,
)
from proxy.core.models import (
    NOT_SERVED,
    Fresh,
    Headers,
    Miss,
    Revalidate,
    StoredResponse,
    Unsatisfiable,
    header_value,
)
from proxy.core.policy import (
    UNHANDLED_PRECONDITIONS,
    CachePolicy,
    RequestFacts,
    cache_status,
    conditional_headers,
    credential_scope,
    current_age,
    decide,
    freshen,
    freshness_lifetime,
    invalidates,
    invalidation_targets,
    not_modified,
    not_modified_headers,
    request_facts,
    retention,
    select_variant,
    selecting_values,
    stale_if_error_allows,
    storable,
    stored_headers,
    validator_matches,
    with_date,
)
from proxy.core.prefer import Hold, Shed, hold_decision, requested_wait
from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics, status_class
from proxy.server import RequestBody, RequestRejected, disconnected
from proxy.stores.coordination import Coordinator, Notice
from proxy.stores.memory import SharedStore, Store, StoreError
from proxy.upstream import (
    SingleFlight,
    Upstream,
    UpstreamError,
    translate_error,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("proxy")

#: Fields a client may send that would let it steer what the origin generates for everyone.
UNTRUSTED_REQUEST_FIELDS = frozenset(
    {"x-forwarded-host", "x-forwarded-proto", "x-original-url", "x-rewrite-url", "forwarded"}
)
#: Client validators are evaluated here against the stored response, never sent upstream on a
#: cacheable fetch, so that the fetch is the same for every collapsed caller.
CLIENT_VALIDATORS = frozenset({"if-none-match", "if-modified-since"})
ERROR_BODY_LIMIT = 64 * 1024
MAX_VARIANTS = 16
CHUNK = 2**16

_TRANSCRIPTIONS = "/v1/audio/transcribe/"
_TRANSCRIPTION = re.compile(r"^/v1/audio/transcribe/[^/]+/?$")
_TRANSCRIPTION_RESOURCE = re.compile(r"^/v1/audio/transcribe/[^/]+/.+")

RESULT_KEY = web.RequestKey("cache_result", str)


def route_of(path: str) -> str:
    """The bounded ``route`` label of a path (never the path itself)."""
    if not path.startswith(_TRANSCRIPTIONS):
        return "other"
    if _TRANSCRIPTION.match(path):
        return "transcription"
    if _TRANSCRIPTION_RESOURCE.match(path):
        return "transcription_resource"
    return "other"


def error_response(status: int, code: str, message: str, status_header: str) -> web.Response:
    """The API's own error envelope, so clients parse proxy errors like upstream ones."""
    return web.json_response(
        {"success": False, "error": {"code": code, "message": message}},
        status=status,
        headers={"Cache-Status": status_header},
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    """An upstream answer read in full, shareable with collapsed requests.

    ``collapsed``: another replica fetched it; this one read what that replica stored.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes
    entry: StoredResponse | None = None
    stored: bool = False
    revalidated: bool = False
    collapsed: bool = False


@dataclass(slots=True)
class Streamed:
    """An upstream answer too large or not storable: streamed to the one caller that asked."""

    response: aiohttp.ClientResponse
    headers: Headers
    prefix: bytes = b""


Outcome = Fetched | Streamed


def end_to_end(items: Any) -> Headers:
    """RFC 9110 §7.6.1: drop hop-by-hop fields and those the ``Connection`` field names.

    Fields with control characters are dropped too (§5.5): aiohttp refuses to send them, so
    storing one would make an entry that can never be served.
    """
    pairs = list(items)
    connection = connection_tokens(v for k, v in pairs if k.lower() == "connection")
    return tuple(
        (k, v)
        for k, v in pairs
        if k.lower() not in HOP_BY_HOP and k.lower() not in connection and valid_field(k, v)
    )


@dataclass(frozen=True, slots=True)
class FetchJob:
    """One upstream fetch for a flight: what to ask for, for whom, and the entry it validates."""

    route: str
    key: str
    flight_key: str
    facts: RequestFacts
    forwarded: tuple[tuple[str, str], ...]
    stale: StoredResponse | None


class CachingProxy:
    """Carries out the policy's decisions: serve, revalidate, fetch, stream, invalidate."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream: Upstream,
        metrics: Metrics,
        clock: Callable[[], float],
        coordinator: Coordinator | None = None,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self._credential_headers = settings.credential_headers
        self._shared_scope = settings.shared_scope
        self._scope_secret = settings.scope_secret.encode()
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.policy = CachePolicy(
            heuristic_max=settings.heuristic_max,
            keep_stale=settings.keep_stale,
            stale_grace=settings.stale_grace,
        )
        self.flights: SingleFlight[Outcome] = SingleFlight()
        self.waits: WaitRoom[Fetched] = WaitRoom(
            on_outcome=lambda outcome: metrics.long_polls.labels(outcome).inc()
        )
        metrics.waiting_requests.set_function(lambda: self.waits.waiting)
        self.via = f"1.1 {CACHE_NAME}"
        self.draining = False
        self._backoff: TLRUCache[str, tuple[float, Fetched]] = TLRUCache(
            maxsize=10_000, ttu=lambda _k, v, _now: v[0], timer=clock
        )
        # When each key was last invalidated: a fetch that started before then must not store
        # what it brings back, or a DELETE racing a poll would be undone (§4.4).
        self._invalidated: TLRUCache[str, float] = TLRUCache(
            maxsize=100_000,
            ttu=lambda _k, at, _now: at + settings.upstream_timeout + 1,
            timer=clock,
        )

    # -- entry point -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        route = route_of(request.path)
        try:
            if request.method in ("GET", "HEAD"):
                response, result = await self._cacheable(request, route)
                if response.status == 304 and result != "bypass" and "prefer" in request.headers:
                    response, result, held = await self._long_poll(request, route, response, result)
                    started += held
            else:
                response, result = await self._unsafe(request, route)
        except UpstreamError as error:
            response = error_response(
                error.status,
                error.code,
                str(error),
                cache_status(fwd="uri-miss", detail=error.kind),
            )
            result = "error"
        except RequestRejected as rejected:
            response = rejected.response()
            result = "error"
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception:
            # A bug must not become a traceback for the client nor a poisoned entry.
            log.exception("unexpected error while handling %s %s", request.method, request.path)
            response = error_response(
                500, "PROXY_ERROR", "the proxy failed to handle the request", cache_status()
            )
            result = "error"
        request[RESULT_KEY] = result
        if response.status == 304 and result != "bypass":
            self.metrics.not_modified.inc()  # counted once sent: a held request's 304 may not be
        self.metrics.observe_request(route, result, time.perf_counter() - started)
        return response

    # -- GET and HEAD ------------------------------------------------------------------------

    async def _cacheable(self, request: web.Request, route: str) -> tuple[web.StreamResponse, str]:
        headers = request.headers
        for name in UNHANDLED_PRECONDITIONS:
            if name in headers:
                return await self._forward(request, route, cache_status(fwd="request")), "bypass"
        if request.body_exists:
            return await self._forward(request, route, cache_status(fwd="request")), "bypass"
        facts = self._facts(request, headers.getall("cache-control", ()))
        key = request.raw_path
        record = await self._store_get(key)
        now = self.clock()
        match decide(record, facts, now, self.policy):
            case Fresh(entry, age, ttl, stale):
                status = cache_status(hit=True, ttl=ttl)
                return self._serve(request, entry, age, status, saved=True), (
                    "stale" if stale else "hit"
                )
            case Revalidate(entry, age, fwd, background=True):
                self._revalidate_in_background(route, key, facts, request, entry)
                ttl = freshness_lifetime(entry, self.policy) - age
                status = cache_status(hit=True, ttl=ttl, detail="stale-while-revalidate")
                return self._serve(request, entry, age, status, saved=True), "stale"
            case Revalidate(entry, _age, fwd):
                return await self._fetch_and_serve(request, route, key, facts, entry, fwd)
            case Miss(fwd):
                return await self._fetch_and_serve(request, route, key, facts, None, fwd)
            case Unsatisfiable():
                return (
                    error_response(
                        504,
                        "NOT_CACHED",
                        "only-if-cached was requested and nothing is stored",
                        cache_status(fwd="miss", detail="only-if-cached"),
                    ),
                    "miss",
                )
        raise AssertionError("unreachable")

    def _facts(self, request: web.Request, cache_control: Any) -> RequestFacts:
        headers = request.headers
        scope = credential_scope(
            [headers.get(name) for name in self._credential_headers],
            shared=self._shared_scope,
            secret=self._scope_secret,
        )
        if not self.settings.public_host:
            # The client's Host reaches the origin as X-Forwarded-Host, so it is part of the
            # key: a forged Host can only ever shape its own variant, never another caller's.
            scope = f"{scope}@{request.host.lower()}"
        return request_facts(headers, scope=scope, cache_control=cache_control)

    # -- long polling (RFC 7240 Prefer: wait) ---------------------------------------------------

    async def _long_poll(
        self, request: web.Request, route: str, immediate: web.StreamResponse, result: str
    ) -> tuple[web.StreamResponse, str, float]:
        """Hold a request that would be answered 304 until its response changes, or time out.

        Returns the answer, its result label and the seconds it was held.
        """
        waits = self.waits
        decision = hold_decision(
            requested_wait(request.headers.getall("prefer", ())),
            waiting=waits.waiting,
            max_waiters=self.settings.max_waiters,
            max_wait=0.0 if waits.closing else self.settings.max_wait,
        )
        if isinstance(decision, Shed):
            self.metrics.long_polls.labels("shed").inc()
        if not isinstance(decision, Hold):
            return immediate, result, 0.0
        key = request.raw_path
        # The refresh is the same for every waiter of the flight: no request directives.
        facts = self._facts(request, ())
        record = await self._store_get(key)
        entry = select_variant(record, facts) if record else None
        if entry is None:
            return immediate, result, 0.0
        job = self._job(request, route, key, facts, entry, entry.vary)
        started = time.perf_counter()
        wake = await waits.hold(
            job.flight_key,
            key,
            lambda: self._observe(job),
            request.headers,
            decision.seconds,
            disconnected(request),
        )
        held = time.perf_counter() - started
        response, result = await self._woken(request, route, wake, entry, immediate, result)
        response.headers["Preference-Applied"] = decision.applied
        return response, result, held

    async def _woken(
        self,
        request: web.Request,
        route: str,
        wake: Wake[Fetched],
        entry: StoredResponse,
        immediate: web.StreamResponse,
        result: str,
    ) -> tuple[web.StreamResponse, str]:
        """The answer to a held request once it wakes (``Cache-Status`` says ``waited``)."""
        if wake.error is not None:
            raise wake.error
        if wake.outcome == "disconnected":
            return immediate, result
        if wake.answer is not None:
            status = cache_status(fwd="stale", fwd_status=wake.answer.status, detail="waited")
            label = "error" if wake.answer.status >= 500 else "miss"
            return self._plain(wake.answer, status), label
        if wake.outcome == "changed" and wake.entry is None:
            return await self._cacheable(request, route)
        current = wake.entry or (await self._current(request.raw_path, entry)) or entry
        now = self.clock()
        ttl = freshness_lifetime(current, self.policy) - current_age(current, now)
        status = cache_status(hit=True, ttl=ttl, detail="waited")
        return self._serve_stored(request, current, status), "hit"

    async def _current(self, key: str, entry: StoredResponse) -> StoredResponse | None:
        """The stored variant that replaced ``entry``, if any (same scope and selection)."""
        record = await self._store_get(key) or ()
        for variant in record:
            if variant.scope == entry.scope and variant.selecting == entry.selecting:
                return variant
        return None

    async def _observe(self, job: FetchJob) -> Observation[Fetched]:
        """What a flight's waiters would be served now; revalidates upstream (coalesced, once
        per flight across replicas) when the stored response is no longer fresh."""
        record = await self._store_get(job.key)
        decision = decide(record, job.facts, self.clock(), self.policy)
        if isinstance(decision, Fresh) and not decision.stale:
            return Observation(decision.entry, decision.ttl)
        stale = decision.entry if isinstance(decision, Fresh | Revalidate) else None
        fetch = replace(job, stale=stale)
        task, leader = self.flights.join(job.flight_key, lambda: self._coordinated_fetch(fetch))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            if leader:
                task.add_done_callback(_release_orphan)
            raise
        except UpstreamError:
            if stale is not None and stale_if_error_allows(
                stale, job.facts, self.clock(), self.policy
            ):
                return Observation(stale)  # what a poll would be served: keep waiting
            raise
        if isinstance(outcome, Streamed):
            if leader:
                outcome.response.close()
            return Observation(None)
        if outcome.entry is not None:
            entry = outcome.entry
            ttl = freshness_lifetime(entry, self.policy) - current_age(entry, self.clock())
            return Observation(entry, ttl)
        failed = outcome.status >= 500 or outcome.status == 429
        if (
            failed
            and stale is not None
            and stale_if_error_allows(stale, job.facts, self.clock(), self.policy)
        ):
            return Observation(stale)
        return Observation(None, answer=outcome, failed=failed)

    def _flight_key(self, key: str, facts: RequestFacts, vary: tuple[str, ...]) -> str:
        """Requests share a fetch only within one scope and one ``Vary`` selection."""
        return f"{facts.scope}\x00{key}\x00{selecting_values(vary, facts.headers)!r}"

    async def _fetch_and_serve(
        self,
        request: web.Request,
        route: str,
        key: str,
        facts: RequestFacts,
        stale: StoredResponse | None,
        fwd: str,
        vary: tuple[str, ...] = (),
    ) -> tuple[web.StreamResponse, str]:
        job = self._job(request, route, key, facts, stale, stale.vary if stale else vary)
        task, leader = self.flights.join(job.flight_key, lambda: self._coordinated_fetch(job))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            if leader:
                task.add_done_callback(_release_orphan)
            raise
        except UpstreamError as error:
            if stale is not None and stale_if_error_allows(stale, facts, self.clock(), self.policy):
                status = cache_status(fwd=fwd, detail=error.kind)
                return self._serve_stored(request, stale, status), "stale"
            raise
        collapsed = not leader or (isinstance(outcome, Fetched) and outcome.collapsed)
        if collapsed:
            self.metrics.coalesced.inc()
        failed = isinstance(outcome, Fetched) and (outcome.status >= 500 or outcome.status == 429)
        failed = failed or (
            isinstance(outcome, Streamed)
            and (outcome.response.status >= 500 or outcome.response.status == 429)
        )
        if (
            failed
            and stale is not None
            and stale_if_error_allows(stale, facts, self.clock(), self.policy)
        ):
            if isinstance(outcome, Streamed) and leader:
                outcome.response.release()
            fwd_status = outcome.status if isinstance(outcome, Fetched) else outcome.response.status
            status = cache_status(fwd=fwd, fwd_status=fwd_status, collapsed=not leader)
            return self._serve_stored(request, stale, status), "stale"
        if isinstance(outcome, Streamed):
            if not leader:
                response = await self._forward(request, route, cache_status(fwd=fwd))
                return response, "miss"
            return await self._stream(request, outcome, cache_status(fwd=fwd)), "miss"
        if outcome.entry is not None:
            entry = outcome.entry
            if entry.vary and selecting_values(entry.vary, facts.headers) != entry.selecting:
                # Collapsed onto a fetch for another variant: fetch our own (once).
                if vary:
                    response = await self._forward(request, route, cache_status(fwd="vary-miss"))
                    return response, "miss"
                return await self._fetch_and_serve(
                    request, route, key, facts, None, "vary-miss", entry.vary
                )
            status = cache_status(
                fwd=fwd,
                fwd_status=304 if outcome.revalidated else outcome.status,
                stored=outcome.stored,
                collapsed=collapsed,
            )
            age = max(0.0, self.clock() - entry.response_time) + entry.corrected_initial_age
            result = "revalidated" if outcome.revalidated else "miss"
            return self._serve(request, entry, age, status, saved=outcome.revalidated), result
        status = cache_status(fwd=fwd, fwd_status=outcome.status, collapsed=not leader)
        return self._plain(outcome, status), "error" if failed else "miss"

    def _revalidate_in_background(
        self,
        route: str,
        key: str,
        facts: RequestFacts,
        request: web.Request,
        entry: StoredResponse,
    ) -> None:
        """RFC 5861 stale-while-revalidate: refresh the entry without making the caller wait."""
        job = self._job(request, route, key, facts, entry, entry.vary)
        task, leader = self.flights.join(job.flight_key, lambda: self._coordinated_fetch(job))
        if leader:
            task.add_done_callback(_release_orphan)

    def _job(
        self,
        request: web.Request,
        route: str,
        key: str,
        facts: RequestFacts,
        stale: StoredResponse | None,
        vary: tuple[str, ...],
    ) -> FetchJob:
        forwarded = tuple(self._upstream_headers(request, strip_validators=True))
        return FetchJob(route, key, self._flight_key(key, facts, vary), facts, forwarded, stale)

    async def _coordinated_fetch(self, job: FetchJob) -> Outcome:
        """``_fetch`` once across replicas: when another replica is already fetching this
        flight, wait for it and take what it stored instead of asking the upstream again.
        """
        if self.coordinator is None or job.flight_key in self._backoff:
            return await self._fetch(job)
        async with self.coordinator.claim(job.flight_key) as claim:
            if claim.notice is not None:
                shared = await self._shared_outcome(job.key, job.facts, claim.notice)
                if shared is not None:
                    return shared
            else:
                # The decision to fetch was taken on this replica's copy; another replica may
                # have stored a fresher response and released the lock since then.
                stored = await self._stored_since(job.key, job.facts, job.stale)
                if stored is not None and stored.entry is not None:
                    claim.announce(stored.entry.response_time, revalidated=stored.revalidated)
                    return stored
            outcome = await self._fetch(job)
            if isinstance(outcome, Fetched) and outcome.stored and outcome.entry is not None:
                claim.announce(outcome.entry.response_time, revalidated=outcome.revalidated)
            return outcome

    async def _stored_since(
        self, key: str, facts: RequestFacts, stale: StoredResponse | None
    ) -> Fetched | None:
        """A fresh response for this request in the shared store, newer than ``stale``."""
        if not isinstance(self.store, SharedStore):
            return None
        record = await self.store.get_shared(key)
        entry = select_variant(record, facts) if record else None
        if entry is None or (stale is not None and entry.response_time <= stale.response_time):
            return None
        decision = decide((entry,), facts, self.clock(), self.policy)
        if not isinstance(decision, Fresh) or decision.stale:
            return None
        return _collapsed(entry, revalidated=stale is not None)

    async def _shared_outcome(
        self, key: str, facts: RequestFacts, notice: Notice
    ) -> Fetched | None:
        """The response another replica stored for this flight, if it (or a newer one) is there."""
        if notice.response_time is None:
            return None
        record = await self._store_get(key)
        entry = select_variant(record, facts) if record else None
        if entry is None or entry.response_time < notice.response_time:
            return None
        return _collapsed(entry, revalidated=notice.revalidated)

    async def _fetch(self, job: FetchJob) -> Outcome:
        """One upstream fetch for everyone waiting on the job's flight; stores what it may."""
        route, key, flight_key, facts, stale = (
            job.route,
            job.key,
            job.flight_key,
            job.facts,
            job.stale,
        )
        backoff = self._backoff.get(flight_key)
        if backoff is not None:
            until, answer = backoff
            retry = str(max(1, int(until - self.clock() + 0.999)))
            kept = tuple((k, v) for k, v in answer.headers if k.lower() != "retry-after")
            return Fetched(
                answer.status, answer.reason, (*kept, ("Retry-After", retry)), answer.body
            )
        headers = list(job.forwarded)
        if stale is not None:
            headers.extend(conditional_headers(stale).items())
        request_time = self.clock()
        response = await self._send(route, "GET", key, headers, None)
        response_time = self.clock()
        received = (*end_to_end(response.headers.items()), ("Via", self.via))
        status = response.status
        if status == 304 and stale is not None:
            response.release()
            if not validator_matches(stale, received) or header_value(received, "set-cookie"):
                # A 304 carrying Set-Cookie would put one caller's cookie into the shared
                # entry: fetch the full response instead, which is then not stored (§3.5).
                return await self._fetch(replace(job, stale=None))
            entry = freshen(stale, received, request_time, response_time)
            stored = await self._save(key, entry, facts)
            return Fetched(
                entry.status, entry.reason, entry.headers, entry.body, entry, stored, True
            )
        if status in (429, 503):
            self._note_backoff(flight_key, response, received)
        can_store = not facts.cache_control.no_store and storable(
            status,
            received,
            facts,
            has_authorization="authorization" in facts.headers,
            targeted=True,
        )
        if can_store:
            limit = self.settings.max_entry_bytes
        elif status >= 500 or status == 429:
            limit = ERROR_BODY_LIMIT
        else:
            return Streamed(response, received)
        length = response.content_length
        if length is not None and length > limit:
            return Streamed(response, received)
        body = await self.upstream.read_body(response, limit)
        self.metrics.upstream_bytes.inc(len(body))
        if len(body) > limit:
            return Streamed(response, received, body)
        response.release()
        if not can_store:
            if status in (429, 503):
                self._note_backoff(flight_key, response, received, body)
            return Fetched(status, response.reason or "", received, body)
        entry = StoredResponse(
            status=status,
            reason=response.reason or "",
            headers=with_date(stored_headers(received, _cache_control_of(received)), response_time),
            body=body,
            request_time=request_time,
            response_time=response_time,
            scope=facts.scope,
            selecting=(),
            targeted=True,
        )
        if entry.vary:
            entry = replace(entry, selecting=selecting_values(entry.vary, facts.headers))
        stored = await self._save(key, entry, facts)
        return Fetched(status, entry.reason, entry.headers, body, entry, stored)

    def _note_backoff(
        self,
        flight_key: str,
        response: aiohttp.ClientResponse,
        received: Headers,
        body: bytes = b"",
    ) -> None:
        """Honour ``Retry-After`` on 429/503: no request for this key goes upstream meanwhile.

        Noted once on the head (so a streamed answer counts too), again with the error body
        once read, so callers inside the window get the origin's envelope, not an empty body.
        """
        now = self.clock()
        delay = parse_retry_after(response.headers.get("Retry-After"), now)
        if delay is None or delay <= 0:
            return
        delay = min(delay, 3600.0)
        placeholder = Fetched(response.status, response.reason or "", received, body)
        self._backoff[flight_key] = (now + delay, placeholder)

    async def _send(
        self,
        route: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Any,
    ) -> aiohttp.ClientResponse:
        started = time.perf_counter()
        try:
            response = await self.upstream.fetch(method, target, headers, body)
        except UpstreamError as error:
            self.metrics.upstream_requests.labels(route, "error").inc()
            self.metrics.upstream_errors.labels(route, error.kind).inc()
            raise
        self.metrics.upstream_duration.labels(route).observe(time.perf_counter() - started)
        self.metrics.upstream_requests.labels(route, status_class(response.status)).inc()
        if response.status >= 500 or response.status == 429:
            kind = "429" if response.status == 429 else "5xx"
            self.metrics.upstream_errors.labels(route, kind).inc()
        return response

    # -- store access ------------------------------------------------------------------------

    async def _store_get(self, key: str) -> tuple[StoredResponse, ...] | None:
        try:
            return await self.store.get(key)
        except StoreError:
            self.metrics.store_errors.labels(self.store.backend).inc()
            return None

    async def _save(self, key: str, entry: StoredResponse, facts: RequestFacts) -> bool:
        """Put a response into its URI's record, replacing the variant it supersedes (§4.1)."""
        now = self.clock()
        if retention(entry, now, self.policy) <= 0:
            return False
        invalidated_at = self._invalidated.get(key)
        if invalidated_at is not None and invalidated_at >= entry.request_time:
            return False
        record = await self._store_get(key) or ()
        others = tuple(
            variant
            for variant in record
            if not (variant.scope == entry.scope and variant.selecting == entry.selecting)
            and retention(variant, now, self.policy) > 0
        )
        updated = (entry, *others[: MAX_VARIANTS - 1])
        ttl = max(retention(variant, now, self.policy) for variant in updated)
        try:
            await self.store.set(key, updated, ttl)
        except StoreError:
            self.metrics.store_errors.labels(self.store.backend).inc()
            return False
        self.waits.changed(key)
        return True

    async def invalidate(self, keys: list[str]) -> None:
        now = self.clock()
        for key in keys:
            self._invalidated[key] = now
            try:
                await self.store.delete(key)
            except StoreError:
                self.metrics.store_errors.labels(self.store.backend).inc()
            self.waits.changed(key)

    async def purge(self, key: str) -> tuple[bool, bool]:
        """Forget ``key`` on an operator's request: (whether it was stored, whether every tier
        of the store confirmed). Like any invalidation, a fetch already in flight cannot
        store its answer afterwards."""
        existed = await self._store_get(key) is not None
        self._invalidated[key] = self.clock()
        try:
            await self.store.delete(key)
            confirmed = await self.store.ready()
        except StoreError:
            self.metrics.store_errors.labels(self.store.backend).inc()
            confirmed = False
        self.waits.changed(key)
        return existed, confirmed

    # -- responses ---------------------------------------------------------------------------

    def _serve(
        self,
        request: web.Request,
        entry: StoredResponse,
        age: float,
        status_header: str,
        *,
        saved: bool,
    ) -> web.Response:
        """Answer from a stored response, locally with 304 when the client's validator matches."""
        if 200 <= entry.status < 300 and not_modified(entry, request.headers):
            headers = CIMultiDict(not_modified_headers(entry))
            headers["Age"] = str(int(age))
            headers["Cache-Status"] = status_header
            return web.Response(status=304, headers=headers)
        size = len(entry.body)
        if request.method != "HEAD":
            self.metrics.response_bytes.inc(size)
            if saved:
                self.metrics.bytes_saved.inc(size)
        return web.Response(
            status=entry.status,
            reason=entry.reason,
            headers=(*entry.served, ("Age", str(int(age))), ("Cache-Status", status_header)),
            body=entry.body,
        )

    def _serve_stored(
        self, request: web.Request, entry: StoredResponse, status_header: str
    ) -> web.Response:
        now = self.clock()
        age = entry.corrected_initial_age + max(0.0, now - entry.response_time)
        return self._serve(request, entry, age, status_header, saved=True)

    def _plain(self, outcome: Fetched, status_header: str) -> web.Response:
        headers = CIMultiDict((k, v) for k, v in outcome.headers if k.lower() not in NOT_SERVED)
        headers["Cache-Status"] = status_header
        self.metrics.response_bytes.inc(len(outcome.body))
        return web.Response(
            status=outcome.status, reason=outcome.reason, headers=headers, body=outcome.body
        )

    async def _stream(
        self, request: web.Request, outcome: Streamed, status_header: str
    ) -> web.StreamResponse:
        """Relay an upstream response chunk by chunk, holding at most one chunk in memory."""
        upstream = outcome.response
        headers = CIMultiDict(
            (k, v) for k, v in outcome.headers if k.lower() not in ("cache-status",)
        )
        headers["Cache-Status"] = status_header
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        try:
            await response.prepare(request)
            if request.method == "HEAD" or upstream.status in (204, 304):
                upstream.close()
                await response.write_eof()
                return response
            if outcome.prefix:
                await response.write(outcome.prefix)
                self.metrics.response_bytes.inc(len(outcome.prefix))
            async for chunk in upstream.content.iter_chunked(CHUNK):
                self.metrics.upstream_bytes.inc(len(chunk))
                await response.write(chunk)
                self.metrics.response_bytes.inc(len(chunk))
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError) as error:
            # The head is already sent: the only honest signal left is to cut the connection.
            log.warning("upstream body failed mid-stream: %s", translate_error(error))
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            upstream.close()
        finally:
            upstream.release()
        return response

    def _upstream_headers(
        self, request: web.Request, *, strip_validators: bool
    ) -> list[tuple[str, str]]:
        """The request's end-to-end fields for the origin, with Via and X-Forwarded-* (§7.6.3)."""
        drop = {"host", "via", "x-forwarded-for"} | UNTRUSTED_REQUEST_FIELDS
        if strip_validators:
            drop |= CLIENT_VALIDATORS
        forwarded = [
            (k, v) for k, v in end_to_end(request.headers.items()) if k.lower() not in drop
        ]
        peer = request.remote or "unknown"
        prior_for = request.headers.get("X-Forwarded-For")
        prior_via = request.headers.get("Via")
        version = f"{request.version.major}.{request.version.minor}"
        forwarded += [
            ("X-Forwarded-For", f"{prior_for}, {peer}" if prior_for else peer),
            ("X-Forwarded-Proto", request.scheme),
            ("X-Forwarded-Host", self.settings.public_host or request.host),
            (
                "Via",
                f"{prior_via}, {version} {CACHE_NAME}" if prior_via else f"{version} {CACHE_NAME}",
            ),
        ]
        return forwarded

    async def _forward(
        self, request: web.Request, route: str, status_header: str
    ) -> web.StreamResponse:
        """Pass a request through uncached, streaming both bodies."""
        response = await self._send_with_body(request, route)
        received = (*end_to_end(response.headers.items()), ("Via", self.via))
        return await self._stream(request, Streamed(response, received), status_header)

    async def _send_with_body(self, request: web.Request, route: str) -> aiohttp.ClientResponse:
        """Forward the request as it is, its body streamed within the client limits."""
        headers = self._upstream_headers(request, strip_validators=False)
        body = None
        if request.body_exists:
            body = RequestBody(
                request.content,
                limit=self.settings.max_body_bytes,
                idle_timeout=self.settings.client_body_timeout,
            )
        try:
            return await self._send(route, request.method, request.raw_path, headers, body)
        except UpstreamError:
            if body is not None and body.rejected is not None:
                raise body.rejected from None
            raise

    async def _unsafe(self, request: web.Request, route: str) -> tuple[web.StreamResponse, str]:
        """§4.4: forward an unsafe method and, on success, invalidate what it touched."""
        response = await self._send_with_body(request, route)
        received = (*end_to_end(response.headers.items()), ("Via", self.via))
        if invalidates(request.method, response.status):
            targets = invalidation_targets(request.raw_path, received, self.upstream.origin_hosts)
            await self.invalidate(targets)
        streamed = Streamed(response, received)
        return await self._stream(request, streamed, cache_status(fwd="method")), "bypass"


def _cache_control_of(headers: Headers) -> CacheControl:
    return parse_cache_control([v for k, v in headers if k.lower() == "cache-control"])


def _collapsed(entry: StoredResponse, *, revalidated: bool) -> Fetched:
    """What another replica stored for this flight, served as if this replica had fetched it."""
    return Fetched(
        entry.status,
        entry.reason,
        entry.headers,
        entry.body,
        entry,
        revalidated=revalidated,
        collapsed=True,
    )


def _release_orphan(task: asyncio.Task[Outcome]) -> None:
    """Close a streamed upstream response whose caller went away before taking it."""
    if task.cancelled() or task.exception() is not None:
        return
    outcome = task.result()
    if isinstance(outcome, Streamed):
        outcome.response.close()
