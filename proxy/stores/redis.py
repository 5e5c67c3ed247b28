"""The Redis tier: a cache shared by every replica, their fetch coordination and invalidation.

One ``RedisShare`` per replica owns the clients, a circuit breaker and the pub/sub listener,
and hands the application a ``TieredStore`` (an in-process front over Redis) and a
``RedisCoordinator``. Every Redis call is bounded by ``--redis-timeout-ms`` and wrapped: a dead,
slow or full Redis turns into a ``StoreError`` the tiers absorb (front tier, then upstream), is
counted in ``cacheproxy_store_errors_total{backend="redis"}``, and never reaches a client. The
Redis may be one server, a Sentinel-managed primary or a Cluster (``proxy.stores.redis_clients``):
every operation touches one key, so the same code serves all three.

Names in Redis (``{prefix}`` is ``--redis-prefix``; ``h(x)`` the SHA-256 of ``x`` in hex, so no
path, query or credential is stored in clear):

- ``{prefix}:{h(cache key)}``: the record, in the versioned format of ``proxy.core.codec``, expiring
  with its retention time.
- ``{prefix}:lock:{h(flight)}``: who is fetching a flight, expiring unless renewed.
- channel ``{prefix}:done:{h(flight)}``: the holder's ``Notice`` when its fetch is over.
- channel ``{prefix}:invalidate``: "``origin digest set|del``" after every write or delete, so
  the other replicas drop their in-process copy (and, after a delete, refuse to store what a
  fetch that started before it brings back).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import TypeVar

from cachetools import TLRUCache
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from proxy.core.codec import CodecError, decode_record, encode_record
from proxy.core.models import Record
from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics
from proxy.stores.coordination import Claim, Notice
from proxy.stores.memory import MemoryStore, StoreError
from proxy.stores.redis_clients import RedisClient, RedisClients

log = logging.getLogger("proxy.redis")
T = TypeVar("T")

#: Seconds between liveness pings on an idle subscription; two silent periods mean it is dead.
PING_INTERVAL = 1.0
#: Longest pause between attempts to reach a Redis that is down (circuit and subscription).
MAX_BACKOFF = 2.0

#: Replies meaning "not now" (a cluster or a failover in transition), not "no": like a lost link.
_UNAVAILABLE_REPLIES = (ClusterDownError, TryAgainError, ReadOnlyError)
#: Failures meaning Redis cannot answer (a cluster client's own errors are no ``RedisError``).
_UNREACHABLE = (RedisError, RedisClusterException, OSError, TimeoutError)

_READ = """
return {redis.call('get', KEYS[1]), redis.call('pttl', KEYS[1])}
"""
_STORE = """
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('publish', ARGV[3], ARGV[4])
return 1
"""
_DELETE = """
redis.call('del', KEYS[1])
redis.call('publish', ARGV[1], ARGV[2])
return 1
"""
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


#: Keys whose digest ``TieredStore`` keeps (as many as the front's memo of prepared hits); past
#: it the memo starts over. Longer keys are hashed on each use, so the memo stays under ~5 MiB
#: whatever targets clients send.
MAX_DIGESTS = 4096
MAX_DIGESTED_KEY = 1024


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class RedisKeys:
    """The names this replica uses in Redis, all under one prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.invalidate = f"{prefix}:invalidate"
        self.done_pattern = f"{prefix}:done:*"
        self._done = f"{prefix}:done:"

    def record(self, key: str) -> str:
        return f"{self.prefix}:{digest(key)}"

    def lock(self, flight_digest: str) -> str:
        return f"{self.prefix}:lock:{flight_digest}"

    def done(self, flight_digest: str) -> str:
        return self._done + flight_digest

    def done_digest(self, channel: str) -> str | None:
        return channel[len(self._done) :] if channel.startswith(self._done) else None


class CircuitBreaker:
    """Stops calling a Redis that keeps failing, so an outage costs one timeout per backoff
    period instead of one per request.

    Closed until ``threshold`` consecutive connection failures; then open for a backoff that
    doubles up to ``maximum``; after it, one call is let through as a probe (half-open).
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        initial: float = 0.1,
        maximum: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.initial = initial
        self.maximum = maximum
        self.clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._delay = initial
        self._probing = False

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


class RedisLink:
    """Runs Redis operations within the timeout, behind the circuit breaker, counting failures."""

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout: float,
        on_error: Callable[[], None],
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.on_error = on_error
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    async def run(self, operation: Callable[[RedisClient], Awaitable[T]]) -> T:
        """The operation's result, or ``StoreError`` (counted) when Redis cannot give it."""
        if not self.breaker.allow():
            self.on_error()
            raise StoreError("redis is unavailable (circuit open)")
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation(self.client)
        except _UNAVAILABLE_REPLIES as error:
            self._unreachable(error)
            raise StoreError("redis is unavailable") from error
        except ResponseError as error:
            # Redis answered, with a refusal (out of memory, a wrong type): the link is fine.
            self.breaker.succeeded()
            self.on_error()
            raise StoreError(f"redis refused: {error}") from error
        except _UNREACHABLE as error:
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
            log.warning("redis unavailable, serving from memory and upstream: %s", _why(error))

    async def probe(self) -> None:
        """Ping Redis when the circuit is due for it, so it closes again without traffic."""
        if self.breaker.due:
            with suppress(StoreError):
                await self.run(lambda client: client.ping())

    def trip(self, reason: str) -> None:
        if self.breaker.trip():
            log.warning("redis unavailable, serving from memory and upstream: %s", reason)


