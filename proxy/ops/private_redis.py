"""A private ``redis-server`` the workers share when no ``--redis-url`` is given.

Several worker processes with a cache each would multiply the upstream load by their number.
Sharing through Redis reuses the tier replicas already use (``proxy.stores.redis``: one fetch per
key across processes, invalidation broadcast, a front copy per worker), so it was chosen over a
store owned by one process (a new IPC protocol on every miss and purge) or shared memory (an
allocator and eviction of our own across processes). This Redis is nobody else's: no TCP port,
only a unix socket (mode 0700) in the supervisor's private 0700 directory; nothing is saved to
disk; ``maxmemory`` is ``--cache-max-bytes`` with LRU eviction, and it dies with the supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

log = logging.getLogger("proxy.workers")

#: Seconds the private Redis gets to accept connections.
START_TIMEOUT = 10.0


class PrivateRedisError(RuntimeError):
    """The private Redis cannot run here; the message says why in one line."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def redis_server_path() -> str:
    """Where ``redis-server`` is, or a one-line reason it cannot be used."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise PrivateRedisError(
            "redis-py is not installed: pip install 'aitronos-cache-proxy[redis]'"
        ) from None
    found = shutil.which("redis-server")
    if found is None:
        raise PrivateRedisError(
            "redis-server is not on PATH (apt-get install redis-server), or give --redis-url"
        )
    return found


class PrivateRedis:
    """One ``redis-server`` on a unix socket in ``directory``, for the lifetime of a ``with``."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.socket = os.path.join(directory, "redis.sock")
        self.url = f"unix://{self.socket}"
        self._directory = directory
        self._max_bytes = max_bytes
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> PrivateRedis:
        command = [
            redis_server_path(),
            "--port", "0",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--dir", self._directory,
            "--save", "",
            "--appendonly", "no",
            "--maxmemory", str(self._max_bytes),
            "--maxmemory-policy", "allkeys-lru",
            "--loglevel", "warning",
        ]  # fmt: skip
        # Its own session: a Ctrl-C on the terminal reaches the workers, which drain through it.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        log.info(
            "workers share a private redis-server (pid %d, maxmemory %d bytes)",
            self._process.pid,
            self._max_bytes,
        )
        return self

    def _wait_ready(self) -> None:
        from redis import Redis
        from redis.exceptions import ConnectionError as RedisConnectionError

        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = Redis(unix_socket_path=self.socket, socket_timeout=1.0)
        try:
            while True:
                if self._process.poll() is not None:
                    raise PrivateRedisError(
                        f"the private redis-server exited with code {self._process.returncode}"
                    )
                try:
                    client.ping()
                    return
                except (RedisConnectionError, FileNotFoundError):
                    if time.monotonic() > deadline:
                        raise PrivateRedisError(
                            f"the private redis-server did not start within {START_TIMEOUT:g}s"
                        ) from None
                    time.sleep(0.01)
        finally:
            client.close()

    def __exit__(self, *exc_info: object) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


__all__ = ["PrivateRedis", "PrivateRedisError", "redis_server_path"]
