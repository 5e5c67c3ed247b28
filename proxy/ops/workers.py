"""``--workers N``: N processes serving one port with ``SO_REUSEPORT``, supervised together.

The parent (the supervisor) serves nothing itself. It
- reserves the ports: binds, without listening, a ``SO_REUSEPORT`` socket on ``--host``/``--port``
  (and the admin port), so ``--port 0`` resolves once and every worker binds that same number;
  the kernel spreads new connections over the workers' listeners;
- makes the workers share one cache, so N processes do not multiply the upstream load: the
  operator's ``--redis-url``, or a private ``redis-server`` (``proxy.ops.private_redis``);
- spawns the workers (``multiprocessing`` spawn: a fresh interpreter, nothing forked mid-state),
  each calling the function named by ``entry`` (``"module:function"``, by default
  ``proxy.__main__:serve_worker``) with ``(settings, place)``, and logs "Running on" once every
  worker reports that it listens;
- forwards SIGTERM and SIGINT to every worker, each draining as a single process does for up to
  ``--drain-seconds``; the parent exits 0 when every worker did;
- restarts a worker that dies unexpectedly once it had started, logging it. A worker that dies
  before it listens, or more than ``RESTART_LIMIT`` deaths within ``RESTART_WINDOW`` seconds,
  stops the fleet and the parent exits 1: a crash loop is for the orchestrator to see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import multiprocessing
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from proxy.ops.config import Settings
from proxy.ops.private_redis import PrivateRedis

log = logging.getLogger("proxy.workers")

RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
#: Seconds past ``--drain-seconds`` a worker gets to close before it is killed.
CLOSE_GRACE = 10.0
#: Least ``--redis-timeout-ms`` with the private Redis. It is local and lives as long as the
#: supervisor, so a slow call means the worker's own event loop was late (measured: 100 ms calls
#: timing out with 1000 pollers on a loaded CPU), and giving up on it would only cost a duplicate
#: upstream fetch.
PRIVATE_REDIS_TIMEOUT_MS = 1000.0
#: Seconds a worker gets to start listening.
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class WorkerPlace:
    """What a worker knows of the fleet: its slot, the fleet's size and the private directory."""

    index: int
    count: int
    run_dir: str
    ready_pipe: Connection

    def announce_ready(self) -> None:
        """Tell the supervisor that this worker listens."""
        with contextlib.suppress(OSError):
            self.ready_pipe.send("ready")
            self.ready_pipe.close()


#: The function a worker runs, as ``"module:function"``: a name survives the spawn, whereas a
#: function defined in ``python -m proxy``'s ``__main__`` cannot be pickled for the child.
DEFAULT_ENTRY = "proxy.__main__:serve_worker"


def run_entry(entry: str, settings: Settings, place: WorkerPlace) -> None:
    """In the worker: import ``entry`` and serve with it."""
    module, _, name = entry.partition(":")
    serve_one: Callable[[Settings, WorkerPlace], None] = getattr(
        importlib.import_module(module), name
    )
    serve_one(settings, place)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening ``SO_REUSEPORT`` socket: holds the port for the workers' group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    index: int
    process: BaseProcess
    ready: Connection | None
    started: bool = False


