"""The per-key tables kept beside the cache, each within a fixed byte budget.

The Retry-After hold-back and the invalidation marks are kept per key (and per caller), so a
flood of distinct keys must not grow them without bound: both are cachetools TLRU caches sized
in bytes (keys included), like the cache itself. Their budgets are the fixed overhead the
README documents on top of ``--cache-max-bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TLRUCache

from proxy.stores.memory import key_bytes

T = TypeVar("T")

_Hold = tuple[float, object, int]


class BackoffTable(Generic[T]):
    """Answers held back until a time (Retry-After), least recently used dropped first.

    Dropping one early only means one more request reaches the origin: safe.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self._cache: TLRUCache[str, _Hold] = TLRUCache(
            maxsize=max_bytes,
            ttu=lambda _key, hold, _now: hold[0],
            timer=clock,
            getsizeof=lambda hold: hold[2],
        )

    def put(self, key: str, until: float, value: T, size: int) -> None:
        size += key_bytes(key)
        if size > self._cache.maxsize:
            self._cache.pop(key, None)
            return
        self._cache[key] = (until, value, size)

    def get(self, key: str) -> tuple[float, T] | None:
        hold = self._cache.get(key)
        if hold is None:
            return None
        return hold[0], hold[1]  # type: ignore[return-value]

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        return int(self._cache.currsize)


class _Marks(TLRUCache[str, tuple[float, int]]):
    """Invalidation times with their sizes; reports what the budget evicts before its time."""

    def __init__(self, max_bytes: int, clock: Callable[[], float], keep: float) -> None:
        super().__init__(
            maxsize=max_bytes,
            ttu=lambda _key, mark, _now: mark[0] + keep,
            timer=clock,
            getsizeof=lambda mark: mark[1],
        )
        self.floor = float("-inf")

    def popitem(self) -> tuple[str, tuple[float, int]]:
        key, mark = super().popitem()
        self.floor = max(self.floor, mark[0])
        return key, mark


class InvalidationTable:
    """When each key was last invalidated (RFC 9111 §4.4), so a fetch that started earlier does
    not store what it brings back; ``keep`` is how long a mark matters (the upstream timeout).

    Within a byte budget: a mark evicted early raises a floor instead, and every fetch that
    started before the floor does not store. A flood of POSTs costs some storing, never a
    resurrected entry.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float], keep: float) -> None:
        self._marks = _Marks(max_bytes, clock, keep)

    def mark(self, key: str, at: float) -> None:
        size = key_bytes(key)
        if size > self._marks.maxsize:
            self._marks.floor = max(self._marks.floor, at)
            return
        self._marks[key] = (at, size)

    def since(self, key: str, started: float) -> bool:
        """Whether ``key`` was invalidated at or after ``started``."""
        if self._marks.floor >= started:
            return True
        mark = self._marks.get(key)
        return mark is not None and mark[0] >= started

    def __len__(self) -> int:
        return len(self._marks)

    @property
    def bytes(self) -> int:
        return int(self._marks.currsize)
