"""The shared cache in Redis (``RedisStore``) and the in-process front over it (``TieredStore``).

Records live in Redis under ``key_digest`` names (``proxy.stores.keys``), in the versioned
codec, expiring with their retention; every write and delete announces itself on the
invalidation channel in the same script, so the other replicas drop their copy.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from contextlib import suppress
from dataclasses import KW_ONLY, InitVar, dataclass, field

from cachetools import TLRUCache
from redis.commands.core import AsyncScript

from proxy.core.codec import CodecError, decode_record, encode_record
from proxy.core.models import Record
from proxy.stores.base import StoreError
from proxy.stores.keys import RedisKeys, key_digest
from proxy.stores.memory import MemoryStore
from proxy.stores.redis_link import RedisLink

log = logging.getLogger("proxy.redis")

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

#: Keys whose digest ``TieredStore`` keeps (as many as the front's memo of prepared hits); past
#: it the memo starts over. Longer keys are hashed on each use, so the memo stays under ~5 MiB
#: whatever targets clients send.
MAX_DIGESTS = 4096
MAX_DIGESTED_KEY = 1024


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
        args = [*values, self.keys.invalidate, f"{self.origin} {key_digest(key)} {kind}"]
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


@dataclass(eq=False)
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

    front: MemoryStore
    back: RedisStore
    _: KW_ONLY
    local_ttl: float
    clock: Callable[[], float]
    remember: InitVar[float] = 60.0
    healthy: Callable[[], bool] = lambda: True
    _digests: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self, remember: float) -> None:
        self._deleted: TLRUCache[str, float] = TLRUCache(
            maxsize=100_000, ttu=lambda _key, at, _now: at + remember, timer=self.clock
        )

    def digest(self, key: str) -> str:
        """The front's key for ``key`` (what invalidation notices carry), memoised: a hit then
        costs a dict lookup, not a SHA-256."""
        found = self._digests.get(key)
        if found is None:
            if len(key) > MAX_DIGESTED_KEY:
                return key_digest(key)
            if len(self._digests) >= MAX_DIGESTS:
                self._digests.clear()
            found = self._digests[key] = key_digest(key)
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
