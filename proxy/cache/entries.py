"""Reading and writing the store: one record of variants per URI, and invalidation marks.

A store that fails degrades to the origin (counted in ``store_errors_total``), never to an error.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.core.models import StoredResponse
from proxy.core.policy import CachePolicy, retention
from proxy.ops.metrics import Metrics
from proxy.stores.base import Store, StoreError
from proxy.stores.tables import InvalidationTable

MAX_VARIANTS = 16
#: Fixed byte budget of the invalidation marks, beside the cache (documented in the README).
INVALIDATION_BUDGET = 4 * 1024 * 1024


class Entries:
    """The store as the cache uses it: records of variants, kept no longer than §4.2 allows."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float],
        policy: CachePolicy,
        fetch_timeout: float,
    ) -> None:
        self.store = store
        #: Told every key stored or invalidated here (wakes long polls, ``proxy.cache.wait``).
        self.on_change: Callable[[str], None] = _unheard
        self.metrics = metrics
        self.clock = clock
        self.policy = policy
        # When each key was last invalidated: a fetch that started before then must not store
        # what it brings back, or a DELETE racing a poll would be undone (§4.4).
        self._invalidated = InvalidationTable(INVALIDATION_BUDGET, clock, fetch_timeout + 1)

    @property
    def invalidation_bytes(self) -> int:
        """Bytes accounted to the invalidation marks (within ``INVALIDATION_BUDGET``)."""
        return self._invalidated.bytes

    def _failed(self) -> None:
        self.metrics.store_errors.labels(self.store.backend).inc()

    async def get(self, key: str) -> tuple[StoredResponse, ...] | None:
        try:
            return await self.store.get(key)
        except StoreError:
            self._failed()
            return None

    async def save(self, key: str, entry: StoredResponse) -> bool:
        """Put a response into its URI's record, replacing the variant it supersedes (§4.1)."""
        now = self.clock()
        if retention(entry, now, self.policy) <= 0:
            return False
        if self._invalidated.since(key, entry.request_time):
            return False
        record = await self.get(key) or ()
        others = tuple(
            variant
            for variant in record
            if not (variant.scope == entry.scope and variant.selecting == entry.selecting)
            and retention(variant, now, self.policy) > 0
        )
        updated = (entry, *others[: MAX_VARIANTS - 1])
        ttl = max(retention(variant, now, self.policy) for variant in updated)
        try:
            await self.store.set(key, updated, ttl)
        except StoreError:
            self._failed()
            return False
        self.on_change(key)
        return True

    async def invalidate(self, keys: list[str]) -> None:
        """§4.4: forget the keys; fetches already in flight for them will not store."""
        now = self.clock()
        for key in keys:
            self._invalidated.mark(key, now)
            try:
                await self.store.delete(key)
            except StoreError:
                self._failed()
            self.on_change(key)

    async def purge(self, key: str) -> tuple[bool, bool]:
        """Forget ``key``: (whether it was stored, whether every tier of the store confirmed)."""
        existed = await self.get(key) is not None
        self._invalidated.mark(key, self.clock())
        try:
            await self.store.delete(key)
            confirmed = await self.store.ready()
        except StoreError:
            self._failed()
            confirmed = False
        self.on_change(key)
        return existed, confirmed


def _unheard(_key: str) -> None:
    return None
