"""The Redis tier of one replica: a cache shared by every replica, their fetch coordination and
invalidation, held together by one pub/sub subscription.

One ``RedisShare`` per replica owns the clients, a circuit breaker (``proxy.stores.redis_link``)
and the pub/sub listener, and hands the application a ``TieredStore``
(``proxy.stores.redis_tier``: an in-process front over Redis) and a ``RedisCoordinator``
(``proxy.stores.redis_coordination``). The Redis may be one server, a Sentinel-managed primary or
a Cluster (``proxy.stores.redis_clients``): every operation touches one key, so the same code
serves all three. The names it uses in Redis are listed in ``proxy.stores.keys``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics
from proxy.stores.keys import RedisKeys
from proxy.stores.memory import MemoryStore
from proxy.stores.redis_clients import RedisClients
from proxy.stores.redis_coordination import RedisCoordinator
from proxy.stores.redis_link import MAX_BACKOFF, UNREACHABLE, RedisLink, why
from proxy.stores.redis_tier import RedisStore, TieredStore

log = logging.getLogger("proxy.redis")

#: Seconds between liveness pings on an idle subscription; two silent periods mean it is dead.
PING_INTERVAL = 1.0


class RedisShare:
    """Everything one replica keeps for Redis: the clients, the breaker, the subscription,
    the tiered store and the coordinator. ``start`` and ``close`` follow the application.
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.subscribed = False
        timeout = settings.redis_timeout_ms / 1000
        self.clients = RedisClients(
            settings.redis_url,
            timeout=timeout,
            listen_timeout=max(timeout, PING_INTERVAL),
            max_connections=settings.redis_max_connections,
        )
        self.client = self.clients.client
        self.keys = RedisKeys(settings.redis_prefix)
        self.link = RedisLink(
            self.client, timeout=timeout, on_error=metrics.store_errors.labels("redis").inc
        )
        self.back = RedisStore(
            self.link, self.keys, on_unreadable=metrics.store_unreadable.labels("redis").inc
        )
        front = MemoryStore(
            settings.store_max_bytes, clock=clock, on_evict=metrics.cache_evictions.inc
        )
        self.store = TieredStore(
            front,
            self.back,
            local_ttl=settings.redis_local_ttl,
            clock=clock,
            remember=settings.upstream_timeout + 1,
            healthy=lambda: self.healthy,
        )
        self.coordinator = RedisCoordinator(
            self.link,
            self.keys,
            lock_ttl=settings.redis_lock_ttl,
            max_wait=settings.upstream_timeout + settings.redis_lock_ttl,
            subscribed=lambda: self.subscribed,
        )
        metrics.store_degraded.labels("redis").set_function(lambda: 0 if self.healthy else 1)
        self._subscription = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        #: Told the digest of every key another replica stored or deleted (wakes long polls).
        self.on_change: Callable[[str], None] | None = None

    @property
    def healthy(self) -> bool:
        return self.subscribed and self.link.breaker.closed

    async def start(self, wait: float = 1.0) -> None:
        """Start listening; wait briefly for the subscription, but start degraded without it."""
        log.info(
            "sharing the cache through redis at %s (%s)",
            self.clients.description,
            self.clients.kind,
        )
        self._listener = asyncio.create_task(self._listen())
        with suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._subscription.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
        await self.clients.aclose()

    async def _listen(self) -> None:
        """Keep one subscription to the invalidation and notice channels, resubscribing after
        any failure with a growing pause.
        """
        delay = self.link.breaker.initial
        while True:
            pubsub = self.clients.pubsub()
            try:
                await self._subscribe(pubsub)
                delay = self.link.breaker.initial
                await self._receive(pubsub)
            except UNREACHABLE as error:
                if self.subscribed:
                    log.warning("redis subscription lost: %s", why(error))
                self.link.trip(f"subscription failed: {why(error)}")
            finally:
                self.subscribed = False
                self._subscription.clear()
                self.coordinator.wake_all()
                with suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(PING_INTERVAL):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _subscribe(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(max(self.link.timeout, PING_INTERVAL)):
            await pubsub.subscribe(self.keys.invalidate)
            await pubsub.psubscribe(self.keys.done_pattern)
            confirmed = 0
            while confirmed < 2:
                message = await pubsub.get_message(timeout=PING_INTERVAL)
                if message is not None and message["type"] in ("subscribe", "psubscribe"):
                    confirmed += 1
        # Invalidations may have been missed while unsubscribed: forget every front copy.
        self.store.forget_all()
        self.subscribed = True
        self._subscription.set()
        if self.link.breaker.succeeded():
            log.info("redis is reachable again")

    async def _receive(self, pubsub: PubSub) -> None:
        """Dispatch messages until the subscription fails, or returns when Sentinel moved the
        primary (the subscription must move too)."""
        pinged = False
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            await self.link.probe()
            if loop.time() - checked >= PING_INTERVAL:
                checked = loop.time()
                if await self._primary_moved():
                    log.info("redis primary moved, following it")
                    return
            message = await pubsub.get_message(timeout=PING_INTERVAL)
            if message is None:
                if pinged:
                    raise TimeoutError("no answer to a ping on the subscription")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] == "message":
                self._invalidated(message["data"])
            elif message["type"] == "pmessage":
                flight_digest = self.keys.done_digest(_text(message["channel"]))
                if flight_digest is not None:
                    self.coordinator.notify(flight_digest, message["data"])

    async def _primary_moved(self) -> bool:
        with suppress(*UNREACHABLE):
            async with asyncio.timeout(self.link.timeout):
                return await self.clients.primary_moved()
        return False

    def _invalidated(self, data: bytes) -> None:
        origin, key_digest, kind = [*_text(data).split(" "), "", ""][:3]
        if origin != self.back.origin and key_digest:
            self.store.forget(key_digest, deleted=kind == "del")
            if self.on_change is not None:
                self.on_change(key_digest)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
