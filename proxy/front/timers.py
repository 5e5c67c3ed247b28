"""One timer for many deadlines: the header timeouts of every connection of a listener.

A ``TimerHandle`` per connection costs hundreds of bytes while the connection lives and a
heap operation each time it is armed; with 100,000 held long polls, and every one of them
armed again when its answer is out, that is most of the time a wake-up takes. The wheel keeps
the connections in buckets by tick and arms one timer for the earliest bucket; a deadline
ends at the first tick after it, never before.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol


class Expiring(Protocol):
    def expired(self) -> None:
        """The tick of the deadline it was added with has come (it is no longer in the wheel)."""


class DeadlineWheel:
    """Deadlines by tick, one ``TimerHandle`` for the earliest."""

    __slots__ = ("_heap", "_loop", "_slots", "_tick", "_timer", "_timer_slot")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.1) -> None:
        self._loop = loop
        self._tick = tick
        self._slots: dict[int, set[Expiring]] = {}
        self._heap: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0

    def add(self, item: Expiring, deadline: float) -> int:
        """Call ``item.expired()`` at the first tick at or after ``deadline``; returns the
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

    def discard(self, item: Expiring, slot: int) -> None:
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
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * self._tick, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time() + self._tick / 10  # a timer may fire a little early
        heap, slots = self._heap, self._slots
        while heap and heap[0] * self._tick <= now:
            for item in list(slots.pop(heapq.heappop(heap), ())):
                item.expired()
        while heap and heap[0] not in slots:
            heapq.heappop(heap)  # ticks whose items all left before them
        if heap and self._timer is None:
            self._arm(heap[0])