class Supervisor:
    """Runs the fleet until a signal or a fatal failure; ``run`` returns the exit status."""

    def __init__(self, settings: Settings, entry: str = DEFAULT_ENTRY) -> None:
        self.settings = settings
        self.entry = entry
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.deaths: deque[float] = deque()
        self.stop_signal: int | None = None
        self.failed = False
        self.announced = False
        self.port = settings.port
        self.run_dir = ""

    def run(self) -> int:
        with contextlib.ExitStack() as stack:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cacheproxy-"))
            settings = self._worker_settings(stack, run_dir)
            wake_read, wake_write = socket.socketpair()
            stack.enter_context(wake_read)
            stack.enter_context(wake_write)
            stack.callback(self._restore_signals, self._catch_signals(wake_write))
            self.run_dir = run_dir
            for index in range(self.settings.workers):
                self._start(index, settings)
            self._watch(wake_read, settings)
            return self._stop()
        return 1  # pragma: no cover (mypy: ExitStack may swallow exceptions)

    def _worker_settings(self, stack: contextlib.ExitStack, run_dir: str) -> Settings:
        public = stack.enter_context(reserve_port(self.settings.host, self.settings.port))
        self.port = public.getsockname()[1]
        changes: dict[str, Any] = {"port": self.port}
        if self.settings.admin_port is not None:
            admin = stack.enter_context(
                reserve_port(self.settings.admin_host, self.settings.admin_port)
            )
            changes["admin_port"] = admin.getsockname()[1]
        if not self.settings.redis_url:
            redis = stack.enter_context(PrivateRedis(run_dir, self.settings.cache_max_bytes))
            changes["redis_url"] = redis.url
            timeout = max(self.settings.redis_timeout_ms, PRIVATE_REDIS_TIMEOUT_MS)
            changes["redis_timeout_ms"] = timeout
        return dataclasses.replace(self.settings, **changes)

    def _catch_signals(self, wake: socket.socket) -> dict[int, Any]:
        wake.setblocking(False)

        def note(signum: int, frame: object) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum

        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, note)
        previous[-1] = signal.set_wakeup_fd(wake.fileno())  # the fd to restore, under key -1
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _start(self, index: int, settings: Settings) -> None:
        receive, send = self.context.Pipe(duplex=False)
        place = WorkerPlace(index, self.settings.workers, self.run_dir, send)
        process = self.context.Process(
            target=run_entry, args=(self.entry, settings, place), name=f"cacheproxy-worker-{index}"
        )
        process.start()
        send.close()
        self.workers[index] = Worker(index, process, receive)

    def _watch(self, wake: socket.socket, settings: Settings) -> None:
        """Until a stop signal or a fatal failure: note readiness, restart the dead."""
        start_deadline = time.monotonic() + START_TIMEOUT
        while self.stop_signal is None and not self.failed:
            pending = [w.ready for w in self.workers.values() if w.ready is not None]
            timeout = max(0.0, start_deadline - time.monotonic()) if pending else None
            sentinels = {w.process.sentinel: w for w in self.workers.values()}
            ready = wait([wake, *pending, *sentinels], timeout)
            if not ready and pending:
                log.error("a worker did not start listening within %gs", START_TIMEOUT)
                self.failed = True
            for worker in list(self.workers.values()):
                if worker.ready is not None and worker.ready in ready:
                    self._note_ready(worker)
            for sentinel in ready:
                if isinstance(sentinel, int) and sentinel in sentinels:
                    self._died(sentinels[sentinel], settings)
                    start_deadline = time.monotonic() + START_TIMEOUT
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(512)

    def _note_ready(self, worker: Worker) -> None:
        assert worker.ready is not None
        with contextlib.suppress(EOFError, OSError):
            worker.ready.recv()
            worker.started = True
            log.info("worker %d (pid %s) is serving", worker.index, worker.process.pid)
            if not self.announced and all(w.started for w in self.workers.values()):
                self.announced = True
                settings = self.settings
                log.info(
                    "Running on http://%s:%d (proxy, %d workers)",
                    settings.host,
                    self.port,
                    settings.workers,
                )
        worker.ready.close()
        worker.ready = None

    def _died(self, worker: Worker, settings: Settings) -> None:
        worker.process.join()
        how = describe_exit(worker.process.exitcode)
        if not worker.started:
            log.error("worker %d %s before it could serve; stopping", worker.index, how)
            self.failed = True
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - RESTART_WINDOW:
            self.deaths.popleft()
        if len(self.deaths) > RESTART_LIMIT:
            log.error(
                "worker %d %s; %d deaths within %gs, stopping",
                worker.index,
                how,
                len(self.deaths),
                RESTART_WINDOW,
            )
            self.failed = True
            return
        log.error(
            "worker %d (pid %s) %s unexpectedly; restarting it",
            worker.index,
            worker.process.pid,
            how,
        )
        self._start(worker.index, settings)

    def _stop(self) -> int:
        """Forward SIGTERM to every worker, wait for their drain, then the exit status."""
        live = [w for w in self.workers.values() if w.process.exitcode is None]
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            log.info("%s: draining %d workers", name, len(live))
        for worker in live:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        deadline = time.monotonic() + self.settings.drain_seconds + CLOSE_GRACE
        status = 1 if self.failed else 0
        for worker in live:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                log.error("worker %d did not finish draining in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
                status = 1
            elif worker.process.exitcode == -signal.SIGTERM and not worker.started:
                pass  # stopped while starting, before it could handle the signal
            elif worker.process.exitcode != 0:
                log.error(
                    "worker %d %s while draining",
                    worker.index,
                    describe_exit(worker.process.exitcode),
                )
                status = 1
        for worker in self.workers.values():
            if worker.ready is not None:
                worker.ready.close()
        log.info("all workers stopped")
        return status


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(settings: Settings, entry: str = DEFAULT_ENTRY) -> int:
    return Supervisor(settings, entry).run()


__all__ = ["DEFAULT_ENTRY", "Supervisor", "WorkerPlace", "reserve_port", "supervise"]
