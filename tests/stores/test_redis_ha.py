"""Replicas sharing a Redis that survives a node loss: Sentinel (``redis+sentinel://``) and
Cluster (``redis+cluster://``), each a set of real ``redis-server`` processes the test starts.

Sentinel: a primary, a replica and three sentinels; a failover (graceful, or the primary killed)
in the middle of load costs clients no 5xx, and the replicas then share through the new primary.
Cluster: three primaries; coalescing, invalidation and degradation work as with one Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.stores.keys import RedisKeys
from proxy.stores.keys import key_digest as digest
from proxy.tools.redis_ha import LocalCluster, LocalSentinelGroup
from proxy.tools.replicas import Replica
from tests.support.redis_fixtures import fleet_at, server_fixture
from tests.support.redis_support import (
    JOB,
    CountingUpstream,
    assert_fetched_again,
    collapsed_gets,
    eventually,
    get,
    readiness,
)

pytest_plugins = ("tests.support.redis_fixtures",)

HaFleet = Callable[..., AbstractAsyncContextManager[list[Replica]]]


sentinels = server_fixture(LocalSentinelGroup, "sentinels")
cluster = server_fixture(LocalCluster, "cluster")


@pytest.fixture
def fleet(origin: TestServer, redis_prefix: str) -> HaFleet:
    """``fleet(url, n, **settings)``: replicas sharing the Sentinel group or cluster at ``url``."""
    return fleet_at(origin, redis_prefix)


def degraded(replica: Replica) -> float:
    return replica.metric("cacheproxy_store_degraded", {"backend": "redis"})


def redis_errors(replica: Replica) -> float:
    return replica.metric("cacheproxy_store_errors_total", {"backend": "redis"})


class Load:
    """Pollers asking both replicas for ever new IDs (every request a miss: a lock, a write and
    a notice in Redis) until stopped, counting the statuses they receive."""

    def __init__(self, http: aiohttp.ClientSession, replicas: list[Replica], workers: int) -> None:
        self.http = http
        self.replicas = replicas
        self.statuses: Counter[int] = Counter()
        self._stop = asyncio.Event()
        self._ids = itertools.count()
        self._tasks = [asyncio.create_task(self._poll()) for _ in range(workers)]

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    async def _poll(self) -> None:
        while not self._stop.is_set():
            path = f"/v1/audio/transcribe/load-{next(self._ids)}"
            for replica in self.replicas:  # the second one hits what the first stored
                async with self.http.get(replica.url + path) as response:
                    await response.read()
                    self.statuses[response.status] += 1

    async def served_more(self, count: int) -> None:
        target = self.done + count
        await eventually(lambda: self.done >= target, within=30, what=f"{count} more answers")

    async def stop(self) -> Counter[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses


@asynccontextmanager
async def load(
    http: aiohttp.ClientSession, replicas: list[Replica], workers: int = 4
) -> AsyncIterator[Load]:
    running = Load(http, replicas, workers)
    try:
        yield running
    finally:
        await running.stop()


async def shared_after(
    http: aiohttp.ClientSession, replicas: list[Replica], upstream: CountingUpstream, path: str
) -> list[str]:
    """Cache-Status of a GET of a new ``path`` through each replica in turn."""
    statuses = []
    for replica in replicas:
        status, cache_status, _ = await get(http, replica, path)
        assert status == 200
        statuses.append(cache_status)
    assert upstream.count(path) == 1
    return statuses


# -- Sentinel --------------------------------------------------------------------------------------


@dataclass
class OnSentinels:
    """Replicas on the test's Sentinel group: ``async with on_sentinels(n, **settings)``."""

    sentinels: LocalSentinelGroup
    fleet: HaFleet
    keys: RedisKeys

    def __call__(
        self, count: int, **settings: object
    ) -> AbstractAsyncContextManager[list[Replica]]:
        return self.fleet(self.sentinels.url, count, **settings)

    async def on_primary(self, path: str) -> bool:
        """Whether the group's current primary holds the record of ``path``."""
        async with Redis(port=await self.sentinels.primary_port()) as admin:
            return bool(await admin.exists(self.keys.record(path)) == 1)


@pytest.fixture
def on_sentinels(sentinels: LocalSentinelGroup, fleet: HaFleet, redis_prefix: str) -> OnSentinels:
    return OnSentinels(sentinels, fleet, RedisKeys(redis_prefix))


