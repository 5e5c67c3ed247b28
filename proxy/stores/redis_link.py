"""Calls to Redis that cannot hurt a request: bounded, behind a circuit breaker, counted.

Every Redis call is bounded by ``--redis-timeout-ms`` and wrapped: a dead, slow or full Redis
turns into a ``StoreError`` the tiers absorb (front tier, then upstream), is counted in
``cacheproxy_store_errors_total{backend="redis"}``, and never reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import KW_ONLY, dataclass, field
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from proxy.stores.base import StoreError
from proxy.stores.redis_clients import RedisClient

log = logging.getLogger("proxy.redis")
T = TypeVar("T")

#: Longest pause between attempts to reach a Redis that is down (circuit and subscription).
MAX_BACKOFF = 2.0

#: Replies meaning "not now" (a cluster or a failover in transition), not "no": like a lost link.
UNAVAILABLE_REPLIES = (ClusterDownError, TryAgainError, ReadOnlyError)
#: Failures meaning Redis cannot answer (a cluster client's own errors are no ``RedisError``).
UNREACHABLE = (RedisError, RedisClusterException, OSError, TimeoutError)


@dataclass(eq=False)
class CircuitBreaker:
    """Stops calling a Redis that keeps failing, so an outage costs one timeout per backoff
    period instead of one per request.

    Closed until ``threshold`` consecutive connection failures; then open for a backoff that
    doubles up to ``maximum``; after it, one call is let through as a probe (half-open).
    """

    _: KW_ONLY
    threshold: int = 3
    initial: float = 0.1
    maximum: float = MAX_BACKOFF
    clock: Callable[[], float] = time.monotonic
    _failures: int = field(default=0, init=False)
    _open_until: float | None = field(default=None, init=False)
    _probing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._delay = self.initial

    @property
    def closed(self) -> bool:
        return self._open_until is None

    @property
    def due(self) -> bool:
        """Open, with its backoff over and no probe under way."""
        return (
            self._open_until is not None and not self._probing and self.clock() >= self._open_until
        )

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self.clock() < self._open_until:
            return False
        self._probing = True
        return True

    def succeeded(self) -> bool:
        """Record a success; true when this closed an open circuit."""
        reopened = self._open_until is not None
        self._failures = 0
        self._open_until = None
        self._delay = self.initial
        self._probing = False
        return reopened

    def failed(self) -> bool:
        """Record a connection failure; true when this opened a closed circuit."""
        self._probing = False
        self._failures += 1
        if self._open_until is None and self._failures < self.threshold:
            return False
        return self.trip()

    def trip(self) -> bool:
        """Open (again) for the current backoff; true when the circuit was closed."""
        was_closed = self._open_until is None
        self._open_until = self.clock() + self._delay
        self._delay = min(self._delay * 2, self.maximum)
        self._probing = False
        return was_closed

    def abandoned(self) -> None:
        """A call ended without an answer (cancelled): let the next one probe."""
        self._probing = False


@dataclass(eq=False)
class RedisLink:
    """Runs Redis operations within the timeout, behind the circuit breaker, counting failures."""

    client: RedisClient
    _: KW_ONLY
    timeout: float
    on_error: Callable[[], None]
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    async def run(self, operation: Callable[[RedisClient], Awaitable[T]]) -> T:
        """The operation's result, or ``StoreError`` (counted) when Redis cannot give it."""
        if not self.breaker.allow():
            self.on_error()
            raise StoreError("redis is unavailable (circuit open)")
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(self.client)
        except UNAVAILABLE_REPLIES as error:
            self._unreachable(error)
            raise StoreError("redis is unavailable") from error
        except ResponseError as error:
            # Redis answered, with a refusal (out of memory, a wrong type): the link is fine.
            self.breaker.succeeded()
            self.on_error()
            raise StoreError(f"redis refused: {error}") from error
        except UNREACHABLE as error:
            self._unreachable(error)
            raise StoreError("redis is unavailable") from error
        except BaseException:
            self.breaker.abandoned()
            raise
        if self.breaker.succeeded():
            log.info("redis is reachable again")
        return result

    def _unreachable(self, error: BaseException) -> None:
        self.on_error()
        if self.breaker.failed():
            log.warning("redis unavailable, serving from memory and upstream: %s", why(error))

    async def probe(self) -> None:
        """Ping Redis when the circuit is due for it, so it closes again without traffic."""
        if self.breaker.due:
            with suppress(StoreError):
                await self.run(lambda client: client.ping())

    def trip(self, reason: str) -> None:
        if self.breaker.trip():
            log.warning("redis unavailable, serving from memory and upstream: %s", reason)


def why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