class RedisStore:
    """Records in Redis under hashed keys, in the versioned codec, expiring with their retention.

    Each write and delete also publishes the key's digest on the invalidation channel, in the
    same round trip, so the other replicas drop their in-process copy. An entry that does not
    decode (another format version, garbage) is a miss, counted through ``on_unreadable``; it is
    left in place, since a newer replica may be reading it, and the next store overwrites it.
    """

    backend = "redis"

    def __init__(
        self,
        link: RedisLink,
        keys: RedisKeys,
        *,
        origin: str = "",
        on_unreadable: Callable[[], None] = lambda: None,
    ) -> None:
        self.link = link
        self.keys = keys
        self.origin = origin or secrets.token_hex(8)
        self.on_unreadable = on_unreadable
        self._read = link.client.register_script(_READ)
        self._store = link.client.register_script(_STORE)
        self._delete = link.client.register_script(_DELETE)

    async def get(self, key: str) -> Record | None:
        record, _ttl = await self.get_with_ttl(key)
        return record

    async def get_with_ttl(self, key: str) -> tuple[Record | None, float]:
        """The record and the seconds Redis keeps it for (``inf`` when it has no expiry)."""
        name = self.keys.record(key)
        # One script rather than MULTI: atomic on one server and on a cluster alike.
        data, pttl = await self.link.run(lambda client: self._read(keys=[name]))
        if data is None:
            return None, 0.0
        try:
            record = decode_record(data)
        except CodecError as error:
            log.debug("unreadable entry %s: %s", name, error)
            self.on_unreadable()
            return None, 0.0
        return record, math.inf if pttl < 0 else pttl / 1000

    async def set(self, key: str, record: Record, ttl: float) -> None:
        if ttl <= 0:
            await self.delete(key)
            return
        data = encode_record(record)
        milliseconds = max(1, math.ceil(ttl * 1000))
        await self._write(self._store, key, "set", data, milliseconds)

    async def delete(self, key: str) -> None:
        await self._write(self._delete, key, "del")

    async def _write(self, script: AsyncScript, key: str, kind: str, *values: bytes | int) -> None:
        # A script, not a pipeline: a cluster refuses PUBLISH in a pipeline, and the write and
        # its announcement are then one atomic step on one server and on a cluster alike.
        args = [*values, self.keys.invalidate, f"{self.origin} {digest(key)} {kind}"]
        name = self.keys.record(key)
        await self.link.run(lambda client: script(keys=[name], args=args))

    async def ready(self) -> bool:
        try:
            return bool(await self.link.run(lambda client: client.ping()))
        except StoreError:
            return False

    async def close(self) -> None:
        """The clients belong to the ``RedisShare``; nothing of this store's own to release."""

    @property
    def entries(self) -> int:
        return 0

    @property
    def bytes(self) -> int:
        return 0


