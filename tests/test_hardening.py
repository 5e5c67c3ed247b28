"""The second round of attacks (issue 11), each over real sockets against a real origin."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.ops.config import ConfigError, parse_settings
from tests.conftest import MakeHarness

ROOT = Path(__file__).resolve().parent.parent


# -- finding 7: waiting for a pooled upstream connection is not connecting -------------------------


async def test_misses_queue_for_a_pooled_connection_beyond_the_connect_timeout(
    make_harness: MakeHarness,
) -> None:
    h = await make_harness(upstream_max_connections=2, upstream_connect_timeout=0.2)
    paths = [f"/slow/{n}" for n in range(6)]
    for path in paths:
        h.origin.put(path, path)
    h.origin.gate = asyncio.Event()
    requests = [asyncio.create_task(h.get(path)) for path in paths]
    await h.wait_for(lambda: len(h.origin.requests) == 2)
    # The bound under test is a duration: the queued misses must outlive the connect timeout.
    await asyncio.sleep(0.6)
    assert not any(task.done() for task in requests), "a queued miss failed while waiting"
    h.origin.gate.set()
    statuses = [(await task).status for task in requests]
    assert statuses == [200] * 6


async def test_the_pool_wait_has_its_own_bound(make_harness: MakeHarness) -> None:
    h = await make_harness(upstream_max_connections=1, upstream_pool_timeout=0.2)
    h.origin.put("/a", "a")
    h.origin.put("/b", "b")
    h.origin.gate = asyncio.Event()
    first = asyncio.create_task(h.get("/a"))
    await h.wait_for(lambda: len(h.origin.requests) == 1)
    second = await h.get("/b")
    assert second.status == 504
    h.origin.gate.set()
    assert (await first).status == 200


# -- finding 3: configurations that would share silently -------------------------------------------


def test_default_credential_headers_include_the_official_clients() -> None:
    settings = parse_settings([], {})
    assert settings.credential_headers == (
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "proxy-authorization",
    )


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--credential-headers", ""], {}, "--credential-headers"),
        ([], {"PROXY_CREDENTIAL_HEADERS": ""}, "PROXY_CREDENTIAL_HEADERS"),
        ([], {"PROXY_CREDENTIAL_HEADERS": " , "}, "PROXY_CREDENTIAL_HEADERS"),
    ],
)
def test_empty_credential_headers_under_credential_scope_refuse_to_start(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{named}: empty"):
        parse_settings(argv, env)
    assert parse_settings([*argv, "--cache-scope", "shared"], env).credential_headers == ()


def test_empty_credential_headers_stop_the_process_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--credential-headers", ""],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("aitronos-cache-proxy: error: --credential-headers: empty")


async def test_api_key_callers_do_not_share_entries(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.origin.put("/t/1", "secret-of-a", cache_control="public, max-age=60")
    first = await h.get("/t/1", token=None, **{"api-key": "sk-aaaa"})
    assert await first.read() == b"secret-of-a"
    h.origin.put("/t/1", "what-b-may-see", cache_control="public, max-age=60")
    second = await h.get("/t/1", token=None, **{"api-key": "sk-bbbb"})
    assert await second.read() == b"what-b-may-see"
    assert h.origin.count("/t/1") == 2


async def _startup_log(*flags: str) -> list[str]:
    """The proxy's log lines up to the moment it serves (Redis on a port nobody listens on)."""
    from tests.test_lifecycle import ProcessLog

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "--port",
        "0",
        "--upstream",
        "http://127.0.0.1:9",
        "--redis-url",
        "redis://127.0.0.1:9/0",
        *flags,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert process.stderr is not None
    log = ProcessLog(process.stderr)
    try:
        await log.wait_for(r"Running on http://")
        return list(log.lines)
    finally:
        process.kill()
        await process.wait()
        await log.close()


async def test_redis_without_a_scope_secret_starts_with_one_warning() -> None:
    lines = await _startup_log()
    warnings = [line for line in lines if "--scope-secret" in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0]
    assert "guessed tokens" in warnings[0] and "PROXY_SCOPE_SECRET" in warnings[0]
    quiet = await _startup_log("--scope-secret", "s3cret-value")
    assert not [line for line in quiet if "--scope-secret" in line or "s3cret" in line]
