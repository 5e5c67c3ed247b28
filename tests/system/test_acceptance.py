"""Issue 2's "done when": a real ``python -m proxy`` process in front of the simulated API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.tools.simulator import SimulatorConfig, create_simulator_app


@dataclass
class Stack:
    proxy_url: str
    sim_url: str
    sim_server: TestServer
    session: aiohttp.ClientSession

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.sim_url}/_sim/stats?per_id=1") as response:
            result: dict[str, Any] = await response.json()
            return result

    def get(self, path: str, token: str, **headers: str) -> Any:
        headers["Authorization"] = f"Bearer {token}"
        return self.session.get(f"{self.proxy_url}{path}", headers=headers)

    async def create(self, token: str) -> str:
        async with self.session.post(
            f"{self.proxy_url}/v1/audio/transcribe",
            json={"audio_url": "https://example.com/a.mp3", "model_key": "m"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 201
            transcription_id: str = (await response.json())["data"]["transcription_id"]
            return transcription_id


async def start_proxy(port: int, upstream: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROXY_UPSTREAM": upstream, "PROXY_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    async with aiohttp.ClientSession() as session, asyncio.timeout(20):
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


@pytest.fixture
async def make_stack(
    unused_tcp_port_factory: Callable[[], int],
) -> AsyncIterator[Callable[[SimulatorConfig], Any]]:
    processes: list[subprocess.Popen[bytes]] = []
    sessions: list[aiohttp.ClientSession] = []
    servers: list[TestServer] = []

    async def make(config: SimulatorConfig) -> Stack:
        sim_server = TestServer(create_simulator_app(config))
        await sim_server.start_server()
        servers.append(sim_server)
        sim_url = str(sim_server.make_url("")).rstrip("/")
        port = unused_tcp_port_factory()
        processes.append(await start_proxy(port, sim_url))
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Stack(f"http://127.0.0.1:{port}", sim_url, sim_server, session)

    yield make
    for session in sessions:
        await session.close()
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
    for server in servers:
        await server.close()


async def test_polls_are_answered_from_cache_and_callers_kept_apart(make_stack: Any) -> None:
    stack: Stack = await make_stack(SimulatorConfig(queued_seconds=3600))
    transcription = await stack.create("alice")
    path = f"/v1/audio/transcribe/{transcription}"

    async with stack.get(path, "alice") as first:
        assert first.status == 200
        etag = first.headers["ETag"]
    async with stack.get(path, "alice") as second:
        assert second.headers["Cache-Status"].startswith("aitronos-cache-proxy; hit")
        assert "Age" in second.headers
    async with stack.get(path, "alice", **{"If-None-Match": etag}) as conditional:
        assert conditional.status == 304
    assert (await stack.stats())["transcription_gets"] == {transcription: 1}

    async with stack.get(path, "mallory") as other:
        assert other.status == 404
        assert (await other.json())["error"]["code"] == "TRANSCRIPTION_NOT_FOUND"

    fresh = await stack.create("alice")
    fresh_path = f"/v1/audio/transcribe/{fresh}"

    async def poll() -> int:
        async with stack.get(fresh_path, "alice") as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(poll() for _ in range(200)))
    assert statuses == [200] * 200
    assert (await stack.stats())["transcription_gets"][fresh] == 1

    async with stack.session.delete(
        f"{stack.proxy_url}{path}", headers={"Authorization": "Bearer alice"}
    ) as deleted:
        assert deleted.status == 204
    async with stack.get(path, "alice") as gone:
        assert gone.status == 404


async def test_expired_entry_is_revalidated_conditionally(make_stack: Any) -> None:
    stack: Stack = await make_stack(SimulatorConfig(queued_seconds=3600, pending_max_age=0))
    transcription = await stack.create("alice")
    path = f"/v1/audio/transcribe/{transcription}"
    for _ in range(3):
        async with stack.get(path, "alice") as response:
            assert response.status == 200
            await response.read()
    stats = await stack.stats()
    assert stats["transcription_gets"][transcription] == 3
    assert stats["not_modified"] == 2
    assert stats["responses"] == {"201": 1, "200": 1, "304": 2}


async def test_dead_upstream_gets_stale_or_envelope_never_500(make_stack: Any) -> None:
    stack: Stack = await make_stack(SimulatorConfig(queued_seconds=3600, pending_max_age=0))
    transcription = await stack.create("alice")
    path = f"/v1/audio/transcribe/{transcription}"
    async with stack.get(path, "alice") as response:
        body = await response.read()
    await stack.sim_server.close()
    async with stack.get(path, "alice") as stale:
        assert stale.status == 200
        assert await stale.read() == body
        assert stale.headers["Cache-Status"].startswith("aitronos-cache-proxy; fwd=stale")
    async with stack.get("/v1/audio/transcribe/trans_unknown", "alice") as missing:
        assert missing.status == 502
        assert (await missing.json())["success"] is False
