"""The in-process memory store: records in a byte-budgeted LRU, each kept for its retention."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from proxy.core.models import Record, StoredResponse, record_size
from proxy.stores.base import SharedStore, Store, StoreError

#: Memory per key beyond its characters: the key string object, its place in the LRU table
#: (an ``OrderedDict`` entry and link) and its slot (a tuple and the expiry time), measured
#: with tracemalloc on CPython 3.11 (tests/test_memory_store.py).
KEY_OVERHEAD = 256
#: How many of the least recently used records each store looks at for expiry.
SWEEP = 2

#: ``Store`` and ``StoreError`` live in ``proxy.stores.base``; re-exported here only until the
#: composition root (``proxy.app``) and ``proxy.front.endpoints`` import them from there.
__all__ = ["KEY_OVERHEAD", "MemoryStore", "SharedStore", "Store", "StoreError", "key_bytes"]


def key_bytes(key: str) -> int:
    """What a key costs in memory: its characters (UTF-8 at worst) and the bookkeeping."""
    return len(key) * (1 if key.isascii() else 4) + KEY_OVERHEAD


#: What the table holds per key: a one-variant record as its response itself, the retention
#: kept on it (``StoredResponse.expires``), or else the record and when its retention ends.
_Slot = StoredResponse | tuple[Record, float]


def _record(slot: _Slot) -> Record:
    return (slot,) if isinstance(slot, StoredResponse) else slot[0]


def _expires(slot: _Slot) -> float:
    return slot.expires if isinstance(slot, StoredResponse) else slot[1]  # type: ignore[return-value]


class MemoryStore:
    """An LRU table of records bounded by a byte budget, each kept for its retention.

    One ``OrderedDict`` in recency order: issue 19 measured cachetools' TLRU at twice the
    bookkeeping per key (its data, size and expiry maps and heap items), which at 50,000 small
    responses was a tenth of their bytes. A key holding one variant (the common case) holds the
    response itself, its retention written once on it (``StoredResponse.expires``, never
    written again: a response already stored elsewhere is held as ``(record, expires_at)``,
    as a record of several variants is). Sizes are
    recomputed from the record when it leaves (records are immutable), not kept. A record past
    its retention is never returned; it is dropped when read, replaced, reached by the sweep of
    the least recently used end on each store, or evicted by the budget like any other.
    """

    backend = "memory"

    def __init__(
        self,
        max_bytes: int,
        *,
        clock: Callable[[], float],
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock
        self._on_evict = on_evict

    async def get(self, key: str) -> Record | None:
        return self.get_nowait(key)

    def get_nowait(self, key: str) -> Record | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        # _expires and _record written out: every cache hit asks.
        if isinstance(slot, StoredResponse):
            if self._clock() < slot.expires:  # type: ignore[operator]  # the retention
                self._slots.move_to_end(key)
                return (slot,)
        elif self._clock() < slot[1]:
            self._slots.move_to_end(key)
            return slot[0]
        self._drop(key)
        return None

    async def set(self, key: str, record: Record, ttl: float) -> None:
        self.set_nowait(key, record, ttl)

    def set_nowait(self, key: str, record: Record, ttl: float) -> None:
        self._drop(key)
        size = record_size(record) + key_bytes(key)
        if ttl <= 0 or size > self._max_bytes:
            return
        now = self._clock()
        first = record[0] if len(record) == 1 else None
        if first is not None and first.expires is None:
            object.__setattr__(first, "expires", now + ttl)
            self._slots[key] = first
        else:
            self._slots[key] = (record, now + ttl)
        self._bytes += size
        self._sweep(now)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._slots))
            self._drop(oldest)
            if self._on_evict is not None:
                self._on_evict()

    def _sweep(self, now: float) -> None:
        """Drop expired records at the least recently used end, a few per store."""
        for _ in range(SWEEP):
            if not self._slots:
                return
            oldest = next(iter(self._slots))
            if _expires(self._slots[oldest]) > now:
                return
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._bytes -= record_size(_record(slot)) + key_bytes(key)

    async def delete(self, key: str) -> None:
        self._drop(key)

    def delete_nowait(self, key: str) -> None:
        self._drop(key)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._slots.clear()
        self._bytes = 0

    def expire(self) -> None:
        """Drop every record past its retention."""
        now = self._clock()
        for key in [key for key, slot in self._slots.items() if _expires(slot) <= now]:
            self._drop(key)

    @property
    def entries(self) -> int:
        return len(self._slots)

    @property
    def bytes(self) -> int:
        return self._bytes
