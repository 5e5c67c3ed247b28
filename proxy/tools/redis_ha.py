"""Throwaway Redis deployments that survive a node loss: a Sentinel group and a Cluster.

For the tests of the proxy against ``redis+sentinel://`` and ``redis+cluster://``::

    async with LocalSentinelGroup() as group:      # a primary, a replica, three sentinels
        settings = replace(settings, redis_url=group.url)
        ...
        await group.failover()                     # SENTINEL FAILOVER; returns the new primary

    async with LocalCluster() as cluster:          # three primaries sharing the 16384 slots
        settings = replace(settings, redis_url=cluster.url)

Every process is a ``LocalRedis`` (``redis-server``, in sentinel mode for the sentinels) on a free
loopback port in a temporary directory; the cluster is joined with ``redis-cli --cluster create``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.ops.lifetime import StartsAndCloses
from proxy.tools.replicas import LocalRedis

SERVICE = "mymaster"


async def _until(condition: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    """Poll ``condition`` on a short tick until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _ask(port: int, command: Callable[[Redis], Awaitable[Any]]) -> Any:
    """One command to the server on ``port``; ``None`` when it does not answer (yet)."""
    client = Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
    try:
        return await command(client)
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()


def _primary_address(client: Redis) -> Awaitable[Any]:
    return client.sentinel_get_master_addr_by_name(SERVICE)


class _Processes(StartsAndCloses):
    """Closing a group of ``LocalRedis`` processes, also when starting them failed half-way."""

    def __init__(self) -> None:
        self.processes: list[LocalRedis] = []

    async def spawn(self, server: LocalRedis) -> LocalRedis:
        self.processes.append(server)
        await server.start()
        return server

    async def close(self) -> None:
        for server in reversed(self.processes):
            with suppress(Exception):
                await server.close()
        self.processes.clear()


class LocalSentinelGroup(_Processes):
    """A primary, a replica of it, and three sentinels (quorum 2) watching them as ``SERVICE``.

    Sentinels declare a primary down after ``down_after_ms`` of silence, so a killed primary is
    replaced within a second or two; ``failover`` asks for a graceful switch instead.
    """

    def __init__(
        self,
        *,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 3000,
        primary_options: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.primary_options = primary_options
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: dict[int, LocalRedis] = {}
        self.sentinels: list[LocalRedis] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    async def start(self) -> None:
        # A full sync starts at once, not after diskless replication's default 5 s pause.
        quick = ("--repl-diskless-sync-delay", "0")
        primary = await self.spawn(LocalRedis(options=(*quick, *self.primary_options)))
        replica = await self.spawn(
            LocalRedis(options=(*quick, "--replicaof", "127.0.0.1", str(primary.port)))
        )
        self.servers = {primary.port: primary, replica.port: replica}
        await _until(self._replicating, within=15, what="the replica to sync with the primary")
        config = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
        )
        for _ in range(3):
            self.sentinels.append(await self.spawn(LocalRedis(sentinel=config)))
        await _until(self._watching, within=15, what="the sentinels to know each other")

    async def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            address = await _ask(sentinel.port, _primary_address)
            if address:
                return int(address[1])
        return None

    async def failover(self, *, within: float = 20.0, demoted: bool = True) -> int:
        """Promote the replica (``SENTINEL FAILOVER``); the new primary's port, once every
        sentinel names it, it accepts writes and (with ``demoted``) the old primary follows it."""
        before = await self.primary_port()
        await _until(
            lambda: self._failover_accepted(),
            within=within,
            what="a sentinel to accept the failover",
        )
        await _until(
            lambda: self._switched(before, demoted),
            within=within,
            what="the sentinels to switch primary",
        )
        after = await self.primary_port()
        assert after is not None
        return after

    async def _failover_accepted(self) -> bool:
        answer = await _ask(self.sentinels[0].port, lambda c: c.sentinel_failover(SERVICE))
        return answer is not None

    async def _switched(self, before: int | None, demoted: bool) -> bool:
        ports = set()
        for sentinel in self.sentinels:
            address = await _ask(sentinel.port, _primary_address)
            ports.add(int(address[1]) if address else None)
        (port,) = ports if len(ports) == 1 else (None,)
        if port is None or port == before:
            return False
        if await self._role(port) != "master":
            return False
        # Until the sentinels turn the old primary into a replica, it still takes writes from
        # clients connected to it: the failover is over when it has.
        old = self.servers.get(before) if before is not None else None
        if not demoted or old is None or old.pid is None:
            return True
        return await self._role(before) == "slave"

    @staticmethod
    async def _role(port: int | None) -> str | None:
        if port is None:
            return None
        role = await _ask(port, lambda c: c.execute_command("ROLE"))  # type: ignore[no-untyped-call]
        return str(role[0]) if role else None

    async def _replicating(self) -> bool:
        for port, server in self.servers.items():
            if "--replicaof" in server.options:
                info = await _ask(port, lambda c: c.info("replication"))
                return bool(info) and info.get("master_link_status") == "up"
        return False

    async def _watching(self) -> bool:
        for sentinel in self.sentinels:
            known = await _ask(sentinel.port, lambda c: c.sentinel_sentinels(SERVICE))
            replicas = await _ask(sentinel.port, lambda c: c.sentinel_slaves(SERVICE))
            if known is None or len(known) < 2 or not replicas:
                return False
        return True


class LocalCluster(_Processes):
    """``size`` primaries with cluster mode on, sharing the slots (no replicas)."""

    def __init__(self, size: int = 3, *, node_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.size = size
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[LocalRedis] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    async def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli not found: apt-get install -y redis-tools")
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout_ms))
        for _ in range(self.size):
            self.nodes.append(await self.spawn(LocalRedis(options=options)))
        create = await asyncio.create_subprocess_exec(
            cli, "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await create.communicate()
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {output.decode()[-500:]}")
        await _until(self._formed, within=20, what="every node to see the whole cluster")

    async def _formed(self) -> bool:
        for node in self.nodes:
            info = await _ask(node.port, lambda c: c.cluster("INFO"))
            if not info or info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_known_nodes", 0)) != self.size:
                return False
        return True
