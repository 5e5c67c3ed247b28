"""The composition root: every object a running proxy needs, built once from ``Settings``.

``python -m proxy``, each ``--workers`` worker, the replicas tool and the tests all build the
proxy here, so there is one place that says what is made from which option and in which order
it is opened and closed. The runtime knows no server: a front (``proxy.front.server``) serves
it on as many listeners as it likes, and asks it for readiness, ``/metrics`` and purging::

    async with Runtime(settings) as runtime:
        server = FrontServer(runtime, access=None)
        await server.start(settings.host, settings.port)
        ...
        await server.close()  # drains: ``runtime.drain()``, then the answers in flight

Closing goes in the opposite order of use: the held long polls (RFC 7240 ``Prefer: wait``) are
answered, the upstream fetches in flight cancelled, then the upstream session, the store and
the Redis share are closed, each by its own ``close()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from proxy.cache.proxy import CachingProxy
from proxy.ops.admin import Purger
from proxy.ops.config import ConfigError, Settings
from proxy.ops.lifetime import StartsAndCloses
from proxy.ops.metrics import Metrics
from proxy.stores.coordination import Coordinator
from proxy.stores.memory import MemoryStore, Store, StoreError
from proxy.upstream import Upstream, UpstreamConfig

if TYPE_CHECKING:
    from proxy.stores.redis import RedisShare

log = logging.getLogger("proxy")

#: What ``/metrics`` serves when it is not this process's registry alone (``--workers``).
Exposition = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` reports: ready to take traffic (200) or not (503), and why."""

    ready: bool
    status: str  # ready, degraded (store unreachable: served uncached), draining, unavailable
    upstream_session: str
    store: str

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503

    def body(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "upstream_session": self.upstream_session,
            "store": self.store,
        }


class Runtime(StartsAndCloses):
    """The cache, its store, the upstream session, metrics, the Redis share and the purger.

    Tests inject the store, the registry, the clock and the coordinator. With
    ``settings.redis_url`` (and no injected store) the store is the Redis-backed tier and
    fetches are coordinated across the replicas sharing it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics = Metrics(self.registry)
        self.share: RedisShare | None = None
        if store is None and settings.redis_url:
            self.share = redis_share(settings, metrics, clock)
            store, coordinator = self.share.store, self.share.coordinator
        if store is None:
            store = MemoryStore(
                settings.cache_max_bytes, clock=clock, on_evict=metrics.cache_evictions.inc
            )
        self.store: Store = store
        metrics.track_store(lambda: store.entries, lambda: store.bytes)
        metrics.track_backend(store.backend, settings.cache_max_bytes)
        self.upstream = Upstream(
            UpstreamConfig(
                base_url=settings.upstream,
                connect_timeout=settings.upstream_connect_timeout,
                timeout=settings.upstream_timeout,
                max_connections=settings.upstream_max_connections,
                pool_timeout=settings.upstream_pool_timeout,
            )
        )
        self.cache = cache = CachingProxy(
            settings, store, self.upstream, metrics, clock, coordinator
        )
        metrics.track_tables(
            lambda: cache.fetcher.held_back_bytes, lambda: cache.entries.invalidation_bytes
        )
        if self.share is not None:
            self.share.on_change = cache.waits.changed_digest
        self.purger = Purger(cache.purge, settings.admin_token) if settings.admin_token else None
        #: Set with ``--workers`` to every worker's samples; else this registry is served.
        self.exposition: Exposition | None = None
        self.draining = False
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream session and, with Redis, the share (its subscription)."""
        self._started = True
        await self.upstream.start()
        if self.share is not None:
            await self.share.start()

    def drain(self) -> None:
        """Stop taking work: ``/readyz`` answers 503 and held long polls are answered (304)."""
        if self.draining:
            return
        self.draining = True
        self.cache.release_waiters()
        log.info(
            "draining: finishing in-flight requests for up to %gs", self.settings.drain_seconds
        )

    async def close(self) -> None:
        """Close everything, once, each part by its own ``close()``."""
        if not self._started:
            return
        self._started = False
        await self.cache.close()  # held long polls answered, fetches in flight cancelled
        await self.upstream.close()
        await self.store.close()
        if self.share is not None:
            await self.share.close()
        log.info("closed the upstream session and the %s store", self.store.backend)

    # -- what the endpoints report ----------------------------------------------------------

    async def readiness(self) -> Readiness:
        upstream_ready = self.upstream.ready
        try:
            store_ready = await self.store.ready()
        except StoreError:
            store_ready = False
        ready = upstream_ready and not self.draining
        if not ready:
            status = "draining" if self.draining else "unavailable"
        else:
            status = "ready" if store_ready else "degraded"
        backend = self.store.backend
        return Readiness(
            ready,
            status,
            "open" if upstream_ready else "closed",
            backend if store_ready else f"{backend} degraded",
        )

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition ``/metrics`` serves."""
        if self.exposition is not None:
            return await self.exposition()  # --workers: every worker's samples
        return generate_latest(self.registry)


def redis_share(settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> RedisShare:
    """The Redis tier, imported only when asked for, since redis-py is an optional extra."""
    try:
        from proxy.stores.redis import RedisShare
    except ImportError:
        raise ConfigError(
            "--redis-url: redis-py is not installed: pip install 'aitronos-cache-proxy[redis]'"
        ) from None
    return RedisShare(settings, metrics, clock)


__all__ = ["Exposition", "Readiness", "Runtime", "redis_share"]
