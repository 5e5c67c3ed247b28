"""A throwaway Redis and several proxy replicas sharing it, in one process.

For the tests, the benchmarks and demos of scale-out::

    async with LocalRedis() as redis:
        settings = replace(settings, redis_url=redis.url)
        async with run_replicas(settings, 3) as fleet:
            ...  # fleet[i].url is a proxy replica; all share redis
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from proxy.cache.proxy import CachingProxy
from proxy.front.server import FrontServer
from proxy.ops.config import Settings
from proxy.ops.lifetime import StartsAndCloses
from proxy.runtime import Runtime

READY_LINE = b"Ready to accept connections"
#: A sentinel logs no "ready" line; it is serving once it has its ID.
SENTINEL_READY_LINE = b"Sentinel ID is"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalRedis(StartsAndCloses):
    """A ``redis-server`` on a free loopback port, without persistence, in a temporary directory.

    ``kill`` (a crash), ``pause``/``resume`` (a Redis that stops answering) and ``restart`` (on
    the same port) let tests and benchmarks put the proxy through Redis failures. ``options``
    are more ``redis-server`` arguments (``--replicaof``, ``--cluster-enabled``); ``sentinel``,
    the lines of a sentinel's configuration, makes it a sentinel (``redis-server --sentinel``).
    """

    def __init__(
        self,
        binary: str = "redis-server",
        *,
        password: str | None = None,
        startup_timeout: float = 10.0,
        options: Sequence[str] = (),
        sentinel: str = "",
    ) -> None:
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(f"{binary} not found: apt-get install -y redis-server")
        self.binary = found
        self.password = password
        self.startup_timeout = startup_timeout
        self.options = tuple(options)
        self.sentinel = sentinel
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the server (on the port it had, if any) and return once it accepts clients."""
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="acp-redis-")
        fixed = self.port != 0
        for _attempt in range(1 if fixed else 5):
            self.port = self.port if fixed else free_port()
            if await self._spawn():
                return
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    async def _spawn(self) -> bool:
        assert self._directory is not None
        password = ("--requirepass", self.password) if self.password else ()
        mode: tuple[str, ...] = ()
        ready = READY_LINE
        if self.sentinel:
            # A sentinel rewrites its configuration file as it learns: one of its own, each start.
            config = os.path.join(self._directory.name, "sentinel.conf")
            with open(config, "w", encoding="utf-8") as file:
                file.write(self.sentinel)
            mode, ready = (config, "--sentinel"), SENTINEL_READY_LINE
        process = await asyncio.create_subprocess_exec(
            self.binary,
            *mode,
            *password,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._directory.name,
            "--daemonize", "no",
            "--logfile", "",
            *self.options,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self.startup_timeout):
                while line := await process.stdout.readline():
                    if ready in line:
                        break
        except TimeoutError:
            line = b""
        if not line:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return False
        self._process = process
        self._drain = asyncio.create_task(_drain(process.stdout))
        return True

    def kill(self) -> None:
        """Crash the server (SIGKILL): connections drop without a goodbye."""
        if self._process is not None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but answers nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None

    async def close(self) -> None:
        await self.stop()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def _signal(self, number: int) -> None:
        if self._process is not None:
            with suppress(ProcessLookupError):
                os.kill(self._process.pid, number)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@dataclass
class Replica:
    """One proxy replica served on a loopback port (our front), with its own metrics registry."""

    runtime: Runtime
    server: FrontServer
    url: str
    registry: CollectorRegistry

    @property
    def proxy(self) -> CachingProxy:
        return self.runtime.cache

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    async def close(self, drain_seconds: float = 1.0) -> None:
        """Drain and close the listener, then the runtime (as ``python -m proxy`` stops)."""
        await self.server.close(drain_seconds)
        await self.runtime.close()


@asynccontextmanager
async def run_replicas(
    settings: Settings, count: int, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[list[Replica]]:
    """Serve ``count`` replicas of the proxy made from ``settings`` on free loopback ports.

    With ``settings.redis_url`` they share that Redis; without it they are independent, which is
    the baseline a scale-out benchmark compares against.
    """
    fleet: list[Replica] = []
    try:
        for _ in range(count):
            registry = CollectorRegistry()
            runtime = Runtime(settings, registry=registry, clock=clock)
            server = FrontServer(runtime, access=None)
            replica = Replica(runtime, server, "", registry)
            fleet.append(replica)
            await runtime.start()
            await server.start("127.0.0.1", 0)
            replica.url = f"http://127.0.0.1:{server.port}"
        yield fleet
    finally:
        for replica in reversed(fleet):
            await replica.close()
