"""Long polls in the request path (RFC 7240 ``Prefer: wait``): hold, then answer once woken.

The one call site is where a stored response would be answered with a local 304: ``may_hold``
says whether the request asks to wait and may, ``hold`` parks it in the ``WaitRoom`` and writes
its answer (the changed response, the upstream's answer for its scope, or 304 when the wait
ran out). ``observe`` is what a flight's refresher does: read the store and, once the stored
response is no longer fresh, revalidate it through the shared fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import cast

from proxy.cache.entries import Entries
from proxy.cache.exchange import (
    Deferring,
    Fields,
    ProxyRequest,
    Responder,
    SharedAnswer,
    send_error,
    send_upstream_error,
)
from proxy.cache.fetch import Fetched, Fetcher, FetchJob, outcome_of
from proxy.cache.forward import Forwarder, Streamed
from proxy.cache.serve import StoredServing, Unacceptable
from proxy.cache.wait import (
    DISCONNECTED,
    Many,
    Observation,
    Waiter,
    WaitRoom,
    Wake,
    interned,
    notify_alone,
    still_matches,
    validators_of,
)
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
from proxy.ops.limits import max_waiters
from proxy.ops.metrics import Metrics
from proxy.upstream import UpstreamError

log = logging.getLogger("proxy")


#: What an answer to a change depends on besides the stored response (``LongPolls._kind``).
Kind = tuple[object, ...]

#: The ordinary way to answer a request (``CachingProxy._cacheable``), for a wait that ends in
#: a response the store cannot answer.
Fallback = Callable[[ProxyRequest, Responder, str], Awaitable["Handled"]]


@dataclass(frozen=True, slots=True)
class Handled:
    """A GET or HEAD answered: its cache result label and the seconds it spent held (RFC 7240
    ``Prefer: wait``), which its duration metric leaves out: the wait is the client's choice,
    not the time the cache took to answer."""

    result: str
    held: float = 0.0
    #: Parked (``LongPolls.park``): answered later, its duration observed then.
    deferred: bool = False


@dataclass(slots=True)
class LongPoll:
    """One request to hold: what ``LongPolls.hold`` and ``park`` are asked with.

    ``job`` makes the flight's refresh, needed only if this request opens the watch
    (``WaitRoom.watching``). ``fallback`` answers the request the ordinary way, when the wait
    ends in a response this cache cannot serve from the store.
    """

    request: ProxyRequest
    responder: Responder
    flight: str
    job: Callable[[], FetchJob] | None
    serve: Serve
    hold: Hold
    route: str
    fallback: Fallback


@dataclass(eq=False)
class LongPolls:
    """Holds requests that would be answered 304 until their response changes."""

    settings: Settings
    entries: Entries
    fetcher: Fetcher
    serving: StoredServing
    forwarder: Forwarder
    policy: CachePolicy
    clock: Callable[[], float]
    metrics: Metrics
    #: ``--max-waiters``, or the connection cap the descriptor limit allows (``limits``).
    max_waiters: int = field(init=False)
    waits: WaitRoom[Fetched] = field(init=False)
    # The answer to the waiters one change woke, by kind of request (``_prepared``).
    _shared: dict[Kind, SharedAnswer] = field(init=False, default_factory=dict)
    _shared_entry: StoredResponse | None = field(init=False, default=None)
    _shared_second: int = field(init=False, default=0)
    # Kinds as held requests share them (``Held.kind``), so a wake groups by identity.
    _kinds: dict[Kind, Kind] = field(init=False, default_factory=dict)
    _many: Many = field(init=False)

    def __post_init__(self) -> None:
        self.max_waiters = max_waiters(self.settings)
        self.waits = WaitRoom(on_outcome=self.metrics.count_long_poll)
        self._many = self._wake_many  # one bound method for every waiter to keep
        self.metrics.waiting_requests.set_function(lambda: self.waits.waiting)
        self.entries.on_change = self.waits.changed

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
            max_waiters=self.max_waiters,
            max_wait=0.0 if waits.closing else self.settings.max_wait,
        )
        if isinstance(decision, Shed):
            if count_shed:
                self.metrics.count_long_poll("shed")
            return None
        return decision

    async def hold(self, poll: LongPoll) -> Handled:
        """Hold the request, then answer it; returns the result label and the time held
        (``park``, awaited: for a responder that cannot defer its answer)."""
        future: asyncio.Future[Handled] = asyncio.get_running_loop().create_future()
        waiter = self.park(poll, future)
        try:
            return await future
        except asyncio.CancelledError:
            self.waits.settle(waiter, DISCONNECTED)
            raise

    def park(self, poll: LongPoll, done: Callable[[str], None] | asyncio.Future[Handled]) -> Waiter:
        """Hold the request without a task; once it ends its answer is written and ``done``
        called with the result label (its duration observed, the wait left out), or, a
        future, set to the ``Handled``."""
        request = poll.request
        connection = request.connection
        observe = None
        if poll.job is not None:
            made = poll.job

            def observe() -> Awaitable[Observation[Fetched]]:
                return self.observe(made())

        held = Held(self, poll, done, self._kind(poll, done))
        return self.waits.park(
            poll.flight,
            request.target,
            observe,
            request.headers,
            poll.hold.seconds,
            connection.disconnected() if connection is not None else None,
            held,
            many=self._many,
        )

    def _kind(
        self, poll: LongPoll, done: Callable[[str], None] | asyncio.Future[Handled]
    ) -> Kind | None:
        """What a change's answer to this request depends on besides the stored response
        (``StoredServing.serve`` and the front's framing read nothing else of it): requests of
        one kind woken by one change get the same bytes, made once (``_wake_many``). ``None``:
        answered on its own (a range, a responder that cannot share an answer, an awaited
        hold). The credential scope and the ``Vary`` selection are the flight's: one kind
        never spans two flights, and the answer is made from the entry the change stored."""
        request, responder = poll.request, poll.responder
        headers = request.headers
        if (
            isinstance(done, asyncio.Future)
            or getattr(responder, "send_shared_all", None) is None
            or "range" in headers
        ):
            return None
        kind = (
            type(responder),
            request.method,
            poll.route,
            validators_of(headers),
            tuple(headers.getall("accept-encoding", ())),
            tuple(headers.getall("cache-control", ())),
            (("Preference-Applied", poll.hold.applied),),
        )
        return interned(self._kinds, kind)

    def _wake_many(
        self, notifies: list[Callable[[Wake[Fetched]], None]], wake: Wake[Fetched]
    ) -> None:
        """The waiters one wake ended (``WaitRoom.settle_many``): on a change, those of one
        kind share one answer, written to each in one loop (``_write_group``); any other end
        of a wait, and a request of no kind, is answered on its own (``Held.wake``)."""
        entry = wake.entry
        if wake.outcome != "changed" or entry is None:
            for notify in notifies:
                notify_alone(notify, wake)
            return
        groups: dict[int, list[Held]] = {}
        for notify in notifies:
            held = cast(Held, notify)
            kind = held.kind
            if kind is None:
                notify_alone(held, wake)
                continue
            group = groups.get(id(kind))  # kinds are shared (``_kind``): alive while held
            if group is None:
                group = groups[id(kind)] = []
            group.append(held)
        # Every group's answers first, then the end of each request (access line, keep-alive):
        # the last answer is not kept waiting behind the bookkeeping of another kind's.
        written = [self._write_group(group, entry, wake) for group in groups.values()]
        for done in written:
            if done is not None:
                self._end_group(*done)

    def _write_group(
        self, group: list[Held], entry: StoredResponse, wake: Wake[Fetched]
    ) -> tuple[list[Held], set[int], float] | None:
        """One answer for ``group`` (requests of one kind), written to each; returns what
        ``_end_group`` needs (``None``: each was answered on its own instead)."""
        started = time.perf_counter()
        first = group[0]
        try:
            prepared, made = self._prepared(first, entry)
        except Exception:  # Unacceptable, or a bug: each answered its own way, as alone
            for held in group:
                notify_alone(held, wake)
            return None
        self.serving.count(
            prepared.status, first.request.method, len(prepared.body), copies=len(group) - made
        )
        send_all = cast(Deferring, first.responder).send_shared_all
        try:
            failed = send_all([held.responder for held in group], prepared)
        except Exception:  # a bug: every request of the group answered as an error
            log.exception("unexpected error while answering held requests")
            failed = [held.responder for held in group]
        # The time answering took, shared out: what each request cost, not its wait.
        return group, {id(responder) for responder in failed}, time.perf_counter() - started

    def _end_group(self, group: list[Held], gone: set[int], seconds: float) -> None:
        """Each request of a written group ends: its duration and count observed once for
        all, its ``done`` (access line, the connection's next request); a failed write, an
        error."""
        answered = len(group) - len(gone)
        if answered:
            self.metrics.observe_requests(group[0].route, "hit", seconds / len(group), answered)
        for held in group:
            try:
                if gone and id(held.responder) in gone:
                    held.fail(time.perf_counter() - held.started)
                else:
                    held.done("hit")  # type: ignore[operator]  # a kind is never awaited
            except Exception:
                log.exception("unexpected error while ending a held request")

    def _prepared(self, held: Held, entry: StoredResponse) -> tuple[SharedAnswer, int]:
        """The answer to ``held``'s kind of request from ``entry``, made once per kind in the
        same second (``SharedAnswer``), and whether it was just made (``serve`` counted it)."""
        now = int(self.clock())
        if self._shared_entry is not entry or self._shared_second != now:
            self._shared_entry, self._shared_second = entry, now
            self._shared = {}
        kind = held.kind
        assert kind is not None
        prepared = self._shared.get(kind)
        if prepared is not None:
            return prepared, 0
        capture = Capture()
        applied = (("Preference-Applied", held.hold.applied),)
        self.serving.serve(held.request, capture, self._waited(entry), applied)  # may raise
        prepared = self._shared[kind] = capture.answer()
        return prepared, 1

    def _changed(self, held: Held, entry: StoredResponse, applied: Fields) -> None:
        """Serve the changed ``entry`` to one request: the answer of its kind if it has one
        (``_prepared``), written as is (``SharedAnswer``)."""
        request, responder = held.request, held.responder
        if held.kind is None:  # a range: a part of its own; or a responder that cannot share
            self.serving.serve(request, responder, self._waited(entry), applied)
            return
        prepared, made = self._prepared(held, entry)
        self.serving.count(prepared.status, request.method, len(prepared.body), copies=1 - made)
        cast(Deferring, responder).send_shared(prepared)

    def _waited(self, entry: StoredResponse) -> Serve:
        age = current_age(entry, self.clock())
        ttl = freshness_lifetime(entry, self.policy) - age
        return Serve(entry, age, cache_status(hit=True, ttl=ttl, detail="waited"), "hit")

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
            outcome = await outcome_of(task, leader)
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


class Held:
    """One parked long poll: what its answer needs once the wait ends (``wake``; the waiter's
    ``notify`` is the ``Held`` itself)."""

    __slots__ = ("done", "fallback", "hold", "kind", "polls", "request", "responder", "route",
                 "serve", "started")  # fmt: skip

    def __init__(
        self,
        polls: LongPolls,
        poll: LongPoll,
        done: Callable[[str], None] | asyncio.Future[Handled],
        kind: Kind | None = None,
    ) -> None:
        self.polls = polls
        self.request, self.responder, self.serve = poll.request, poll.responder, poll.serve
        self.hold, self.route, self.fallback = poll.hold, poll.route, poll.fallback
        self.done = done
        #: Its kind of request (``LongPolls._kind``): who shares its answer to a change.
        self.kind = kind
        self.started = time.perf_counter()

    def __call__(self, wake: Wake[Fetched]) -> None:
        self.wake(wake)

    def wake(self, wake: Wake[Fetched]) -> None:
        """The wait ended: write the answer (the change, the upstream's answer for this scope,
        or 304), or hand the request to the ordinary way when the store cannot answer it."""
        held = time.perf_counter() - self.started
        responder = self.responder
        applied = (("Preference-Applied", self.hold.applied),)
        try:
            if isinstance(wake.error, UpstreamError):
                send_upstream_error(responder, wake.error)
                return self._done(Handled("error", held))
            if wake.error is not None:
                raise wake.error  # a bug: answered (and logged) as any other
            if wake.answer is not None:
                answer = wake.answer
                status = cache_status(fwd="stale", fwd_status=answer.status, detail="waited")
                self.polls.forwarder.relay(
                    responder,
                    answer.status,
                    answer.reason,
                    (*answer.headers, *applied),
                    answer.body,
                    status,
                )
                return self._done(Handled("error" if answer.status >= 500 else "miss", held))
            if wake.outcome == "changed" and wake.entry is None:
                return self._fall_back(held)
            polls = self.polls
            entry = wake.entry
            if wake.outcome == "changed" and entry is not None:
                polls._changed(self, entry, applied)
            else:
                # The latest stored response the watch saw, if this request still matches it.
                if entry is None or not still_matches(entry, self.request.headers):
                    entry = self.serve.entry
                polls.serving.serve(self.request, responder, polls._waited(entry), applied)
        except Unacceptable:
            # Stored only in a coding this client cannot read.
            return self._fall_back(held)
        except Exception:
            log.exception(
                "unexpected error while answering a held %s %s",
                self.request.method,
                self.request.path,
            )
            return self.fail(held)
        self._done(Handled("hit", held))

    def fail(self, held: float) -> None:
        """A bug in the answer: a 500 with the envelope (unless the head is out already)."""
        send_error(self.responder, 500, "PROXY_ERROR", "the proxy failed to handle the request",
                   cache_status())  # fmt: skip
        self._done(Handled("error", held))

    def _fall_back(self, held: float) -> None:
        async def answer() -> None:
            try:
                handled = await self.fallback(self.request, self.responder, self.route)
            except Exception:
                log.exception("unexpected error while answering a held request")
                handled = Handled("error")
            self._done(_after(held, handled))

        task = asyncio.get_running_loop().create_task(answer())
        _FALLBACKS.add(task)
        task.add_done_callback(_FALLBACKS.discard)

    def _done(self, handled: Handled) -> None:
        done = self.done
        if isinstance(done, asyncio.Future):
            if not done.done():
                done.set_result(handled)
            return
        # A long poll's wait is the client's choice, not the time it took to answer.
        elapsed = time.perf_counter() - self.started - handled.held
        self.polls.metrics.observe_request(self.route, handled.result, elapsed)
        done(handled.result)


#: Fallbacks of woken long polls still under way (kept so that none is collected early).
_FALLBACKS: set[asyncio.Task[None]] = set()


class Capture:
    """A responder that keeps the one whole answer sent to it, to be shared (``_changed``)."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: Fields = ()
        self.body = b""

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, tuple(headers), body

    def answer(self) -> SharedAnswer:
        return SharedAnswer(self.status, self.reason, self.headers, self.body)

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        raise TypeError("a stored response is answered whole")

    async def write(self, chunk: bytes) -> None:
        raise TypeError("a stored response is answered whole")

    async def finish(self) -> None:
        raise TypeError("a stored response is answered whole")

    def abort(self) -> None:
        raise TypeError("a stored response is answered whole")


def _after(held: float, handled: Handled) -> Handled:
    """The fallback's answer, held for this wait as well as any of its own."""
    return Handled(handled.result, held + handled.held)


__all__ = ["Handled", "LongPoll", "LongPolls", "Wake"]
