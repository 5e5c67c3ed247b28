"""The cache's driver: asks the policy for whole decisions and carries them out in one flat loop.

``admit``/``lookup`` decide a request, ``settle`` what a fetch brought for it; each decision is
one ``match`` case (``typing.assert_never`` keeps the cases complete), never a recursion.

The parts each do one job: ``Entries`` reads and writes the store, ``StoredServing`` answers
from it, ``Fetcher`` fetches and stores (coalescing, back-off), ``Forwarder`` forwards and
streams, ``Invalidator`` handles unsafe methods and purges. Requests arrive as ``ProxyRequest``
values and answers leave through a ``Responder``, whatever front carries them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, assert_never

from proxy.cache.bodies import Bodies
from proxy.cache.entries import Entries
from proxy.cache.events import EventStreams, Subscription
from proxy.cache.exchange import (
    ProxyRequest,
    RequestRejected,
    Responder,
    route_of,
    send_error,
    send_rejected,
    send_upstream_error,
)
from proxy.cache.fetch import (
    Fetched,
    Fetcher,
    FetchJob,
    Outcome,
    flight_key,
    outcome_of,
    release_orphan,
)
from proxy.cache.forward import Forwarder, Streamed
from proxy.cache.invalidate import Invalidator
from proxy.cache.longpoll import Handled, LongPoll, LongPolls
from proxy.cache.serve import StoredServing, Unacceptable
from proxy.cache.wait import Observation
from proxy.core.coding import accepts, readable, upstream_accept_encoding
from proxy.core.credentials import credential_lines
from proxy.core.headers import NO_DIRECTIVES
from proxy.core.models import Answer, Fetch, Forward, Refuse, Relay, Serve, Settlement
from proxy.core.policy import (
    CachePolicy,
    RequestFacts,
    admit,
    cache_status,
    credential_scope,
    lookup,
    request_facts,
    settle,
    settle_error,
)
from proxy.core.prefer import Hold
from proxy.ops.config import Settings, from_attributes
from proxy.ops.metrics import Metrics
from proxy.stores.base import Store
from proxy.stores.coordination import Coordinator
from proxy.upstream import Upstream, UpstreamError

log = logging.getLogger("proxy")
#: The most an unstored answer (an error body, at most 64 KiB as read) is decoded to.
RELAY_DECODE_LIMIT = 1024 * 1024


class _Asked(NamedTuple):
    """One request a long poll is about: what ``_watched`` and ``_long_poll`` work on."""

    request: ProxyRequest
    responder: Responder
    route: str
    facts: RequestFacts


@dataclass(eq=False, repr=False)
class CachingProxy:
    """Carries out the policy's decisions: serve, revalidate, fetch, stream, invalidate."""

    settings: Settings
    store: Store
    upstream: Upstream
    metrics: Metrics
    clock: Callable[[], float]
    coordinator: Coordinator | None = None

    def __post_init__(self) -> None:
        settings, store, upstream = self.settings, self.store, self.upstream
        metrics, clock, coordinator = self.metrics, self.clock, self.coordinator
        self.policy = from_attributes(CachePolicy, settings)
        self._credential_headers = settings.credential_headers
        self._scope_secret = settings.scope_secret.encode()
        self.entries = Entries(store, metrics, clock, self.policy, settings.upstream_timeout)
        self.forwarder = Forwarder(settings, upstream, metrics)
        self.fetcher = Fetcher(
            settings, self.entries, self.forwarder, clock, self.policy, coordinator
        )
        self.bodies = Bodies(settings.decoded_bodies_bytes, settings.max_entry_bytes)
        self.serving = StoredServing(metrics, self.bodies)
        self.upstream_accept_encoding = upstream_accept_encoding()
        self.invalidator = Invalidator(self.entries, self.forwarder)
        self.long_polls = LongPolls(
            settings,
            self.entries,
            self.fetcher,
            self.serving,
            self.forwarder,
            self.policy,
            clock,
            metrics,
        )
        self.waits = self.long_polls.waits
        self.events = EventStreams(settings, self.waits, metrics)
        self.flights = self.fetcher.flights

    def release_waiters(self) -> None:
        """Draining: answer every held long poll now (304) and hold no new ones."""
        self.waits.release_all()

    async def close(self) -> None:
        """Answer the held long polls, then cancel the upstream fetches still in flight."""
        await self.waits.close()
        await self.flights.cancel_all()

    async def purge(self, key: str) -> tuple[bool, bool]:
        return await self.invalidator.purge(key)

    async def invalidate(self, keys: list[str]) -> None:
        await self.entries.invalidate(keys)

    async def handle(self, request: ProxyRequest, responder: Responder) -> str:
        """Answer one request through ``responder``; returns the cache result label."""
        started = time.perf_counter()
        route = route_of(request.path)
        try:
            subscription = EventStreams.subscription(request, route)
            if subscription is not None:
                # Accept: text/event-stream: the GET of the JSON, then its changes as events.
                handled = await self._cacheable(
                    subscription.request, responder, route, subscription
                )
            elif request.method in ("GET", "HEAD"):
                handled = await self._cacheable(request, responder, route)
            else:
                handled = Handled(await self.invalidator.unsafe(request, responder, route))
        except UpstreamError as error:
            send_upstream_error(responder, error)
            handled = Handled("error")
        except RequestRejected as rejected:
            send_rejected(responder, rejected)
            handled = Handled("error")
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not become a traceback for the client nor a poisoned entry.
            log.exception("unexpected error while handling %s %s", request.method, request.path)
            message = "the proxy failed to handle the request"
            send_error(responder, 500, "PROXY_ERROR", message, cache_status())
            handled = Handled("error")
        if handled.deferred:
            return handled.result  # a parked long poll: observed once it is answered
        # A long poll's wait is the client's choice, not the time it took to answer.
        elapsed = time.perf_counter() - started - handled.held
        self.metrics.observe_request(route, handled.result, elapsed)
        return handled.result

    def facts(self, request: ProxyRequest) -> RequestFacts:
        """The request as the policy sees it, within its credential scope."""
        headers = request.headers
        scope = credential_scope(
            credential_lines(headers, self._credential_headers),
            shared=self.settings.shared_scope,
            secret=self._scope_secret,
        )
        if self.settings.host_keyed:
            # The client's Host reaches the origin as X-Forwarded-Host, so it is part of the
            # key: a forged Host can only ever shape its own variant, never another caller's.
            scope = f"{scope}@{request.host.lower()}"
        return request_facts(
            headers,
            scope=scope,
            cache_control=headers.getall("cache-control", ()),
            prefer=headers.getall("prefer", ()),
        )

    async def _cacheable(
        self,
        request: ProxyRequest,
        responder: Responder,
        route: str,
        subscription: Subscription | None = None,
    ) -> Handled:
        """A GET or HEAD: a flat loop over the policy's whole decisions until one answers.

        ``admit`` and ``lookup`` give the first decision; a ``Fetch`` is settled into the next
        one (``settle``), which may be another ``Fetch`` (a variant of its own) but answers the
        request on the round after that at the latest. A ``subscription`` (server-sent events)
        turns a ``Serve`` of a successful representation into an event stream.
        """
        decision: Serve | Fetch | Forward | Refuse | Relay
        facts: RequestFacts | None = None
        bypass = admit(request.headers, has_body=request.body is not None)
        if bypass is not None:
            decision = bypass
        else:
            facts = self.facts(request)
            record = await self.entries.get(request.target)
            decision = lookup(record, facts, self.clock(), self.policy)
        outcome: Outcome | None = None
        failed = False
        while True:
            match decision:
                case Fetch():
                    assert facts is not None, "a fetch is only decided after the store was read"
                    if decision.long_poll is not None and subscription is None:
                        asked = _Asked(request, responder, route, facts)
                        handled = await self._watched(asked, decision.long_poll)
                        if handled is not None:
                            return handled
                    decision, outcome = await self._fetch(request, route, facts, decision)
                    failed = outcome is None
                case Serve():
                    if facts is not None and decision.refresh:
                        self._refresh(request, route, facts, decision)
                    streams = subscription is not None and EventStreams.streams(decision)
                    if subscription is not None and facts is not None and streams:
                        flight, observe = self._watch(request, route, facts, decision)
                        return await self.events.stream(
                            subscription, responder, flight, observe, decision
                        )
                    # A stale response standing in for an upstream error is answered at once:
                    # the origin just failed, and a wait would only ask it again.
                    hold = None if failed else self.long_polls.may_hold(request, decision)
                    if facts is not None and hold is not None:
                        asked = _Asked(request, responder, route, facts)
                        return await self._long_poll(asked, decision, hold)
                    return Handled(await self._serve(request, responder, route, decision))
                case Forward(cache_status=status, result=result):
                    await self.forwarder.forward(request, responder, route, status)
                    return Handled(result)
                case Refuse(status, code, message, cache_status=status_header, result=result):
                    send_error(responder, status, code, message, status_header)
                    return Handled(result)
                case Relay():
                    assert outcome is not None, "a relay is only decided on a fetch's outcome"
                    return Handled(await self._relay(request, responder, route, outcome, decision))
                case _:
                    assert_never(decision)

    async def _serve(
        self, request: ProxyRequest, responder: Responder, route: str, decision: Serve
    ) -> str:
        try:
            self.serving.serve(request, responder, decision)
        except Unacceptable:
            # Stored only in a coding this client cannot read and may not be transformed
            # (no-transform, RFC 9110 §7.7): ask the origin in the client's own terms.
            status = cache_status(fwd="vary-miss", detail="content-coding")
            await self.forwarder.forward(request, responder, route, status)
            return "miss"
        return decision.result

    async def _watched(self, asked: _Asked, serve: Serve) -> Handled | None:
        """A long poll answered from its flight's watch instead of a revalidation of its own
        (``Fetch.long_poll``): held if it can be, served at once if its flight is watched
        (the watch keeps revalidating it), else ``None``: it revalidates as usual."""
        request, responder, route, facts = asked
        hold = self.long_polls.may_hold(request, serve, count_shed=False)
        if hold is not None:
            return await self._long_poll(asked, serve, hold)
        if self.waits.watching(flight_key(request.target, facts, serve.entry.selection_vary)):
            return Handled(await self._serve(request, responder, route, serve))
        return None

    async def _long_poll(self, asked: _Asked, serve: Serve, hold: Hold) -> Handled:
        """RFC 7240 ``Prefer: wait``: instead of a 304 now, the change or a 304 later."""
        request, responder, route, facts = asked
        flight, job = self._flight(request, route, facts, serve)
        opener = None if self.waits.watching(flight) else job  # kept only to open the watch
        defer = getattr(responder, "defer", None)
        finish = defer() if defer is not None else None
        # ``_cacheable`` is the fallback: the response became one this cache cannot serve
        # from the store (too large), so the request is asked as usual.
        poll = LongPoll(request, responder, flight, opener, serve, hold, route, self._cacheable)
        if finish is None:
            return await self.long_polls.hold(poll)
        self.long_polls.park(poll, finish)
        return Handled("held", deferred=True)

    def _flight(
        self, request: ProxyRequest, route: str, facts: RequestFacts, serve: Serve
    ) -> tuple[str, Callable[[], FetchJob]]:
        """The flight a held request or an event stream waits on, and the refresh job its
        watch makes if this request opens it."""
        # The refresh is the same for every waiter of the flight: no request directives.
        plain = replace(facts, cache_control=NO_DIRECTIVES, pragma_no_cache=False)
        flight = flight_key(request.target, plain, serve.entry.selection_vary)

        def job() -> FetchJob:
            """Built only when this request opens its flight's watch (the upstream fields)."""
            return self._job(request, route, plain, Fetch(serve.entry, "stale"))

        return flight, job

    def _watch(
        self, request: ProxyRequest, route: str, facts: RequestFacts, serve: Serve
    ) -> tuple[str, Callable[[], Awaitable[Observation[Fetched]]]]:
        """An event stream's flight and its observation (made once, on first use)."""
        flight, job = self._flight(request, route, facts, serve)
        made: list[FetchJob] = []

        def observe() -> Awaitable[Observation[Fetched]]:
            if not made:
                made.append(job())
            return self.long_polls.observe(made[0])

        return flight, observe

    def _job(
        self, request: ProxyRequest, route: str, facts: RequestFacts, fetch: Fetch
    ) -> FetchJob:
        vary = fetch.stale.selection_vary if fetch.stale is not None else fetch.vary
        # One stored response serves every coding: ask the origin in the cache's codings, the
        # same for every caller sharing the fetch, whatever each client spelled.
        forwarded = tuple(
            (name, value)
            for name, value in self.forwarder.upstream_headers(request, strip_validators=True)
            if name.lower() != "accept-encoding"
        )
        if self.upstream_accept_encoding:
            forwarded += (("Accept-Encoding", self.upstream_accept_encoding),)
        key = request.target
        return FetchJob(route, key, flight_key(key, facts, vary), facts, forwarded, fetch.stale)

    def _refresh(
        self, request: ProxyRequest, route: str, facts: RequestFacts, serve: Serve
    ) -> None:
        """RFC 5861 stale-while-revalidate: refresh the entry without making the caller wait."""
        task, leader = self.fetcher.join(self._job(request, route, facts, Fetch(serve.entry, "")))
        if leader:
            task.add_done_callback(release_orphan)

    async def _fetch(
        self, request: ProxyRequest, route: str, facts: RequestFacts, fetch: Fetch
    ) -> tuple[Settlement, Outcome | None]:
        """Join the fetch's flight and settle what it brought for this caller (``settle``).

        A range request of a flight whose 200 was just streamed, not stored, goes to the origin
        with its ``Range`` at once (``Fetcher.range_pass``), not through a whole-body fetch.
        """
        job = self._job(request, route, facts, fetch)
        if "range" in request.headers and self.fetcher.range_pass(job.flight_key):
            return Forward(cache_status(fwd=fetch.fwd, detail="range-pass"), "miss"), None
        task, leader = self.fetcher.join(job)
        try:
            outcome = await outcome_of(task, leader)
        except UpstreamError as error:
            served = settle_error(fetch, facts, error.kind, self.clock(), self.policy)
            if served is None:
                raise
            return served, None
        answer = _answer(outcome, leader)
        if answer.collapsed:
            self.metrics.coalesced.inc()
        settlement = settle(fetch, answer, facts, self.clock(), self.policy)
        if not isinstance(settlement, Relay) and isinstance(outcome, Streamed) and leader:
            outcome.response.release()
        return settlement, outcome

    async def _relay(
        self,
        request: ProxyRequest,
        responder: Responder,
        route: str,
        outcome: Outcome,
        relay: Relay,
    ) -> str:
        """Send a fetched answer that is not served from the store, in a coding the client reads."""
        accept = request.headers.get("accept-encoding")
        if isinstance(outcome, Streamed):
            coding = [v for k, v in outcome.headers if k.lower() == "content-encoding"]
            if not accepts(coding, accept):
                # Asked in the cache's codings, answered unstored in one this client cannot
                # read: ask again in the client's own terms.
                outcome.response.release()
                await self.forwarder.forward(request, responder, route, relay.cache_status)
                return relay.result
            await self.forwarder.stream(request, responder, outcome, relay.cache_status)
        else:
            headers, body = readable(outcome.headers, outcome.body, accept, RELAY_DECODE_LIMIT)
            self.forwarder.relay(
                responder,
                outcome.status,
                outcome.reason,
                headers,
                body,
                relay.cache_status,
            )
        return relay.result


def _answer(outcome: Outcome, leader: bool) -> Answer:
    """What the policy needs to know of a fetch's outcome."""
    if isinstance(outcome, Fetched):
        return Answer(
            outcome.status,
            outcome.entry,
            outcome.stored,
            outcome.revalidated,
            streamed=False,
            led=leader,
            collapsed=not leader or outcome.collapsed,
            shareable=outcome.shareable,
        )
    return Answer(outcome.response.status, None, False, False, True, leader, not leader)
