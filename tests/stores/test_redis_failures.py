"""Redis trouble never becomes an outage: a crash, a freeze, a dead lock holder, bad config."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from proxy.__main__ import main
from proxy.ops.config import ConfigError, Settings, parse_settings
from proxy.ops.redis_url import redacted_url
from proxy.runtime import Runtime
from proxy.stores.keys import RedisKeys
from proxy.stores.redis_link import CircuitBreaker
from proxy.tools.replicas import LocalRedis, Replica, free_port
from tests.conftest import FakeClock
from tests.support.redis_support import JOB, CountingUpstream, Fleet, eventually, get, readiness

pytest_plugins = ("tests.support.redis_fixtures",)

ROOT = Path(__file__).resolve().parents[2]


def redis_errors(replica: Replica) -> float:
    return replica.metric("cacheproxy_store_errors_total", {"backend": "redis"})


def degraded(replica: Replica) -> float:
    return replica.metric("cacheproxy_store_degraded", {"backend": "redis"})


async def test_a_redis_crash_degrades_to_memory_and_upstream_and_recovers_by_itself(
    fleet: Fleet,
    local_redis: LocalRedis,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_prefix: str,
) -> None:
    async with fleet(2, redis_url=local_redis.url, redis_timeout_ms=200) as (first, second):
        await get(http, first)
        assert "; hit" in (await get(http, second))[1]

        local_redis.kill()
        for proxy in (first, second):
            await eventually(
                lambda proxy=proxy: degraded(proxy) == 1, what="the replica to notice the crash"
            )
        paths = [JOB] + [f"/v1/audio/transcribe/outage-{n}" for n in range(4)]
        answers = await asyncio.gather(
            *(get(http, proxy, path) for proxy in (first, second) for path in paths * 2)
        )
        async with http.delete(first.url + "/v1/audio/transcribe/outage-0") as deleted:
            deleted_status = deleted.status
        ready_status, ready = await readiness(http, first)
        errors_during = [redis_errors(proxy) for proxy in (first, second)]

        await local_redis.restart()
        for proxy in (first, second):
            await eventually(
                lambda proxy=proxy: degraded(proxy) == 0, what="the replica to reconnect"
            )
        recovered_status, recovered = await readiness(http, second)
        after = "/v1/audio/transcribe/after-recovery"
        await get(http, first, after)
        _, second_view, _ = await get(http, second, after)
        async with Redis.from_url(local_redis.url) as admin:
            shared = await admin.exists(RedisKeys(redis_prefix).record(after))

    assert {status for status, _, _ in answers} == {200}
    assert deleted_status == 204
    assert all(errors > 0 for errors in errors_during)
    assert (ready_status, ready["status"], ready["store"]) == (
        200,
        "degraded",
        "redis degraded",
    )
    assert (recovered_status, recovered["status"]) == (200, "ready")
    assert shared == 1 and "; hit" in second_view


async def test_a_frozen_redis_costs_a_timeout_then_the_circuit_opens(
    fleet: Fleet,
    local_redis: LocalRedis,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_prefix: str,
) -> None:
    async with fleet(1, redis_url=local_redis.url, redis_timeout_ms=50) as (proxy,):
        local_redis.pause()
        try:
            statuses = [
                (await get(http, proxy, f"/v1/audio/transcribe/frozen-{n}"))[0] for n in range(8)
            ]
            errors = redis_errors(proxy)
            ready_status, ready = await readiness(http, proxy)
        finally:
            local_redis.resume()
        await eventually(lambda: degraded(proxy) == 0, what="the replica to reconnect")
        await get(http, proxy, "/v1/audio/transcribe/thawed")
        async with Redis.from_url(local_redis.url) as admin:
            names = {name async for name in admin.scan_iter(match=f"{redis_prefix}:*")}
    assert statuses == [200] * 8
    # Three timeouts open the circuit; the requests after it do not wait on Redis at all, but
    # are still counted as failed store operations.
    assert errors >= 8
    assert (ready_status, ready["status"]) == (200, "degraded")
    assert RedisKeys(redis_prefix).record("/v1/audio/transcribe/thawed").encode() in names


async def test_when_the_lock_holder_dies_another_replica_takes_over_after_its_expiry(
    fleet: Fleet,
    origin: TestServer,
    upstream: CountingUpstream,
    http: aiohttp.ClientSession,
    redis_url: str,
    redis_prefix: str,
    redis_admin: Redis,
) -> None:
    async def locks() -> dict[bytes, bytes | None]:
        names = [name async for name in redis_admin.scan_iter(match=f"{redis_prefix}:lock:*")]
        return {name: await redis_admin.get(name) for name in names}

    held = asyncio.Event()
    takeover: list[dict[bytes, bytes | None]] = []

    async def note_lock(request: web.Request) -> None:
        if upstream.count(JOB) == 1:
            await held.wait()  # the first fetcher never gets its answer: it dies waiting
        else:
            takeover.append(await locks())

    upstream.on_request = note_lock
    port = free_port()
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m", "proxy",
        "--upstream", str(origin.make_url("")).rstrip("/"),
        "--port", str(port),
        "--redis-url", redis_url,
        "--redis-prefix", redis_prefix,
        "--redis-lock-ttl", "0.5",
        "--access-log", "false",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert doomed.stderr is not None
        async with asyncio.timeout(30):
            while b"Running on" not in (line := await doomed.stderr.readline()):
                assert line, "the replica to kill did not start"
        async with fleet(1) as (survivor,):
            first = asyncio.create_task(get(http, f"http://127.0.0.1:{port}"))
            await upstream.arrived.wait()
            (dead_lock,) = (await locks()).items()
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
            status, cache_status, _ = await get(http, survivor)
    finally:
        held.set()
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    with pytest.raises(aiohttp.ClientError):
        await first
    assert status == 200 and "fwd=uri-miss" in cache_status
    assert upstream.count(JOB) == 2
    # The survivor fetched under the same lock, with its own token: it took over once the dead
    # replica's lock expired, rather than giving up on coordination.
    ((name, token),) = takeover[0].items()
    assert name == dead_lock[0] and token not in (None, dead_lock[1])


async def test_a_password_in_the_redis_url_works_and_is_never_logged(
    origin: TestServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.tools.replicas import run_replicas

    secret = "s3cret-Pa55"
    caplog.set_level(logging.DEBUG)
    async with LocalRedis(password=secret) as server:
        settings = Settings(upstream=str(origin.make_url("")).rstrip("/"), redis_url=server.url)
        async with run_replicas(settings, 1) as (proxy,):
            await get(http, proxy)
            ready_status, ready = await readiness(http, proxy)
    assert (ready_status, ready["status"]) == (200, "ready")
    assert "sharing the cache through redis at redis://127.0.0.1" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(settings)


def test_redacted_url_drops_user_and_password() -> None:
    assert redacted_url("rediss://app:pw@cache.internal:6380/2") == "rediss://cache.internal:6380/2"
    assert redacted_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "url",
    ["http://:s3cret@cache:6379", "redis://:s3cret@cache:port", "redis://:s3cret@cache/?db=x"],
)
def test_a_bad_redis_url_is_a_config_error_that_does_not_repeat_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^--redis-url: ") as error:
        parse_settings(["--redis-url", url], {})
    assert "s3cret" not in str(error.value)


def test_a_prefix_that_could_glob_other_channels_is_refused() -> None:
    with pytest.raises(ConfigError, match="PROXY_REDIS_PREFIX"):
        parse_settings([], {"PROXY_REDIS_PREFIX": "acp*"})


def hide_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import redis`` fail as it does where the extra is not installed."""
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "proxy.stores.redis", raising=False)


