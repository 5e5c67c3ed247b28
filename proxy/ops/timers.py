"""One timer for many deadlines: the timer wheel of the header timeouts and of held requests.

A ``TimerHandle`` per deadline costs hundreds of bytes while it lives and a heap operation each
time it is armed; with 100,000 held long polls, and every one of them armed again when its
answer is out, that is most of the time a wake-up takes. The wheel keeps the items in buckets by
tick and arms one timer for the earliest bucket; a deadline ends at the first tick after it,
never before. The front's header timeouts (``proxy.front.server``) and the cache's held requests
(``proxy.cache.wait``) each keep one.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class TickWheel(Generic[T]):
    """Items by the tick of their deadline, one ``TimerHandle`` for the earliest tick; when a
    tick comes, ``expire`` is called once with the items whose deadline it ends (they are no
    longer in the wheel), so that the caller can answer them together.

    ``loop``: ``None`` for the running loop's at each arming.
    """

    __slots__ = ("_expire", "_heap", "_loop", "_slots", "_tick", "_timer", "_timer_slot")

    def __init__(
        self,
        expire: Callable[[list[T]], None],
        loop: asyncio.AbstractEventLoop | None = None,
        tick: float = 0.1,
    ) -> None:
        self._expire = expire
        self._loop = loop
        self._tick = tick
        self._slots: dict[int, set[T]] = {}
        self._heap: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0

    def add(self, item: T, deadline: float) -> int:
        """End ``item`` at the first tick at or after ``deadline`` (loop time); returns the
        slot to ``discard`` it with (never 0)."""
        slot = max(1, math.ceil(deadline / self._tick))
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            heapq.heappush(self._heap, slot)
            if self._timer is None or slot < self._timer_slot:
                self._arm(slot)
        items.add(item)
        return slot

    def discard(self, item: T, slot: int) -> None:
        items = self._slots.get(slot)
        if items is not None:
            items.discard(item)
            if not items:
                del self._slots[slot]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()
        self._heap.clear()

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_slot = slot
        self._timer = loop.call_at(slot * self._tick, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time() + self._tick / 10  # a timer may fire a little early
        heap, slots = self._heap, self._slots
        while heap and heap[0] * self._tick <= now:
            items = slots.pop(heapq.heappop(heap), None)
            if items:
                self._expire(list(items))
        while heap and heap[0] not in slots:
            heapq.heappop(heap)  # ticks whose items all left before them
        # Items added while expiring may have armed the timer for a later tick than the first.
        if heap and (self._timer is None or heap[0] < self._timer_slot):
            self._arm(heap[0])


class Expiring(Protocol):
    def expired(self) -> None:
        """The tick of the deadline it was added with has come (it is no longer in the wheel)."""


def _expire_each(items: list[Expiring]) -> None:
    for item in items:
        item.expired()


class DeadlineWheel(TickWheel[Expiring]):
    """A wheel whose items are told one by one (``expired``) that their deadline has come."""

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        super().__init__(_expire_each, loop, tick)
