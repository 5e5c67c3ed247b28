"""The ``Store`` seam: what every store of records offers, and the one error it may raise.

The cache layer (``proxy.cache.entries``) and the application see stores only through these
protocols, so the memory store, the Redis tier and any test store are interchangeable; a store
that cannot answer raises ``StoreError`` and the cache degrades to the origin (never an error).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from proxy.core.models import Record


class StoreError(Exception):
    """A store could not answer; the handler degrades to the upstream instead of failing."""


class Store(Protocol):
    """Get, set and delete records of stored responses by cache key.

    ``ttl`` is the retention time (seconds) of the record: a store forgets it after that.
    """

    backend: str

    async def get(self, key: str) -> Record | None: ...

    async def set(self, key: str, record: Record, ttl: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...

    @property
    def entries(self) -> int: ...

    @property
    def bytes(self) -> int: ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store shared between replicas, that can be read past this replica's own copy."""

    async def get_shared(self, key: str) -> Record | None: ...
