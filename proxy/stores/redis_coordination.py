"""Fetch coordination across replicas in Redis: one lock per flight, and a notice when done.

``RedisCoordinator`` is the Redis ``Coordinator`` (``proxy.stores.coordination``); the notices
reach it through the subscription that ``RedisShare`` keeps (``notify``, ``wake_all``).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import KW_ONLY, dataclass, field

from proxy.stores.base import StoreError
from proxy.stores.coordination import Claim, Notice
from proxy.stores.keys import RedisKeys, key_digest
from proxy.stores.redis_link import RedisLink

_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -3 end
return redis.call('pttl', KEYS[1])
"""
_ACQUIRED = -3
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[2], ARGV[3])
return 1
"""


@dataclass(eq=False)
class RedisCoordinator:
    """Coalesces a flight across replicas with a lock in Redis and a wake-up on pub/sub.

    The first replica to ``SET NX`` the flight's lock fetches; it renews the lock while it works
    and, when done, deletes it (only if still its own) and publishes a ``Notice`` in one script.
    The others wait for that notice, at most until the lock would expire, so a holder that died
    blocks no one for longer than ``lock_ttl``; then they try to take the lock themselves.
    Waiting needs the subscription: without it (Redis trouble) a replica fetches alone.
    """

    link: RedisLink
    keys: RedisKeys
    _: KW_ONLY
    lock_ttl: float
    max_wait: float
    subscribed: Callable[[], bool]
    _waiters: dict[str, set[asyncio.Future[Notice | None]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._lock_ms = max(1, math.ceil(self.lock_ttl * 1000))
        client = self.link.client
        self._acquire = client.register_script(_ACQUIRE)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)

    @property
    def waiting(self) -> int:
        """Flights this replica is waiting on another replica for."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def claim(self, flight: str) -> AbstractAsyncContextManager[Claim]:
        return self._claim(flight)

    @asynccontextmanager
    async def _claim(self, flight: str) -> AsyncIterator[Claim]:
        flight_digest = key_digest(flight)
        lock = self.keys.lock(flight_digest)
        token = secrets.token_hex(16)
        acquired, notice = await self._contend(flight_digest, lock, token)
        if notice is not None:
            yield Claim(notice)
            return
        if not acquired:
            yield Claim()
            return
        renewal = asyncio.create_task(self._renew(lock, token))
        claim = Claim()
        try:
            yield claim
        finally:
            renewal.cancel()
            announced = claim.announced
            payload = json.dumps({"t": announced.response_time, "r": announced.revalidated})
            args = [token, self.keys.done(flight_digest), payload]
            with suppress(StoreError):
                await self.link.run(lambda client: self._release(keys=[lock], args=args))

    async def _contend(
        self, flight_digest: str, lock: str, token: str
    ) -> tuple[bool, Notice | None]:
        """Take the lock, or wait for its holder's notice: ``(acquired, notice)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        args: list[str | int] = [token, self._lock_ms]
        while self.subscribed():
            # Listen before trying: a notice published after a failed attempt cannot be missed.
            waiter: asyncio.Future[Notice | None] = loop.create_future()
            waiters = self._waiters.setdefault(flight_digest, set())
            waiters.add(waiter)
            try:
                try:
                    pttl = await self.link.run(lambda client: self._acquire(keys=[lock], args=args))
                except StoreError:
                    return False, None
                if pttl == _ACQUIRED:
                    return True, None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False, None
                expiry = pttl / 1000 if pttl >= 0 else self.lock_ttl
                try:
                    async with asyncio.timeout(min(remaining, expiry + 0.005)):
                        notice = await waiter
                except TimeoutError:
                    continue  # the lock expired (its holder died) or was renewed: try again
                if notice is not None:
                    return False, notice
            finally:
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(flight_digest, None)
        return False, None

    async def _renew(self, lock: str, token: str) -> None:
        args: list[str | int] = [token, self._lock_ms]
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            with suppress(StoreError):
                if not await self.link.run(lambda client: self._extend(keys=[lock], args=args)):
                    return

    def notify(self, flight_digest: str, payload: bytes) -> None:
        """Wake the waiters of a flight with the notice its holder published."""
        waiters = self._waiters.get(flight_digest)
        if not waiters:
            return
        notice = parse_notice(payload)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(notice)

    def wake_all(self) -> None:
        """The subscription is gone: no notice can come, so nobody should keep waiting for one."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def parse_notice(payload: bytes) -> Notice:
    try:
        fields = json.loads(payload)
        moment = fields["t"]
        if moment is not None and (isinstance(moment, bool) or not isinstance(moment, int | float)):
            return Notice()
        return Notice(None if moment is None else float(moment), fields.get("r") is True)
    except (ValueError, TypeError, KeyError):
        return Notice()
