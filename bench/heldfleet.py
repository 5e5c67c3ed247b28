"""``bench.held`` past one process: a proxy with ``--workers N``, a load generator of M processes.

One process may hold no more descriptors than its hard ``RLIMIT_NOFILE`` (20,000 on the machine
these figures come from, and raising it needs ``CAP_SYS_RESOURCE``), so 100,000 held requests
take several proxy processes (``--workers N``: each worker its own limit, the fleet one replica)
and several client processes (``--client-processes M``: each opens ``clients / M`` of the
connections). Here:

- ``Clients``: the M load-generating processes. Each opens its share (``held.open_held``), arms
  its ``held.Collector`` and says so; only when every one is ready does the bench send the
  change, and each then reads its answers and sends back their stamps, which are combined, so
  "first to last" runs from the first answer in any process to the last in any;
- ``waiting``: ``cacheproxy_waiting_requests`` summed over the workers (``/metrics`` of any
  worker carries every worker's series, labelled ``worker``), with the count per worker;
- ``tree_rss``: the RSS of the supervisor, its workers and its private ``redis-server`` together.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import client, processes

#: One answer, as a client process sends it back: read at (``perf_counter``), kernel receive
#: stamp and read time (wall clock), and whether it was the new ``200``.
Stamp = tuple[float, float, float, bool]


def tree_rss(pid: int) -> int:
    """RSS of ``pid`` and its descendants (the workers, the private ``redis-server``)."""
    total = 0
    for member in processes.process_tree(pid):
        try:
            total += processes.rss_bytes(member)
        except (OSError, processes.Unavailable):
            continue  # gone meanwhile (or a zombie with no VmRSS)
    return total


def waiting(proxy_url: str) -> dict[str, float]:
    """``cacheproxy_waiting_requests`` by worker, from one scrape of the fleet's ``/metrics``."""
    status, _, body = client.http_get(f"{proxy_url}/metrics")
    counts: dict[str, float] = {}
    if status != 200:
        return counts
    prefix = "cacheproxy_waiting_requests{"
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix) :].rsplit("} ", 1)
            worker = labels.split('worker="', 1)[1].split('"', 1)[0] if "worker=" in labels else ""
            counts[worker] = counts.get(worker, 0.0) + float(value)
    return counts


@dataclass
class Share:
    """What one client process opens: how many, from which source addresses, which request."""

    port: int
    count: int
    sources: int
    offset: int
    payload: bytes
    new_etag: bytes
    spin: bool


def _client(share: Share, pipe: Connection) -> None:
    """One load-generating process: open, arm, report ready, then on "go" collect and report."""
    from bench import held  # held starts these processes: imported here, not at the top

    try:
        held.raise_own_limit(share.count + 256)
        started = time.monotonic()
        socks = held.open_held(share.port, share.count, share.sources, share.payload, share.offset)
        collector = held.Collector(socks, share.spin)
        pipe.send(("ready", len(socks), time.monotonic() - started))
        if pipe.recv() != "go":
            return
        before = time.process_time()
        collected = collector.collect(time.monotonic() + 60)
        cpu = time.process_time() - before
        stamps: list[Stamp] = [
            (a.read_at, a.kernel_at, a.read_wall, held.is_correct(a.raw, share.new_etag))
            for a in collected.answers.values()
        ]
        pipe.send(("done", stamps, collected.busy, cpu))
        for sock in socks.values():
            sock.close()
    except Exception as error:  # reported to the bench, which fails the run
        pipe.send(("error", f"client process {os.getpid()}: {error!r}"))


class Clients:
    """The M load-generating processes of one run (``multiprocessing`` spawn)."""

    def __init__(self, shares: list[Share]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for share in shares:
            mine, theirs = context.Pipe()
            process = context.Process(target=_client, args=(share, theirs), daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        self.opened = 0

    @classmethod
    def split(
        cls, port: int, clients: int, sources: int, count: int, payload: bytes, new_etag: bytes,
        spin: bool,
    ) -> Clients:  # fmt: skip
        base, extra = divmod(clients, count)
        shares, offset = [], 0
        for index in range(count):
            mine = base + (1 if index < extra else 0)
            shares.append(Share(port, mine, sources, offset, payload, new_etag, spin))
            offset += mine
        return cls(shares)

    def _receive(self, pipe: Connection, timeout: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError("a client process did not answer in time")
        message: tuple[Any, ...] = pipe.recv()
        if message[0] == "error":
            raise RuntimeError(str(message[1]))
        return message

    def wait_ready(self, timeout: float) -> float:
        """Every process has its connections open and its collector armed; the slowest's time."""
        deadline = time.monotonic() + timeout
        slowest = 0.0
        for pipe in self.pipes:
            _, opened, seconds = self._receive(pipe, max(0.0, deadline - time.monotonic()))
            self.opened += int(opened)
            slowest = max(slowest, float(seconds))
        return slowest

    def go(self) -> None:
        for pipe in self.pipes:
            pipe.send("go")

    def collect(self, timeout: float) -> tuple[list[Stamp], float, float]:
        """Every process's answers, and their busy and CPU seconds summed."""
        deadline = time.monotonic() + timeout
        stamps: list[Stamp] = []
        busy = cpu = 0.0
        for pipe in self.pipes:
            _, theirs, their_busy, their_cpu = self._receive(
                pipe, max(0.0, deadline - time.monotonic())
            )
            stamps.extend(theirs)
            busy += float(their_busy)
            cpu += float(their_cpu)
        return stamps, busy, cpu

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()  # a process still waiting for "go" sees EOF and exits
        for process in self.processes:
            process.join(30)
            if process.exitcode is None:
                process.kill()
                process.join()


def limit_lines(log_path: Path) -> list[str]:
    text = log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "descriptor limit" in line]


def wait_serving(log_path: Path, workers: int, timeout: float = 60.0) -> None:
    """Until the supervisor logs that every worker listens (``SO_REUSEPORT`` spreads connections
    only over the listeners there are: opening earlier would crowd the first workers)."""
    deadline = time.monotonic() + timeout
    marker = f"{workers} workers)"
    while time.monotonic() < deadline:
        lines = log_path.read_text(errors="replace").splitlines()
        if any("Running on" in line and marker in line for line in lines):
            return
        time.sleep(0.1)
    raise processes.Unavailable(f"the {workers} workers did not all start within {timeout:.0f}s")
