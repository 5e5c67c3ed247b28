"""Fetching and storing: one upstream request per flight, across callers and replicas.

Concurrent requests needing the same fetch share it (``SingleFlight``); with a coordinator, a
replica waits for another replica's fetch and reads what it stored. ``Retry-After`` on 429/503
holds the flight back. What may be stored is stored (§3); what may not is read whole when it is
a small error, or handed back as ``Streamed`` for the one caller that asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import assert_never

from proxy.cache.entries import Entries
from proxy.cache.forward import Forwarder, Streamed
from proxy.core.coding import CodingPolicy, StoredForm, stored_form
from proxy.core.conditional import conditional_headers
from proxy.core.headers import parse_cache_control, parse_retry_after
from proxy.core.models import (
    FIELD_OVERHEAD,
    Fresh,
    Freshen,
    Headers,
    KeepStale,
    ReadWhole,
    Refetch,
    ShareError,
    StoreAndUse,
    StoredResponse,
    Stream,
    UpstreamHead,
    header_value,
    header_values,
)
from proxy.core.policy import (
    CachePolicy,
    RequestFacts,
    decide,
    new_entry,
    receive,
    select_variant,
    selecting_values,
)
from proxy.ops.config import Settings
from proxy.stores.base import SharedStore
from proxy.stores.coordination import Coordinator, Notice
from proxy.stores.tables import BackoffTable
from proxy.upstream import SingleFlight, UpstreamResponse

#: A Retry-After answer replayed to later callers keeps its body only up to this size; a larger
#: one is replaced by the proxy's own envelope, so the hold-back table stays small.
BACKOFF_BODY_LIMIT = 4096
#: Fixed byte budget of the hold-back table, beside the cache (documented in the README).
BACKOFF_BUDGET = 4 * 1024 * 1024
#: Python's memory per held-back answer beyond its bytes (the Fetched object and its tuples).
HELD_OVERHEAD = 512
#: How long a flight whose 200 was streamed (too large or not storable) sends range requests
#: straight to the origin, ranges intact, instead of asking for the whole body to fill the
#: cache first (Varnish's hit-for-miss, its builtin 120 s), and the byte budget of those marks.
RANGE_PASS_SECONDS = 120.0
RANGE_PASS_BUDGET = 1024 * 1024
RANGE_PASS_OVERHEAD = 128
RETRY_LATER = (
    b'{"success": false, "error": {"code": "UPSTREAM_RETRY_LATER", '
    b'"message": "the upstream asked to retry later"}}'
)


@dataclass(frozen=True, slots=True)
class Fetched:
    """An upstream answer read in full, shareable with collapsed requests.

    ``collapsed``: another replica fetched it; this one read what that replica stored.
    ``shareable``: every caller of the flight may receive it (``policy.shareable``); when not,
    only the leader gets it and the others ask the origin themselves.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes
    entry: StoredResponse | None = None
    stored: bool = False
    revalidated: bool = False
    collapsed: bool = False
    shareable: bool = True


Outcome = Fetched | Streamed


@dataclass(frozen=True, slots=True)
class FetchJob:
    """One upstream fetch for a flight: what to ask for, for whom, and the entry it validates."""

    route: str
    key: str
    flight_key: str
    facts: RequestFacts
    forwarded: tuple[tuple[str, str], ...]
    stale: StoredResponse | None


def flight_key(key: str, facts: RequestFacts, vary: tuple[str, ...]) -> str:
    """Requests share a fetch only within one scope and one ``Vary`` selection."""
    return f"{facts.scope}\x00{key}\x00{selecting_values(vary, facts.headers)!r}"


