"""The names of cache keys outside this process: one digest for Redis and for long-poll rooms.

A cache key (a request-target) is never written to Redis in clear: records, locks and notices
are named by ``key_digest``. The same digest names a key in the invalidation notices that wake
long polls on other replicas (``proxy.cache.wait``), so both must come from this one function:
were they to drift, cross-replica wake-ups would silently stop.

Names in Redis (``{prefix}`` is ``--redis-prefix``, ``h(x)`` is ``key_digest(x)``):

- ``{prefix}:{h(cache key)}``: the record, in the versioned format of ``proxy.core.codec``, expiring
  with its retention time.
- ``{prefix}:lock:{h(flight)}``: who is fetching a flight, expiring unless renewed.
- channel ``{prefix}:done:{h(flight)}``: the holder's ``Notice`` when its fetch is over.
- channel ``{prefix}:invalidate``: "``origin digest set|del``" after every write or delete, so
  the other replicas drop their in-process copy (and, after a delete, refuse to store what a
  fetch that started before it brings back).
"""

from __future__ import annotations

import hashlib


def key_digest(text: str) -> str:
    """The SHA-256 of a cache key (or flight) in hex: its name in Redis and in notices."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class RedisKeys:
    """The names this replica uses in Redis, all under one prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.invalidate = f"{prefix}:invalidate"
        self.done_pattern = f"{prefix}:done:*"
        self._done = f"{prefix}:done:"

    def record(self, key: str) -> str:
        return f"{self.prefix}:{key_digest(key)}"

    def lock(self, flight_digest: str) -> str:
        return f"{self.prefix}:lock:{flight_digest}"

    def done(self, flight_digest: str) -> str:
        return self._done + flight_digest

    def done_digest(self, channel: str) -> str | None:
        return channel[len(self._done) :] if channel.startswith(self._done) else None
