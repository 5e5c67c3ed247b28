"""Long polls in the request path (RFC 7240 ``Prefer: wait``): hold, then answer once woken.

The one call site is where a stored response would be answered with a local 304: ``may_hold``
says whether the request asks to wait and may, ``hold`` parks it in the ``WaitRoom`` and writes
its answer (the changed response, the upstream's answer for its scope, or 304 when the wait
ran out). ``observe`` is what a flight's refresher does: read the store and, once the stored
response is no longer fresh, revalidate it through the shared fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from proxy.cache.entries import Entries
from proxy.cache.exchange import ProxyRequest, Responder, send_upstream_error
from proxy.cache.fetch import Fetched, Fetcher, FetchJob, release_orphan
from proxy.cache.forward import Forwarder, Streamed
from proxy.cache.serve import StoredServing, Unacceptable
from proxy.cache.wait import Observation, WaitRoom, Wake
from proxy.core.conditional import not_modified
from proxy.core.models import Fresh, Revalidate, Serve, StoredResponse
from proxy.core.policy import (
    CachePolicy,
    cache_status,
    current_age,
    decide,
    freshness_lifetime,
    stale_if_error_allows,
)
from proxy.core.prefer import Hold, Shed, hold_decision, requested_wait
from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics
from proxy.upstream import UpstreamError


@dataclass(frozen=True, slots=True)
class Handled:
    """A GET or HEAD answered: its cache result label and the seconds it spent held (RFC 7240
    ``Prefer: wait``), which its duration metric leaves out: the wait is the client's choice,
    not the time the cache took to answer."""

    result: str
    held: float = 0.0


class LongPolls:
    """Holds requests that would be answered 304 until their response changes."""

    def __init__(
        self,
        settings: Settings,
        entries: Entries,
        fetcher: Fetcher,
        serving: StoredServing,
        forwarder: Forwarder,
        policy: CachePolicy,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.entries = entries
        self.fetcher = fetcher
        self.serving = serving
        self.forwarder = forwarder
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.waits: WaitRoom[Fetched] = WaitRoom(
            on_outcome=lambda outcome: metrics.long_polls.labels(outcome).inc()
        )
        metrics.waiting_requests.set_function(lambda: self.waits.waiting)
        entries.on_change = self.waits.changed

    def may_hold(
        self, request: ProxyRequest, serve: Serve, *, count_shed: bool = True
    ) -> Hold | None:
        """Whether this request, about to be answered 304 from ``serve.entry``, is held.

        ``count_shed=False`` when a refusal is not final (the request then revalidates and
        asks again, counted then).
        """
        if "prefer" not in request.headers:
            return None
        entry = serve.entry
        if not (200 <= entry.status < 300 and not_modified(entry, request.headers) is not None):
            return None
        waits = self.waits
        decision = hold_decision(
            requested_wait(request.headers.getall("prefer", ())),
            waiting=waits.waiting,
            max_waiters=self.settings.max_waiters,
            max_wait=0.0 if waits.closing else self.settings.max_wait,
        )
        if isinstance(decision, Shed):
            if count_shed:
                self.metrics.long_polls.labels("shed").inc()
            return None
        return decision

    async def hold(
        self,
        request: ProxyRequest,
        responder: Responder,
        flight: str,
        job: Callable[[], FetchJob],
        serve: Serve,
        hold: Hold,
        fallback: Callable[[], Awaitable[Handled]],
    ) -> Handled:
        """Hold the request, then answer it; returns the result label and the time held.

        ``job`` makes the flight's refresh; it is called only if this request opens the watch.
        ``fallback`` answers the request the ordinary way, when the wait ends in a response
        this cache cannot serve from the store.
        """
        started = time.perf_counter()
        connection = request.connection
        key = request.target
        made: list[FetchJob] = []

        def observe() -> Awaitable[Observation[Fetched]]:
            if not made:
                made.append(job())
            return self.observe(made[0])

        wake = await self.waits.hold(
            flight,
            key,
            observe,
            request.headers,
            hold.seconds,
            connection.disconnected() if connection is not None else None,
        )
        held = time.perf_counter() - started
        applied = ("Preference-Applied", hold.applied)
        if isinstance(wake.error, UpstreamError):
            send_upstream_error(responder, wake.error)
            return Handled("error", held)
        if wake.error is not None:
            raise wake.error  # a bug: answered (and logged) as any other
        if wake.answer is not None:
            answer = wake.answer
            status = cache_status(fwd="stale", fwd_status=answer.status, detail="waited")
            headers = (*answer.headers, applied)
            self.forwarder.relay(
                responder, answer.status, answer.reason, headers, answer.body, status
            )
            return Handled("error" if answer.status >= 500 else "miss", held)
        if wake.outcome == "changed" and wake.entry is None:
            return _after(held, await fallback())
        entry = wake.entry or await self._current(key, serve.entry) or serve.entry
        try:
            self.serving.serve(request, responder, self._waited(entry), (applied,))
        except Unacceptable:
            # Stored only in a coding this client cannot read.
            return _after(held, await fallback())
        return Handled("hit", held)

    def _waited(self, entry: StoredResponse) -> Serve:
        age = current_age(entry, self.clock())
        ttl = freshness_lifetime(entry, self.policy) - age
        return Serve(entry, age, cache_status(hit=True, ttl=ttl, detail="waited"), "hit")

    async def _current(self, key: str, entry: StoredResponse) -> StoredResponse | None:
        """The stored variant that replaced ``entry``, if any (same scope and selection)."""
        for variant in await self.entries.get(key) or ():
            if variant.scope == entry.scope and variant.selecting == entry.selecting:
                return variant
        return None

    async def observe(self, job: FetchJob) -> Observation[Fetched]:
        """What a flight's waiters would be served now; revalidates upstream (coalesced, once
        per flight across replicas) when the stored response is no longer fresh."""
        record = await self.entries.get(job.key)
        decision = decide(record, job.facts, self.clock(), self.policy)
        if isinstance(decision, Fresh) and not decision.stale:
            return Observation(decision.entry, decision.ttl)
        stale = decision.entry if isinstance(decision, Fresh | Revalidate) else None
        task, leader = self.fetcher.join(replace(job, stale=stale))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            if leader:
                task.add_done_callback(release_orphan)
            raise
        except UpstreamError:
            if stale is not None and self._covers(stale, job):
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
        if failed and stale is not None and self._covers(stale, job):
            return Observation(stale)
        return Observation(None, answer=outcome, failed=failed)

    def _covers(self, stale: StoredResponse, job: FetchJob) -> bool:
        """RFC 5861 stale-if-error or ``--stale-grace``: the stored response stands in."""
        return stale_if_error_allows(stale, job.facts, self.clock(), self.policy)

    def release_all(self) -> None:
        self.waits.release_all()

    async def close(self) -> None:
        await self.waits.close()


def _after(held: float, handled: Handled) -> Handled:
    """The fallback's answer, held for this wait as well as any of its own."""
    return Handled(handled.result, held + handled.held)


__all__ = ["Handled", "LongPolls", "Wake"]
