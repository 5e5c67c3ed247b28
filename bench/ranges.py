"""``python -m bench.ranges [--tree DIR]``: browser-like audio ranges through the proxy.

An aiohttp origin serves a 2 MiB audio body with its own single-range 206s (as a file server
does); ``python -m proxy`` runs from ``--tree`` (default: this checkout, so another worktree,
e.g. main, can be measured the same way) in front of it. 20 listeners each ask for the first
64 KiB and then seek 10 times (``Range: bytes=X-X+65535``), as ``<audio>`` elements do. Printed:
client range requests, upstream requests (how many with ``Range``), upstream bytes, latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

SIZE = 2 * 1024 * 1024
PART = 65536
PATH = "/v1/audio/transcribe/trans_0123456789abcdef0123456789abcdef/audio"


class AudioOrigin:
    """The origin: one body, its single ranges honoured, what it sent counted."""

    def __init__(self) -> None:
        self.body = os.urandom(SIZE)
        self.requests = 0
        self.ranged = 0
        self.bytes = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        headers = {
            "Content-Type": "audio/mpeg",
            "ETag": '"a1"',
            "Cache-Control": "public, max-age=3600",
            "Accept-Ranges": "bytes",
        }
        value = request.headers.get("Range", "")
        if value.startswith("bytes=") and "," not in value:
            self.ranged += 1
            first_text, _, last_text = value[6:].partition("-")
            first = int(first_text)
            last = min(int(last_text), SIZE - 1) if last_text else SIZE - 1
            headers["Content-Range"] = f"bytes {first}-{last}/{SIZE}"
            self.bytes += last - first + 1
            return web.Response(status=206, body=self.body[first : last + 1], headers=headers)
        self.bytes += SIZE
        return web.Response(body=self.body, headers=headers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run(tree: Path, listeners: int, seeks: int) -> str:
    origin = AudioOrigin()
    app = web.Application()
    app.router.add_get("/{tail:.*}", origin.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    origin_port, proxy_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", origin_port).start()
    command = [sys.executable, "-m", "proxy", "--upstream", f"http://127.0.0.1:{origin_port}"]
    command += ["--port", str(proxy_port)]
    proc = subprocess.Popen(command, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        async with aiohttp.ClientSession() as session:
            await ready(session, base)
            rng = random.Random(1)
            latencies: list[float] = []

            async def listener() -> None:
                starts = [0] + [rng.randrange(0, SIZE - PART) for _ in range(seeks)]
                for start in starts:
                    began = time.perf_counter()
                    headers = {"Range": f"bytes={start}-{start + PART - 1}"}
                    async with session.get(base + PATH, headers=headers) as response:
                        body = await response.read()
                    assert response.status == 206, response.status
                    assert body == origin.body[start : start + PART]
                    latencies.append(time.perf_counter() - began)

            await asyncio.gather(*(listener() for _ in range(listeners)))
    finally:
        proc.terminate()
        proc.wait()
        await runner.cleanup()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return (
        f"{tree.name}: {len(latencies)} client range requests; upstream requests "
        f"{origin.requests} ({origin.ranged} with Range), upstream bytes {origin.bytes}; "
        f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


async def ready(session: aiohttp.ClientSession, base: str) -> None:
    """Until the proxy answers ``/readyz`` (it was just started as a process)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with session.get(base + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the proxy did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--listeners", type=int, default=20)
    parser.add_argument("--seeks", type=int, default=10)
    args = parser.parse_args()
    print(asyncio.run(run(args.tree, args.listeners, args.seeks)))


if __name__ == "__main__":
    main()