class TieredStore:
    """An in-process front over the shared Redis store.

    Reads try the front, then Redis (filling the front); writes go to both. A front copy of a
    shared entry lives at most ``local_ttl`` seconds, so replicas converge quickly on what
    another one stored, and is dropped at once when another replica writes or deletes the key.
    When Redis cannot take a write, the front keeps the entry for its whole retention: the proxy
    then works as a lone replica until Redis is back.

    A key another replica deleted is remembered for ``remember`` seconds: a record whose newest
    response was requested before the delete is not stored, or a poll in flight here while a
    DELETE went through another replica would put the pre-DELETE body back for everyone (§4.4).
    """

    backend = "redis"

    def __init__(
        self,
        front: MemoryStore,
        back: RedisStore,
        *,
        local_ttl: float,
        clock: Callable[[], float],
        remember: float = 60.0,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.front = front
        self.back = back
        self.local_ttl = local_ttl
        self.clock = clock
        self.healthy = healthy
        self._deleted: TLRUCache[str, float] = TLRUCache(
            maxsize=100_000, ttu=lambda _key, at, _now: at + remember, timer=clock
        )
        self._digests: dict[str, str] = {}

    def digest(self, key: str) -> str:
        """The front's key for ``key`` (what invalidation notices carry), memoised: a hit then
        costs a dict lookup, not a SHA-256."""
        found = self._digests.get(key)
        if found is None:
            if len(key) > MAX_DIGESTED_KEY:
                return digest(key)
            if len(self._digests) >= MAX_DIGESTS:
                self._digests.clear()
            found = self._digests[key] = digest(key)
        return found

    async def get(self, key: str) -> Record | None:
        record = self.front.get_nowait(self.digest(key))
        if record is not None:
            return record
        return await self.get_shared(key)

    def get_nowait(self, key: str) -> Record | None:
        """The front copy alone (what ``get`` answers without Redis), for the front's fast
        path: it expires after ``local_ttl`` and is dropped on another replica's notice, so a
        miss here takes the full path, which reads Redis."""
        return self.front.get_nowait(self.digest(key))

    async def get_shared(self, key: str) -> Record | None:
        """Read ``key`` from Redis past the front copy: what another replica may have stored."""
        try:
            record, remaining = await self.back.get_with_ttl(key)
        except StoreError:
            return None
        if record is not None:
            self.front.set_nowait(self.digest(key), record, min(self.local_ttl, remaining))
        return record

    async def set(self, key: str, record: Record, ttl: float) -> None:
        deleted_at = self.deleted_at(key)
        if deleted_at is not None and record and record[0].request_time <= deleted_at:
            return
        try:
            await self.back.set(key, record, ttl)
        except StoreError:
            shared = False
        else:
            shared = True
        self.front.set_nowait(self.digest(key), record, min(ttl, self.local_ttl) if shared else ttl)

    async def delete(self, key: str) -> None:
        self.front.delete_nowait(self.digest(key))
        with suppress(StoreError):
            await self.back.delete(key)

    def forget(self, key_digest: str, *, deleted: bool = False) -> None:
        """Drop the front copy of a key another replica changed (and note when it deleted it)."""
        self.front.delete_nowait(key_digest)
        if deleted:
            self._deleted[key_digest] = self.clock()

    def deleted_at(self, key: str) -> float | None:
        """When another replica last deleted ``key``, within the last ``remember`` seconds."""
        return self._deleted.get(self.digest(key))

    def forget_all(self) -> None:
        self.front.clear()

    async def ready(self) -> bool:
        return self.healthy() and await self.back.ready()

    async def close(self) -> None:
        await self.front.close()

    @property
    def entries(self) -> int:
        return self.front.entries

    @property
    def bytes(self) -> int:
        return self.front.bytes


class RedisCoordinator:
    """Coalesces a flight across replicas with a lock in Redis and a wake-up on pub/sub.

    The first replica to ``SET NX`` the flight's lock fetches; it renews the lock while it works
    and, when done, deletes it (only if still its own) and publishes a ``Notice`` in one script.
    The others wait for that notice, at most until the lock would expire, so a holder that died
    blocks no one for longer than ``lock_ttl``; then they try to take the lock themselves.
    Waiting needs the subscription: without it (Redis trouble) a replica fetches alone.
    """

    def __init__(
        self,
        link: RedisLink,
        keys: RedisKeys,
        *,
        lock_ttl: float,
        max_wait: float,
        subscribed: Callable[[], bool],
    ) -> None:
        self.link = link
        self.keys = keys
        self.lock_ttl = lock_ttl
        self.max_wait = max_wait
        self.subscribed = subscribed
        self._lock_ms = max(1, math.ceil(lock_ttl * 1000))
        self._waiters: dict[str, set[asyncio.Future[Notice | None]]] = {}
        self._acquire = link.client.register_script(_ACQUIRE)
        self._extend = link.client.register_script(_EXTEND)
        self._release = link.client.register_script(_RELEASE)

    @property
    def waiting(self) -> int:
        """Flights this replica is waiting on another replica for."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def claim(self, flight: str) -> AbstractAsyncContextManager[Claim]:
        return self._claim(flight)

    @asynccontextmanager
    async def _claim(self, flight: str) -> AsyncIterator[Claim]:
        flight_digest = digest(flight)
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
        notice = _parse_notice(payload)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(notice)

    def wake_all(self) -> None:
        """The subscription is gone: no notice can come, so nobody should keep waiting for one."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _parse_notice(payload: bytes) -> Notice:
    try:
        fields = json.loads(payload)
        moment = fields["t"]
        if moment is not None and (isinstance(moment, bool) or not isinstance(moment, int | float)):
            return Notice()
        return Notice(None if moment is None else float(moment), fields.get("r") is True)
    except (ValueError, TypeError, KeyError):
        return Notice()


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
            settings.cache_max_bytes, clock=clock, on_evict=metrics.cache_evictions.inc
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
            except _UNREACHABLE as error:
                if self.subscribed:
                    log.warning("redis subscription lost: %s", _why(error))
                self.link.trip(f"subscription failed: {_why(error)}")
            finally:
                self.subscribed = False
                self._subscription.clear()
                self.coordinator.wake_all()
                with suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(PING_INTERVAL):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
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
        with suppress(*_UNREACHABLE):
            async with asyncio.timeout(self.link.timeout):
                return await self.clients.primary_moved()
        return False

    def _invalidated(self, data: bytes) -> None:
        origin, key_digest, kind = [*_text(data).split(" "), "", ""][:3]
        if origin != self.back.origin and key_digest:
            self.store.forget(key_digest, deleted=kind == "del")
            if self.on_change is not None:
                self.on_change(key_digest)


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