def test_asking_for_redis_without_redis_py_is_a_one_line_startup_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_redis_py(monkeypatch)
    assert main(["--redis-url", "redis://127.0.0.1:6379/0"], {}) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert "--redis-url" in message and "pip install 'aitronos-cache-proxy[redis]'" in message
    with pytest.raises(ConfigError, match="--redis-url: redis-py is not installed"):
        Runtime(Settings(redis_url="redis://127.0.0.1:6379/0"))


def test_without_a_redis_url_nothing_needs_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_redis_py(monkeypatch)
    runtime = Runtime(Settings())
    assert runtime.store.backend == "memory"


def test_the_circuit_opens_after_consecutive_failures_and_probes_once_after_the_backoff() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, initial=0.5, maximum=2.0, clock=clock)
    assert [breaker.failed() for _ in range(3)] == [False, False, True]
    assert not breaker.closed and not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    assert breaker.succeeded() and breaker.closed and breaker.allow()


def test_the_backoff_doubles_up_to_its_maximum_and_resets_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, initial=0.5, maximum=2.0, clock=clock)
    waits = []
    breaker.failed()
    for _ in range(4):
        opened_at = clock.now
        while not breaker.allow():
            clock.advance(0.25)
        waits.append(clock.now - opened_at)
        breaker.failed()
    assert waits == [0.5, 1.0, 2.0, 2.0]
    breaker.succeeded()
    breaker.failed()
    clock.advance(0.5)
    assert breaker.allow()


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, initial=0.5, clock=clock)
    breaker.failed()
    clock.advance(0.5)
    assert breaker.allow()
    breaker.abandoned()
    assert breaker.allow()
