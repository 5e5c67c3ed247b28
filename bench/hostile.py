"""Hostile-client figures of our front: clients that never read, and a connection flood.

    python -m bench.hostile [--readers 100] [--flood 1500] [--out bench/results]

- **Slow readers.** N clients (receive buffer 4 KiB) ask for a cached 4 MiB body and never read.
  Reported: the proxy's RSS added (``VmRSS`` from ``/proc``) and the time until every one of them
  was cut by ``--client-send-timeout`` (5 s here, to keep the run short; 60 s by default).
- **Flood.** The proxy runs with ``RLIMIT_NOFILE`` 1024; M connections send half a request head
  and trickle a field every second (slowloris), while normal requests keep coming. Reported: the
  share of normal requests answered 200 and the size of the proxy's log.

The origin is an aiohttp application in this process; the proxy is ``python -m proxy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.processes import REPO_ROOT, free_port, python_env, rss_bytes

BIG = 4 * 1024 * 1024
SEND_TIMEOUT = 5.0


async def origin() -> tuple[web.AppRunner, str]:
    body = b"b" * BIG

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/big":
            return web.Response(body=body, headers={"Cache-Control": "public, max-age=3600"})
        return web.json_response({"ok": True}, headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def start_proxy(upstream: str, log: Path, nofile: int | None, *options: str) -> tuple[Any, str]:
    port = free_port()
    limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); " if nofile else ""
    code = f"import resource, sys; {limit}from proxy.__main__ import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "--upstream", upstream, "--port", str(port), *options]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stderr=out, stdout=out, env=python_env(), cwd=REPO_ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the proxy did not start")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def slow_readers(upstream: str, workdir: Path, readers: int) -> dict[str, Any]:
    log = workdir / "slow-readers.log"
    process, url = start_proxy(upstream, log, None, "--client-send-timeout", str(SEND_TIMEOUT))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/big") as response:
                assert len(await response.read()) == BIG
            before = rss_bytes(process.pid)
            sockets = []
            loop = asyncio.get_running_loop()
            for _ in range(readers):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
                await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n")
                sockets.append(sock)
            started = time.monotonic()
            peak = before
            name = 'cacheproxy_client_timeouts_total{phase="send"}'
            while time.monotonic() - started < SEND_TIMEOUT * 4:
                peak = max(peak, rss_bytes(process.pid))
                if await metric(session, url, name) >= readers:
                    break
                await asyncio.sleep(0.1)
            closed_after = time.monotonic() - started
            cut = await metric(session, url, name)
            peak = max(peak, rss_bytes(process.pid))
            for sock in sockets:
                sock.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "readers": readers,
        "body_mib": BIG / 2**20,
        "send_timeout_s": SEND_TIMEOUT,
        "rss_added_mib": round((peak - before) / 2**20, 1),
        "cut_by_send_timeout": int(cut),
        "all_cut_after_s": round(closed_after, 1),
    }


async def flood(upstream: str, workdir: Path, attackers: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, attackers + 512)), hard))
    log = workdir / "flood.log"
    process, url = start_proxy(upstream, log, 1024)
    port = int(url.rsplit(":", 1)[1])
    stop = asyncio.Event()

    async def slowloris() -> None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\n")
            with contextlib.suppress(OSError):
                while not stop.is_set() and not reader.at_eof():
                    writer.write(b"X-Keep: waiting\r\n")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
            writer.close()

    answered = 0
    normal = 300
    try:
        attack = [asyncio.create_task(slowloris()) for _ in range(attackers)]
        await asyncio.sleep(2)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i in range(normal):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/normal/{i % 20}") as response:
                        await response.read()
                        answered += response.status == 200
        stop.set()
        await asyncio.gather(*attack, return_exceptions=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "rlimit_nofile": 1024,
        "slow_connections": attackers,
        "normal_requests": normal,
        "answered_share": round(answered / normal, 3),
        "log_bytes": os.path.getsize(log),
    }


async def run(readers: int, attackers: int, workdir: Path) -> dict[str, Any]:
    runner, upstream = await origin()
    try:
        return {
            "slow_readers": await slow_readers(upstream, workdir, readers),
            "flood": await flood(upstream, workdir, attackers),
        }
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile")
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--flood", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aitronos-hostile-") as workdir:
        figures = asyncio.run(run(args.readers, args.flood, Path(workdir)))
    figures["uptime"] = Path("/proc/loadavg").read_text().strip()
    figures["nproc"] = os.cpu_count()
    (args.out / "hostile.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