async def test_replicas_share_through_the_primary_sentinel_names(
    on_sentinels: OnSentinels, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    async with on_sentinels(2) as (first, second):
        statuses = await shared_after(http, [first, second], upstream, JOB)
        ready = [await readiness(http, replica) for replica in (first, second)]
    assert "fwd=uri-miss" in statuses[0] and "; hit" in statuses[1]
    assert [(status, body["status"]) for status, body in ready] == [(200, "ready")] * 2
    assert await on_sentinels.on_primary(JOB)


async def test_a_sentinel_failover_under_load_costs_no_5xx_and_sharing_resumes(
    on_sentinels: OnSentinels, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    sentinels = on_sentinels.sentinels
    before = await sentinels.primary_port()
    async with on_sentinels(2) as replicas:
        async with load(http, replicas) as running:
            await running.served_more(40)
            after = await sentinels.failover()
            await eventually(
                lambda: all(degraded(replica) == 0 for replica in replicas),
                within=30,
                what="the replicas to follow the new primary",
            )
            await running.served_more(40)
        statuses = running.statuses
        path = "/v1/audio/transcribe/after-failover"
        shared = await shared_after(http, replicas, upstream, path)
    assert after != before and await sentinels.primary_port() == after
    assert set(statuses) == {200}, statuses
    assert "fwd=uri-miss" in shared[0] and "; hit" in shared[1]
    assert await on_sentinels.on_primary(path)


async def test_replicas_leave_a_primary_the_sentinels_replaced_even_if_it_stays_a_primary(
    fleet: HaFleet, upstream: CountingUpstream, http: aiohttp.ClientSession, redis_prefix: str
) -> None:
    # An old primary the sentinels cannot reconfigure (as if cut off from them) keeps taking
    # writes from clients still connected to it, and its subscribers hear only what is published
    # there: the replicas must follow the sentinels instead, commands and subscription alike.
    unreconfigurable = ("--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", "")
    async with (
        LocalSentinelGroup(primary_options=unreconfigurable) as sentinels,
        fleet(sentinels.url, 2, redis_local_ttl=3600) as (first, second),
    ):
        before = await sentinels.primary_port()
        keys = RedisKeys(redis_prefix)
        paths = (f"/v1/audio/transcribe/moved-{i}" for i in itertools.count())

        async def written_to_new_primary() -> bool:
            path = next(paths)
            await get(http, first, path)
            async with Redis(port=after) as admin:
                return bool(await admin.exists(keys.record(path)))

        async with load(http, [first, second]) as running:
            await running.served_more(40)
            after = await sentinels.failover(demoted=False)
            await eventually(written_to_new_primary, what="writes to reach the new primary")
            await eventually(
                lambda: _subscribers(after, keys.invalidate, 2),
                what="both subscriptions to move to the new primary",
            )
            await eventually(
                lambda: _no_clients_but_sentinels(before),
                what="the replicas to leave the old primary",
            )
            await running.served_more(40)
        # Invalidation through the new primary: the second replica hears the first's DELETE.
        path = "/v1/audio/transcribe/deleted-after-failover"
        await get(http, second, path)
        assert second.proxy.store.front.get_nowait(digest(path)) is not None  # type: ignore[union-attr]
        async with http.delete(first.url + path) as deleted:
            assert deleted.status == 204
        await eventually(
            lambda: second.proxy.store.front.get_nowait(digest(path)) is None,  # type: ignore[union-attr]
            what="the invalidation to reach the other replica through the new primary",
        )
        shared = await shared_after(http, [first, second], upstream, "/v1/audio/transcribe/new")
        async with Redis(port=before) as old:
            old_role = (await old.info("replication"))["role"]
    assert set(running.statuses) == {200}, running.statuses
    assert old_role == "master"
    assert "fwd=uri-miss" in shared[0] and "; hit" in shared[1]


async def _subscribers(port: int, channel: str, count: int) -> bool:
    async with Redis(port=port) as admin:
        ((_name, subscribers),) = await admin.pubsub_numsub(channel)
    return int(subscribers) == count


async def _no_clients_but_sentinels(port: int | None) -> bool:
    async with Redis(port=port or 0) as admin:
        me = await admin.client_id()
        clients = await admin.client_list()
    return all(c["name"].startswith("sentinel-") or int(c["id"]) == me for c in clients)


async def test_when_the_primary_dies_replicas_degrade_then_follow_the_promoted_replica(
    sentinels: LocalSentinelGroup,
    fleet: HaFleet,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
) -> None:
    before = await sentinels.primary_port()
    assert before is not None
    async with fleet(sentinels.url, 2) as replicas:
        async with load(http, replicas) as running:
            await running.served_more(40)
            sentinels.servers[before].kill()
            await eventually(
                lambda: all(degraded(replica) == 1 for replica in replicas),
                what="the replicas to notice the primary is gone",
            )
            ready_status, ready = await readiness(http, replicas[0])
            await eventually(
                lambda: _promoted(sentinels, before), within=30, what="a sentinel failover"
            )
            await eventually(
                lambda: all(degraded(replica) == 0 for replica in replicas),
                within=30,
                what="the replicas to follow the new primary",
            )
            await running.served_more(40)
        shared = await shared_after(http, replicas, upstream, "/v1/audio/transcribe/after")
        errors = [redis_errors(replica) for replica in replicas]
    assert set(running.statuses) == {200}, running.statuses
    assert (ready_status, ready["status"]) == (200, "degraded")
    assert all(count > 0 for count in errors)
    assert "fwd=uri-miss" in shared[0] and "; hit" in shared[1]


async def _promoted(sentinels: LocalSentinelGroup, before: int) -> bool:
    port = await sentinels.primary_port()
    return port is not None and port != before


# -- Cluster ---------------------------------------------------------------------------------------


async def test_concurrent_misses_on_a_cluster_make_one_upstream_request(
    cluster: LocalCluster,
    fleet: HaFleet,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_prefix: str,
) -> None:
    upstream.gate = asyncio.Event()
    async with fleet(cluster.url, 2) as replicas:
        answers = await collapsed_gets(http, replicas, upstream)
        # Records spread over the cluster's nodes by hash slot.
        paths = [f"/v1/audio/transcribe/spread-{i}" for i in range(12)]
        for path in paths:
            await get(http, replicas[0], path)
    assert upstream.count(JOB) == 1
    assert [status for status, _, _ in answers] == [200] * len(answers)
    assert sum("collapsed" in cache_status for _, cache_status, _ in answers) == len(answers) - 1
    keys = RedisKeys(redis_prefix)
    holders = set()
    for node in cluster.nodes:
        async with Redis(port=node.port) as admin:
            names = {name async for name in admin.scan_iter(match=f"{redis_prefix}:*")}
        if names & {keys.record(path).encode() for path in paths}:
            holders.add(node.port)
    assert len(holders) > 1


async def test_a_delete_through_one_replica_is_seen_by_the_other_on_a_cluster(
    cluster: LocalCluster, fleet: HaFleet, upstream: CountingUpstream, http: aiohttp.ClientSession
) -> None:
    # A long local life: only the invalidation message can make the other replica forget.
    async with fleet(cluster.url, 2, redis_local_ttl=3600) as (first, second):
        for replica in (first, second):
            await get(http, replica)
        assert second.proxy.store.entries == 1
        async with http.delete(first.url + JOB) as deleted:
            assert deleted.status == 204
        await eventually(
            lambda: second.proxy.store.entries == 0,
            what="the invalidation to reach the other replica",
        )
        await assert_fetched_again(http, second, upstream)


async def test_a_frozen_cluster_degrades_to_memory_and_upstream_and_recovers(
    cluster: LocalCluster, fleet: HaFleet, http: aiohttp.ClientSession
) -> None:
    async with fleet(cluster.url, 1, redis_timeout_ms=200) as (proxy,):
        await get(http, proxy)
        for node in cluster.nodes:
            node.pause()
        try:
            statuses = [
                (await get(http, proxy, f"/v1/audio/transcribe/frozen-{i}"))[0] for i in range(6)
            ]
            await eventually(lambda: degraded(proxy) == 1, what="the replica to degrade")
            ready_status, ready = await readiness(http, proxy)
        finally:
            for node in cluster.nodes:
                node.resume()
        await eventually(lambda: degraded(proxy) == 0, within=30, what="the replica to recover")
        after_status, after = await readiness(http, proxy)
    assert statuses == [200] * 6
    assert redis_errors(proxy) > 0
    assert (ready_status, ready["status"]) == (200, "degraded")
    assert (after_status, after["status"]) == (200, "ready")
