"""The proxy exactly as a user runs it: ``python -m proxy --upstream U --host H --port P``.

The demo starts it as a child process with its default settings (a user's ``PROXY_*`` variables
apply, as they would), waits until ``/readyz`` answers 200, and stops it with SIGTERM, as an
orchestrator would, whether the demo ends, is interrupted or fails. Its log goes to a file the
demo names, so its lines do not mix with the table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

import proxy

#: Bounds, not sleeps: how long the proxy may take to become ready and to stop on SIGTERM
#: (its default ``--drain-seconds`` is 25).
READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 40.0
_READY_POLL: Final = 0.05
_PORT_ATTEMPTS: Final = 3
#: Where ``import proxy`` comes from, first on the child's path so it runs this very code.
_SOURCE_ROOT: Final = str(Path(proxy.__file__).resolve().parent.parent)


class ProxyProcessError(RuntimeError):
    """The proxy exited early, was not ready in time or failed on SIGTERM; the message ends
    with its last log lines."""


@dataclass(frozen=True)
class RunningProxy:
    url: str
    pid: int
    command: tuple[str, ...]
    log_path: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the proxy binds it a moment later; a lost race is
    retried with another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def proxy_command(upstream: str, host: str, port: int, options: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "proxy",
        "--upstream", upstream, "--host", host, "--port", str(port), *options,
    ]  # fmt: skip


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` as given (the user's ``PROXY_*`` settings included), with this checkout first
    on the import path."""
    env = dict(environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (_SOURCE_ROOT, env.get("PYTHONPATH", "")) if part
    )
    return env


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def _ready(
    process: asyncio.subprocess.Process, session: aiohttp.ClientSession, url: str
) -> bool:
    """Poll ``/readyz`` until it answers 200 (``True``) or the process exits (``False``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while loop.time() < deadline:
        if process.returncode is not None:
            return False
        with suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{url}/readyz") as response:
                if response.status == 200:
                    return True
        with suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), _READY_POLL)
    raise ProxyProcessError(f"the proxy was not ready within {READY_TIMEOUT:g}s")


async def stop(process: asyncio.subprocess.Process) -> int:
    """SIGTERM, then the proxy's drain; killed only if it overstays ``STOP_TIMEOUT``."""
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


@asynccontextmanager
async def running_proxy(
    upstream: str,
    log_path: Path,
    *,
    environ: Mapping[str, str],
    host: str = "127.0.0.1",
    options: Sequence[str] = (),
) -> AsyncIterator[RunningProxy]:
    """``python -m proxy`` in front of ``upstream`` on a free port, ready, for the block."""
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port(host)
            command = proxy_command(upstream, host, port, options)
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=child_environment(environ),
                    # Its own process group: a Ctrl-C at the terminal reaches the demo only,
                    # which then stops the proxy with SIGTERM like everything else.
                    process_group=0,
                )
            url = f"http://{host}:{port}"
            try:
                ready = await _ready(process, session, url)
            except BaseException:
                await stop(process)
                raise
            if ready:
                break
            tail = _log_tail(log_path)
            if attempt == _PORT_ATTEMPTS or "in use" not in tail.lower():
                raise ProxyProcessError(
                    f"the proxy exited with {process.returncode} before it was ready "
                    f"({' '.join(command)}); its log ({log_path}) ends:\n{tail}"
                )
    try:
        yield RunningProxy(url, process.pid, tuple(command), log_path)
    except BaseException:
        await stop(process)
        raise
    code = await stop(process)
    if code != 0:
        raise ProxyProcessError(
            f"the proxy exited with {code} on SIGTERM; its log ({log_path}) ends:\n"
            + _log_tail(log_path)
        )
