"""redis-py's own clients for one Redis server, a Sentinel-managed primary, or a Redis Cluster.

The Redis tier (``proxy.stores.redis``) needs two things of any deployment: a pooled client for
commands, and subscriptions that hear every ``PUBLISH``.

- One server (``redis://``, ``rediss://``, ``unix://``): a client on a blocking pool, and one of
  its own for the subscription.
- Sentinel (``redis+sentinel://``): ``redis.asyncio.sentinel.Sentinel.master_for``. Each new
  connection asks the sentinels where the primary is; a connection to a primary that became a
  replica answers ``READONLY``, which redis-py turns into a ``ConnectionError`` and a reconnect,
  so a failover costs the calls in flight a retry or a miss, never a wrong answer.
- Cluster (``redis+cluster://``): ``redis.asyncio.cluster.RedisCluster``. Every command the tier
  sends names one key (records and locks; each script takes exactly one), so no operation spans
  hash slots and no hash tags are needed. A classic ``PUBLISH`` in a cluster is forwarded to every
  node over the cluster bus, so a subscription on any one node hears every replica's messages
  (pattern subscriptions included, which sharded pub/sub lacks); it is a plain client on one of
  the cluster's nodes, moving to the next node after a failure.
"""

from __future__ import annotations

import secrets
from typing import Any, TypeAlias, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.ops.redis_url import is_multi_node, parse_redis_nodes, redacted_url

#: A client any topology gives: commands, scripts and non-transactional pipelines.
RedisClient: TypeAlias = Redis | RedisCluster


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's pool: waits for a free connection (as with one server) instead of failing
    when all are busy, and never hands out or keeps a connection to a former primary.

    redis-py's asyncio pool drops idle connections when discovery names a new primary, but puts
    a connection that was in use back as it is, wherever it points (its sync pool checks
    ``owns_connection``); until the sentinels demote the old primary, such a connection would
    go on writing there.
    """

    async def ensure_connection(self, connection: Any) -> None:
        if self._elsewhere(connection):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def release(self, connection: Any) -> None:
        if self._elsewhere(connection):
            await connection.disconnect()
        await super().release(connection)

    def _elsewhere(self, connection: Any) -> bool:
        primary = _address(self.master_address)
        return (
            primary is not None
            and connection.is_connected
            and _address((connection.host, connection.port)) != primary
        )


class RedisClients:
    """The command client and the subscriptions of one deployment, made from ``--redis-url``."""

    def __init__(
        self, url: str, *, timeout: float, listen_timeout: float, max_connections: int
    ) -> None:
        self.description = redacted_url(url)
        common: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            # One immediate retry on a broken connection, so a pooled connection that died with
            # a restarted Redis costs nothing; any other retrying is the breaker's to decide.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        self._common = common
        self._listen_timeout = listen_timeout
        self._cluster: RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._listeners: dict[tuple[str, int], Redis] = {}
        self._turn = secrets.randbelow(1 << 16)
        self._primary_pool: SentinelConnectionPool | None = None
        if not is_multi_node(url):
            self.kind = "server"
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout,
                socket_timeout=timeout,
                **common,
            )
            self.client: RedisClient = Redis.from_pool(pool)
            self._listener: Redis | None = Redis.from_url(
                url, socket_timeout=listen_timeout, **common
            )
            return
        nodes = parse_redis_nodes(url)
        self.kind = nodes.kind
        credentials: dict[str, Any] = {"username": nodes.username, "password": nodes.password}
        if nodes.kind == "sentinel":
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                list(nodes.nodes),
                sentinel_kwargs={
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "password": nodes.sentinel_password,
                },
                db=nodes.db,
                **credentials,
                **common,
            )
            primary: Redis = self._sentinel.master_for(
                nodes.service,
                connection_pool_class=BlockingSentinelConnectionPool,
                max_connections=max_connections,
                timeout=timeout,
                socket_timeout=timeout,
            )
            self._listener = self._sentinel.master_for(nodes.service, socket_timeout=listen_timeout)
            self.client = primary
            self._primary_pool = cast(SentinelConnectionPool, primary.connection_pool)
            return
        self._startup = [ClusterNode(host, port) for host, port in nodes.nodes]
        self._cluster = RedisCluster(
            startup_nodes=self._startup,
            max_connections=max_connections,
            socket_timeout=timeout,
            **credentials,
            **common,
        )
        self._credentials = credentials
        self.client = self._cluster
        self._listener = None

    async def primary_moved(self) -> bool:
        """With Sentinel, ask where the primary is now; true when the subscription is elsewhere.

        After a failover the old primary goes on taking writes from clients connected to it
        until the sentinels reconfigure it (up to about ten seconds; never, if they cannot
        reach it), and its subscribers hear only what is published there. Asking once a
        second moves the command pool (see ``BlockingSentinelConnectionPool``) and tells the
        tier to resubscribe.
        """
        if self._primary_pool is None or self._listener is None:
            return False
        found = await self._primary_pool.get_master_address()  # type: ignore[no-untyped-call]
        listener_pool = cast(SentinelConnectionPool, self._listener.connection_pool)
        listening = _address(listener_pool.master_address)
        return listening is not None and _address(found) != listening

    def pubsub(self) -> PubSub:
        """A new subscription on a node that hears every replica's ``PUBLISH``."""
        if self._listener is not None:
            return self._listener.pubsub()
        assert self._cluster is not None
        known = self._cluster.get_nodes() or self._startup
        node = known[self._turn % len(known)]
        self._turn += 1
        address = (node.host, int(node.port))
        listener = self._listeners.get(address)
        if listener is None:
            listener = Redis(
                host=address[0],
                port=address[1],
                socket_timeout=self._listen_timeout,
                **self._credentials,
                **self._common,
            )
            self._listeners[address] = listener
        return listener.pubsub()

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._listener is not None:
            await self._listener.aclose()
        for listener in self._listeners.values():
            await listener.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


def _address(found: Any) -> tuple[str, int] | None:
    return None if found is None else (str(found[0]), int(found[1]))