class Fetcher:
    """Runs fetch jobs once per flight and stores what the answers allow."""

    def __init__(
        self,
        settings: Settings,
        entries: Entries,
        forwarder: Forwarder,
        clock: Callable[[], float],
        policy: CachePolicy,
        coordinator: Coordinator | None,
    ) -> None:
        self.settings = settings
        self.entries = entries
        self.forwarder = forwarder
        self.metrics = forwarder.metrics
        self.clock = clock
        self.policy = policy
        self.coordinator = coordinator
        self.codings = CodingPolicy(
            compress_types=settings.compress_types,
            min_bytes=settings.compress_min_bytes,
            codings=settings.compress_codings,
            max_bytes=settings.max_entry_bytes,
        )
        self.flights: SingleFlight[Outcome] = SingleFlight()
        self._backoff: BackoffTable[Fetched] = BackoffTable(BACKOFF_BUDGET, clock)
        self._range_passes: BackoffTable[None] = BackoffTable(RANGE_PASS_BUDGET, clock)

    def range_pass(self, flight: str) -> bool:
        """Whether range requests of this flight go to the origin with their ``Range``: its
        last 200 was streamed, not stored, so filling the cache would only fetch it twice."""
        return flight in self._range_passes

    def _note_range_pass(self, flight: str, status: int) -> None:
        if status == 200:
            until = self.clock() + RANGE_PASS_SECONDS
            self._range_passes.put(flight, until, None, RANGE_PASS_OVERHEAD)

    @property
    def held_back_bytes(self) -> int:
        """Bytes accounted to the ``Retry-After`` hold-back table (within ``BACKOFF_BUDGET``)."""
        return self._backoff.bytes

    def join(self, job: FetchJob) -> tuple[asyncio.Task[Outcome], bool]:
        """The flight for the job, and whether this caller leads it."""
        return self.flights.join(job.flight_key, lambda: self._coordinated(job))

    async def _coordinated(self, job: FetchJob) -> Outcome:
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
        store = self.entries.store
        if not isinstance(store, SharedStore):
            return None
        record = await store.get_shared(key)
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
        record = await self.entries.get(key)
        entry = select_variant(record, facts) if record else None
        if entry is None or entry.response_time < notice.response_time:
            return None
        return _collapsed(entry, revalidated=notice.revalidated)

    def _held_back(self, flight: str) -> Fetched | None:
        """The answer replayed while ``Retry-After`` holds this flight back, if it does."""
        backoff = self._backoff.get(flight)
        if backoff is None:
            return None
        until, answer = backoff
        retry = str(max(1, int(until - self.clock() + 0.999)))
        kept = tuple((k, v) for k, v in answer.headers if k.lower() != "retry-after")
        return replace(answer, headers=(*kept, ("Retry-After", retry)))

    async def _fetch(self, job: FetchJob) -> Outcome:
        """One upstream fetch for everyone waiting on the job's flight; stores what it may.

        A flat loop over the policy's one decision on each answer (``policy.receive``): only a
        ``Refetch`` (a 304 that cannot be used) goes round again, without validators, so it
        runs at most twice (a 304 to an unconditional request is streamed as it came).
        """
        held = self._held_back(job.flight_key)
        if held is not None:
            return held
        stale = job.stale
        while True:
            headers = list(job.forwarded)
            if stale is not None:
                headers.extend(conditional_headers(stale).items())
            request_time = self.clock()
            response = await self.forwarder.send(job.route, "GET", job.key, headers, None)
            head = UpstreamHead(
                response.status,
                response.reason,
                self.forwarder.received(response),
                response.content_length,
                request_time,
                self.clock(),
            )
            decision = receive(head, job.facts, stale, self.clock(), self.policy)
            match decision:
                case Refetch():
                    response.release()
                    stale = None
                case Freshen(entry):
                    response.release()
                    stored = await self.entries.save(job.key, entry)
                    return Fetched(
                        entry.status, entry.reason, entry.headers, entry.body, entry, stored, True
                    )
                case Stream(hold_back):
                    if hold_back:
                        self._note_backoff(job.flight_key, head)
                    self._note_range_pass(job.flight_key, head.status)
                    return Streamed(response, head.headers)
                case StoreAndUse() | KeepStale() | ShareError():
                    return await self._read(job, response, head, decision)
                case _:
                    assert_never(decision)

    async def _read(
        self, job: FetchJob, response: UpstreamResponse, head: UpstreamHead, decision: ReadWhole
    ) -> Outcome:
        """Read an answer whole, within the decision's limit; store it if the decision says so.

        A body past the limit is streamed to the caller after all, its first bytes included.
        """
        if decision.hold_back:
            # Noted on the head, so the window counts even if the body fails or is too large.
            self._note_backoff(job.flight_key, head)
        body = await response.read(decision.limit)
        self.metrics.upstream_bytes.inc(len(body))
        if len(body) > decision.limit:
            self._note_range_pass(job.flight_key, head.status)
            return Streamed(response, head.headers, body)
        response.release()
        if not isinstance(decision, StoreAndUse):
            if decision.hold_back:
                # Again with the body, so callers inside the window get the origin's envelope.
                self._note_backoff(job.flight_key, head, body)
            return Fetched(
                head.status, head.reason, head.headers, body, shareable=decision.shareable
            )
        form = self._stored_form(head.status, head.headers, body)
        entry = new_entry(head, form.body, job.facts, form.derived, form.coding)
        stored = await self.entries.save(job.key, entry)
        return Fetched(
            head.status,
            entry.reason,
            entry.headers,
            body,
            entry,
            stored,
            shareable=decision.shareable,
        )

    def _stored_form(self, status: int, received: Headers, body: bytes) -> StoredForm:
        """How a response about to be stored is kept: one coding, computed once, here."""
        if status == 204:
            return StoredForm(None, body)
        return stored_form(
            body=body,
            etag=header_value(received, "etag"),
            content_type=header_value(received, "content-type"),
            content_encoding=[v for k, v in received if k.lower() == "content-encoding"],
            no_transform=parse_cache_control(header_values(received, "cache-control")).no_transform,
            policy=self.codings,
        )

    def _note_backoff(self, flight: str, head: UpstreamHead, body: bytes = b"") -> None:
        """Honour ``Retry-After`` on 429/503: no request for this key goes upstream meanwhile.

        Noted once on the head (so a streamed answer counts too), again with the error body
        once read, so callers inside the window get the origin's envelope, not an empty body.
        """
        now = self.clock()
        delay = parse_retry_after(header_value(head.headers, "retry-after"), now)
        if delay is None or delay <= 0:
            return
        delay = min(delay, 3600.0)
        headers = tuple((k, v) for k, v in head.headers if k.lower() != "set-cookie")
        if len(body) > BACKOFF_BODY_LIMIT:
            # Never keep (and replay) a large body per key: the proxy's own envelope instead.
            body = RETRY_LATER
            headers = (("Content-Type", "application/json"), *self.forwarder.received_via)
        placeholder = Fetched(head.status, head.reason, headers, body)
        size = len(body) + sum(len(k) + len(v) + FIELD_OVERHEAD for k, v in headers)
        self._backoff.put(flight, now + delay, placeholder, size + HELD_OVERHEAD)


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


def release_orphan(task: asyncio.Task[Outcome]) -> None:
    """Close a streamed upstream response whose caller went away before taking it."""
    if task.cancelled() or task.exception() is not None:
        return
    outcome = task.result()
    if isinstance(outcome, Streamed):
        outcome.response.close()


async def outcome_of(task: asyncio.Task[Outcome], leader: bool) -> Outcome:
    """Await a joined flight (``Fetcher.join``) without cancelling it for the others: a leader
    cancelled before it takes the outcome leaves a streamed response to ``release_orphan``."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if leader:
            task.add_done_callback(release_orphan)
        raise
