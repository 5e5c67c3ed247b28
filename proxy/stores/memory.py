"""The in-process memory store: records in a byte-budgeted LRU, each kept for its retention."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from cachetools import TLRUCache

from proxy.core.models import Record, record_size
from proxy.stores.base import SharedStore, Store, StoreError

#: Memory per key beyond its characters: the key string object and cachetools' bookkeeping
#: (its data, size and expiry maps, the LRU links), measured with tracemalloc on CPython 3.11.
KEY_OVERHEAD = 512

#: ``Store`` and ``StoreError`` live in ``proxy.stores.base``; re-exported here only until the
#: composition root (``proxy.app``) and ``proxy.front.endpoints`` import them from there.
__all__ = ["KEY_OVERHEAD", "MemoryStore", "SharedStore", "Store", "StoreError", "key_bytes"]


def key_bytes(key: str) -> int:
    """What a key costs in memory: its characters (UTF-8 at worst) twice, since cachetools' TLRU
    heap keeps up to one removed item (holding the key) per live one, and the bookkeeping."""
    return 2 * len(key) * (1 if key.isascii() else 4) + KEY_OVERHEAD


#: A record, when it expires, and the memory its key takes (counted against the budget).
_Slot = tuple[Record, float, int]


class _BudgetedLRU(TLRUCache[str, _Slot]):
    """A cachetools TLRU cache of ``(record, expires_at, key_size)`` that reports evictions.

    The key counts against the budget with the record: a flood of long request-targets is
    evicted like a flood of bodies.
    """

    def __init__(
        self,
        max_bytes: int,
        timer: Callable[[], float],
        on_evict: Callable[[], None] | None,
    ) -> None:
        super().__init__(
            maxsize=max_bytes,
            ttu=lambda _key, slot, _now: slot[1],
            timer=timer,
            getsizeof=lambda slot: record_size(slot[0]) + slot[2],
        )
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, _Slot]:
        item = super().popitem()
        if self._on_evict is not None:
            self._on_evict()
        return item


class MemoryStore:
    """An LRU cache bounded by a byte budget, with per-record retention (cachetools TLRUCache).

    Records past their retention time are dropped; when the budget is exceeded the least
    recently used records are evicted.
    """

    backend = "memory"

    def __init__(
        self,
        max_bytes: int,
        *,
        clock: Callable[[], float],
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self._cache = _BudgetedLRU(max_bytes, clock, on_evict)
        self._max_bytes = max_bytes
        self._clock = clock
        # The hit path reads cachetools' own tables (its data and its LRU order) rather than
        # going through TLRUCache.__getitem__: the same expiry test and recency update for a
        # third of the cost. Another cachetools layout falls back to the public lookup.
        self._slots: dict[str, _Slot] | None = getattr(self._cache, "_Cache__data", None)
        self._order: OrderedDict[str, object] | None = getattr(
            self._cache, "_TLRUCache__items", None
        )
        if not isinstance(self._slots, dict) or not isinstance(self._order, OrderedDict):
            self._slots = self._order = None

    async def get(self, key: str) -> Record | None:
        return self.get_nowait(key)

    def get_nowait(self, key: str) -> Record | None:
        slots = self._slots
        if slots is None or self._order is None:
            try:
                return self._cache[key][0]
            except KeyError:
                return None
        slot = slots.get(key)
        if slot is None:
            return None
        self._order.move_to_end(key)  # recency, as TLRUCache.__getitem__ updates it
        if self._clock() < slot[1]:  # the record's retention (TLRU time-to-use)
            return slot[0]
        return None

    async def set(self, key: str, record: Record, ttl: float) -> None:
        self.set_nowait(key, record, ttl)

    def set_nowait(self, key: str, record: Record, ttl: float) -> None:
        key_size = key_bytes(key)
        if ttl <= 0 or record_size(record) + key_size > self._max_bytes:
            self._cache.pop(key, None)
            return
        self._cache[key] = (record, self._clock() + ttl, key_size)

    async def delete(self, key: str) -> None:
        self._cache.pop(key, None)

    def delete_nowait(self, key: str) -> None:
        self._cache.pop(key, None)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._cache.clear()

    def clear(self) -> None:
        self._cache.clear()

    def expire(self) -> None:
        self._cache.expire()

    @property
    def entries(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        return int(self._cache.currsize)
