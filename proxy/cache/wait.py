"""Held requests (RFC 7240 ``Prefer: wait``): a registry of waiters and one refresher per flight.

Waiters are grouped in a ``Watch`` per flight (cache key, credential scope and ``Vary``
selection), so everything done for them is done once per flight: the watch observes the stored
response, sleeps until its freshness lifetime ends or a store/invalidation notice pokes it,
then observes again (the observation revalidates upstream through the usual coalesced fetch).
After each observation it wakes the waiters whose ``If-None-Match`` no longer matches. The
registry is hand-written because it ties waiters to our flights and notices; asyncio supplies
the primitives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from proxy.core.conditional import not_modified
from proxy.core.models import StoredResponse
from proxy.ops.timers import TickWheel
from proxy.stores.keys import key_digest

log = logging.getLogger("proxy.wait")
A = TypeVar("A")

#: Shortest pause between two observations of one flight, so that an entry which is never fresh
#: (``max-age=0``, ``no-cache``) or an upstream in trouble is asked at most once a second.
MIN_INTERVAL = 1.0
#: Past the end of a freshness lifetime, so that the refresh finds the entry stale (§4.2).
EXPIRY_MARGIN = 0.002
#: The timer wheel's tick: a held request's wait ends on the first tick after its deadline.
TICK = 0.05


@dataclass(frozen=True, slots=True)
class Observation(Generic[A]):
    """What a flight's waiters would be served now.

    ``entry``: the stored response, fresh for ``fresh_for`` more seconds; ``answer``: an upstream
    answer that is not stored (a 404, an error) and ends every wait; neither: the response cannot
    be served from here (too large to store), so waiters go the ordinary way.
    """

    entry: StoredResponse | None
    fresh_for: float = 0.0
    answer: A | None = None
    failed: bool = False


@dataclass(frozen=True, slots=True)
class Wake(Generic[A]):
    """Why a held request ends: ``changed``, ``timeout``, ``error`` or ``disconnected``."""

    outcome: str
    entry: StoredResponse | None = None
    answer: A | None = None
    error: Exception | None = None


#: Answers many ended waits with one wake at once: called with their ``notify`` callables (all
#: parked with this same ``many``), so that one answer can be made for all who get the same.
Many = Callable[[list[Callable[[Wake[Any]], None]], Wake[Any]], None]


class Waiter:
    """One held request: its validators (the request's fields), what to call once it ends, and
    where it sits in the room's timer wheel. Held requests need no task nor timer each: the
    room settles a waiter by calling ``notify`` once, from its watch, its wheel or a disconnect
    (or its ``many`` with the others one wake ends together).
    """

    __slots__ = ("counted", "headers", "lost", "many", "notify", "room", "slot", "still",
                 "validators", "watch")  # fmt: skip

    def __init__(
        self,
        room: WaitRoom[Any],
        watch: Watch[Any],
        headers: Mapping[str, str],
        notify: Callable[[Wake[Any]], None],
        still: Callable[[StoredResponse], bool] | None = None,
        counted: bool = True,
        many: Many | None = None,
    ) -> None:
        self.room = room
        self.watch: Watch[Any] | None = watch
        self.headers = headers
        #: ``validators_of(headers)``, one shared tuple per distinct value (``WaitRoom``).
        self.validators = room.validators(headers)
        self.notify = notify
        self.many = many
        #: Whether a stored response still matches what it holds; ``None``: its fields'
        #: validators do (compared once per distinct value, ``still_matches``).
        self.still = still
        self.counted = counted
        self.slot = 0
        self.lost: asyncio.Future[None] | None = None

    def gone(self, _: object = None) -> None:
        """The client went away (a done callback of the connection's disconnect future)."""
        self.room.settle(self, DISCONNECTED)


class Watch(Generic[A]):
    """The waiters of one flight and the task that refreshes the flight for them."""

    __slots__ = ("digest", "flight", "key", "loop", "observe", "poked", "seen", "task", "waiters")

    def __init__(
        self, flight: str, key: str, observe: Callable[[], Awaitable[Observation[A]]]
    ) -> None:
        self.flight = flight
        self.key = key
        # The name the Redis tier gives the key in its invalidation notices (one function for
        # both, ``proxy.stores.keys``), so ``WaitRoom.changed_digest`` recognises them.
        self.digest = key_digest(key)
        self.observe = observe
        self.waiters: set[Waiter] = set()
        self.loop = asyncio.get_running_loop()
        self.poked = asyncio.Event()
        #: The stored response last observed: what a wait that times out is answered from.
        self.seen: StoredResponse | None = None
        self.task: asyncio.Task[None] | None = None


def still_matches(entry: StoredResponse, headers: Mapping[str, str]) -> bool:
    """Would this request still be answered 304 from ``entry`` (RFC 9110 §13.1.2)?"""
    return 200 <= entry.status < 300 and not_modified(entry, headers) is not None


class WaitRoom(Generic[A]):
    """Every held request of this replica, by flight, with the count the limits are judged on."""

    def __init__(
        self,
        *,
        on_outcome: Callable[[str, int], None],
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self.min_interval = min_interval
        #: Called with an outcome and how many held requests ended with it.
        self.on_outcome = on_outcome
        self.waiting = 0
        self.closing = False
        self._watches: dict[str, Watch[A]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._keys_by_digest: dict[str, str] = {}
        # Validators as waiters share them: the waiters of one change mostly hold one ETag.
        self._validators: dict[tuple[object, ...], tuple[object, ...]] = {}
        # The timer wheel: waiters by the tick their wait ends on, one timer for the earliest.
        self._wheel: TickWheel[Waiter] = TickWheel(self._timed_out, tick=TICK)

    async def hold(
        self,
        flight: str,
        key: str,
        observe: Callable[[], Awaitable[Observation[A]]],
        headers: Mapping[str, str],
        seconds: float,
        lost: asyncio.Future[None] | None = None,
        *,
        still: Callable[[StoredResponse], bool] | None = None,
        counted: bool = True,
    ) -> Wake[A]:
        """Wait until the flight's response no longer matches ``headers`` (or ``still`` says
        it changed), ``seconds`` pass, the client goes away (``lost``) or the replica drains
        (``park``, awaited).

        ``counted=False``: a hold of an event stream, which is counted (``enter``) for as long
        as it is open rather than per hold, and whose outcomes are not long polls'.
        """
        future: asyncio.Future[Wake[A]] = asyncio.get_running_loop().create_future()

        def notify(wake: Wake[A]) -> None:
            if not future.done():
                future.set_result(wake)

        waiter = self.park(
            flight, key, observe, headers, seconds, lost, notify, still=still, counted=counted
        )
        try:
            return await future
        except asyncio.CancelledError:
            self.settle(waiter, DISCONNECTED)
            raise

    def watching(self, flight: str) -> bool:
        """Whether the flight has a watch already (a new waiter needs no ``observe``)."""
        return flight in self._watches

    def park(
        self,
        flight: str,
        key: str,
        observe: Callable[[], Awaitable[Observation[A]]] | None,
        headers: Mapping[str, str],
        seconds: float,
        lost: asyncio.Future[None] | None,
        notify: Callable[[Wake[A]], None],
        *,
        still: Callable[[StoredResponse], bool] | None = None,
        counted: bool = True,
        many: Many | None = None,
    ) -> Waiter:
        """Hold a request without a task: ``notify`` is called once with why it ended (a
        change, the ``seconds`` passing, ``lost`` done, the drain), from the watch, the timer
        wheel or the disconnect; a ``notify`` must not raise. ``many``: what answers the
        waiters one wake ends together instead (with their ``notify``), if given."""
        watch = self._watches.get(flight)
        if watch is None:
            if observe is None:
                raise ValueError(f"flight {flight!r} has no watch: park needs its observe")
            watch = self._open(flight, key, observe)
        waiter = Waiter(self, watch, headers, notify, still, counted, many)
        watch.waiters.add(waiter)
        if counted:
            self.waiting += 1
        waiter.slot = self._wheel.add(waiter, watch.loop.time() + seconds)
        if lost is not None:
            waiter.lost = lost
            lost.add_done_callback(waiter.gone)
        return waiter

    def settle(self, waiter: Waiter, wake: Wake[A]) -> None:
        """End one wait (once: later calls do nothing) and tell its request why."""
        watch = waiter.watch
        if watch is None:
            return
        waiter.watch = None
        watch.waiters.discard(waiter)
        if waiter.counted:
            self.waiting -= 1
        self._wheel.discard(waiter, waiter.slot)
        lost = waiter.lost
        if lost is not None:
            waiter.lost = None
            # The connection outlives this request (keep-alive): leave no callback behind.
            lost.remove_done_callback(waiter.gone)
        if not watch.waiters:
            self._close(watch)
        if waiter.counted and wake.outcome != "disconnected":
            self.on_outcome(wake.outcome, 1)
        notify_alone(waiter.notify, wake)

    def settle_many(self, watch: Watch[A], waiters: list[Waiter], wake: Wake[A]) -> None:
        """End the waits of ``waiters`` of ``watch`` with one ``wake``: the bookkeeping in one
        loop, the outcome counted once, then the answers, by ``many`` where the waiters have one
        (one answer made per kind of request, ``LongPolls``), else one ``notify`` each. Waiters
        already settled (or of another watch) are left alone."""
        remaining = watch.waiters
        counted = 0
        ended: list[Waiter] = []
        for waiter in waiters:
            if waiter.watch is not watch:
                continue
            waiter.watch = None  # settled: its wheel slot and disconnect callback do nothing
            remaining.discard(waiter)
            counted += waiter.counted
            ended.append(waiter)
        self.waiting -= counted
        if not remaining:
            self._close(watch)
        if counted and wake.outcome != "disconnected":
            self.on_outcome(wake.outcome, counted)
        groups: dict[Many, list[Callable[[Wake[Any]], None]]] = {}
        for waiter in ended:
            many = waiter.many
            if many is None:
                notify_alone(waiter.notify, wake)
            else:
                notifies = groups.get(many)
                if notifies is None:
                    notifies = groups[many] = []
                notifies.append(waiter.notify)
        for many, notifies in groups.items():
            try:
                many(notifies, wake)
            except Exception:  # a bug in the answer: the other groups must still be answered
                log.exception("answering held requests failed")
        # Left behind until the answers are out: nothing runs in between, so only the first
        # answer comes sooner.
        discard = self._wheel.discard
        for waiter in ended:
            discard(waiter, waiter.slot)
            lost = waiter.lost
            if lost is not None:
                waiter.lost = None
                lost.remove_done_callback(waiter.gone)  # keep-alive: leave no callback behind

    def _timed_out(self, waiters: list[Waiter]) -> None:
        """A tick of the wheel: every wait it ends ends with ``timeout``, one answer per watch."""
        by_watch: dict[int, tuple[Watch[A], list[Waiter]]] = {}
        for waiter in waiters:
            watch = waiter.watch
            if watch is None:
                continue
            group = by_watch.get(id(watch))
            if group is None:
                group = by_watch[id(watch)] = (watch, [])
            group[1].append(waiter)
        for watch, ended in by_watch.values():
            self.settle_many(watch, ended, _timeout(watch))  # its latest stored response

    def validators(self, headers: Mapping[str, str]) -> tuple[object, ...]:
        """``validators_of(headers)``, the one tuple kept for that value (a waiter keeps it)."""
        return interned(self._validators, validators_of(headers))

    def enter(self) -> None:
        """An event stream opened: it counts against ``--max-waiters`` until it ``leave``s."""
        self.waiting += 1

    def leave(self) -> None:
        self.waiting -= 1

    def changed(self, key: str) -> None:
        """A response for ``key`` was stored or invalidated here: look again now."""
        for flight in self._by_key.get(key, ()):
            self._watches[flight].poked.set()

    def changed_digest(self, digest: str) -> None:
        """Another replica stored or invalidated the key with this digest."""
        key = self._keys_by_digest.get(digest)
        if key is not None:
            self.changed(key)

    def release_all(self) -> None:
        """Draining: answer every held request at once (with 304) and hold no new ones."""
        self.closing = True
        for watch in list(self._watches.values()):
            self._wake_all(watch, _timeout(watch))

    async def close(self) -> None:
        self.release_all()
        self._wheel.close()
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    def _open(
        self, flight: str, key: str, observe: Callable[[], Awaitable[Observation[A]]]
    ) -> Watch[A]:
        watch: Watch[A] = Watch(flight, key, observe)
        self._watches[flight] = watch
        self._by_key.setdefault(key, set()).add(flight)
        self._keys_by_digest[watch.digest] = key
        watch.task = asyncio.get_running_loop().create_task(self._run(watch))
        return watch

    def _close(self, watch: Watch[A]) -> None:
        if self._watches.get(watch.flight) is not watch:
            return
        del self._watches[watch.flight]
        flights = self._by_key.get(watch.key)
        if flights is not None:
            flights.discard(watch.flight)
            if not flights:
                del self._by_key[watch.key]
                self._keys_by_digest.pop(watch.digest, None)
        if watch.task is not None and watch.task is not asyncio.current_task():
            watch.task.cancel()

    async def _run(self, watch: Watch[A]) -> None:
        """Observe, wake who must wake, sleep until expiry or a notice; while anyone waits."""
        try:
            while watch.waiters:
                watch.poked.clear()
                try:
                    seen = await watch.observe()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # an upstream error no stored response covers
                    self._wake_all(watch, Wake("error", error=error))
                    continue
                if seen.answer is not None or seen.entry is None:
                    outcome = "error" if seen.failed else "changed"
                    self._wake_all(watch, Wake(outcome, answer=seen.answer))
                    continue
                entry = watch.seen = seen.entry
                matches: dict[int, bool] = {}  # by the validators' tuple: once each
                woken = []
                for waiter in watch.waiters:
                    if waiter.still is not None:
                        match = waiter.still(entry)
                    else:
                        validators = id(waiter.validators)  # alive: its waiter holds it
                        match = matches.get(validators)  # type: ignore[assignment]
                        if match is None:
                            match = matches[validators] = still_matches(entry, waiter.headers)
                    if not match:
                        woken.append(waiter)
                if woken:
                    self.settle_many(watch, woken, Wake("changed", entry=entry))
                if not watch.waiters:
                    break
                # Wake just past the end of the freshness lifetime (a timer may fire a little
                # early); an entry that is never fresh is looked at once per ``min_interval``.
                delay = seen.fresh_for + EXPIRY_MARGIN if seen.fresh_for > 0 else self.min_interval
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await watch.poked.wait()
        finally:
            self._close(watch)

    def _wake_all(self, watch: Watch[A], wake: Wake[A]) -> None:
        self.settle_many(watch, list(watch.waiters), wake)


#: How many distinct values an ``interned`` table keeps before it starts over.
INTERNED = 4096


def interned(table: dict[tuple[object, ...], tuple[object, ...]], value: tuple[object, ...]
             ) -> tuple[object, ...]:  # fmt: skip
    """The one tuple ``table`` keeps equal to ``value``, so that holders of equal values can be
    grouped by identity; past ``INTERNED`` values the table starts over (only the sharing is
    lost: equal tuples still compare equal)."""
    shared = table.get(value)
    if shared is None:
        if len(table) >= INTERNED:
            table.clear()
        shared = table[value] = value
    return shared


def notify_alone(notify: Callable[[Wake[Any]], None], wake: Wake[Any]) -> None:
    """One request told why its wait ended, on its own: a bug in its answer (logged) must not
    cost the others theirs."""
    try:
        notify(wake)
    except Exception:  # a bug in the answer: the others must still be answered
        log.exception("answering a held request failed")


TIMEOUT: Wake[Any] = Wake("timeout")
DISCONNECTED: Wake[Any] = Wake("disconnected")


def _timeout(watch: Watch[Any]) -> Wake[Any]:
    return TIMEOUT if watch.seen is None else Wake("timeout", entry=watch.seen)


def validators_of(headers: Mapping[str, str]) -> tuple[object, ...]:
    """What ``still_matches`` reads of a request: its conditional fields."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return (tuple(getall("if-none-match", ())), tuple(getall("if-modified-since", ())))
    return (headers.get("if-none-match"), headers.get("if-modified-since"))
