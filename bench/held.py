"""``python -m bench.held``: many long polls held at once on one proxy, and one change waking them.

One proxy process in front of a tiny origin of this module (``--origin PORT``) whose one resource
``/v1/audio/transcribe/held`` carries ``ETag: "v<n>"`` and ``max-age=3600``; a ``POST`` to it bumps
``n``. The load generator (one process, plain non-blocking sockets on ``epoll``, so that it is
not what is measured) opens ``--clients`` connections, spread over several loopback source
addresses (one address has fewer ephemeral ports than 100,000), each sending one
``GET`` with ``If-None-Match`` of the current ETag and ``Prefer: wait=N``. Once
``cacheproxy_waiting_requests`` shows them all held it reads the proxy's RSS (per held request:
above the RSS with the entry cached and nothing held), then sends the ``POST`` through the
proxy: the invalidation wakes every waiter, which must each get the new ``200``. Measured:
RSS per held request, the time from the first answer to the last (client side, the receive
times of the first bytes), and the bodies' correctness.

The proxy runs with its default limits under a hard ``RLIMIT_NOFILE`` that fits the run (set
with ``prlimit``), so the raising of the soft limit at start is part of what is measured;
``--max-wait`` is raised only so that opening 100,000 connections fits in one wait. Past one
process's hard limit: ``--workers N`` and ``--client-processes M`` (``bench.heldfleet``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import client, common, heldfleet, processes, standalone
from bench.processes import Pinning, Service
from bench.standalone import Standalone

PATH = "/v1/audio/transcribe/held"
TOKEN = "held-bench-token"
#: Linux's ``IP_BIND_ADDRESS_NO_PORT`` (not named by Python's ``socket`` module before 3.12).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# -- the origin ----------------------------------------------------------------------------------


def serve_origin(port: int) -> None:
    """The origin: one resource whose ETag changes on each POST (run as ``--origin PORT``)."""
    from aiohttp import web

    version = [1]

    def body() -> bytes:
        n = version[0]
        return json.dumps(
            {"success": True, "data": {"id": "held", "status": "processing", "version": n,
                                      "text": "x" * 200}}
        ).encode()  # fmt: skip

    async def get(request: web.Request) -> web.Response:
        etag = f'"v{version[0]}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body(), headers=headers, content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        version[0] += 1
        return web.json_response({"success": True, "version": version[0]})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(PATH, get)
    app.router.add_post(PATH, post)
    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Result:
    clients: int
    sources: int
    held: float = 0.0
    rss_before: int = 0
    rss_held: int = 0
    connect_seconds: float = 0.0
    answered: int = 0
    correct: int = 0
    first_to_last_ms: float = 0.0
    change_to_last_ms: float = 0.0
    #: The load generator's own CPU time while it read the answers (user plus system): when it
    #: nears ``first_to_last_ms`` the client, not the proxy, is what limits the figure.
    client_cpu_ms: float = 0.0
    #: The proxy's CPU time from the change to the last answer (what load elsewhere inflates
    #: least).
    wake_cpu_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    #: First to last answer by the kernel's receive stamps (``SO_TIMESTAMPNS``): what the
    #: client's own speed cannot inflate.
    kernel_first_to_last_ms: float = 0.0
    #: How long after the kernel received an answer the client read it (p99, max): near zero
    #: when the client keeps up with the proxy.
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    #: The client's time handling answers (its empty polls left out, ``--block`` or not).
    client_busy_ms: float = 0.0
    spin: bool = True
    #: ``perf_counter`` (CLOCK_MONOTONIC, shared by every process here) of the change sent and
    #: of the first and last answer read: to line them up with what the proxy logged.
    changed_at: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    proxy_log: str = ""
    notes: list[str] = field(default_factory=list)
    #: ``--workers`` of the proxy (RSS then over the supervisor, workers and redis-server) and
    #: the load generator's processes; the held count per worker at the peak.
    workers: int = 1
    client_processes: int = 1
    held_by_worker: dict[str, float] = field(default_factory=dict)

    @property
    def per_held(self) -> float:
        return (self.rss_held - self.rss_before) / self.held if self.held else 0.0


def raise_own_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        print(f"held: only {soft} descriptors here (hard limit {hard}; raising it needs "
              "CAP_SYS_RESOURCE): the run may hold fewer", file=sys.stderr)  # fmt: skip


def request_bytes(etag: str, wait: int) -> bytes:
    return (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Accept-Encoding: gzip\r\nIf-None-Match: {etag}\r\nPrefer: wait={wait}\r\n\r\n"
    ).encode()


def open_held(
    port: int, count: int, sources: int, payload: bytes, offset: int = 0
) -> dict[int, socket.socket]:
    """``count`` connections, each with the held request sent; by descriptor. ``offset``: how
    many the other client processes open before these (so the source addresses stay even)."""
    socks: dict[int, socket.socket] = {}
    ep = select.epoll()
    pending: dict[int, socket.socket] = {}
    batch = 256
    made = 0
    try:
        while made < count or pending:
            while made < count and len(pending) < batch:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                # The port is chosen at connect, by the whole 4-tuple: the TIME_WAIT sockets of
                # the runs before (10,000 a run) do not use up the source address's ports.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((f"127.0.0.{2 + (offset + made) % sources}", 0))
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                pending[sock.fileno()] = sock
                ep.register(sock.fileno(), select.EPOLLOUT)
                made += 1
            for fd, _ in ep.poll(5.0):
                sock = pending.pop(fd)
                ep.unregister(fd)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                sock.send(payload)
                socks[fd] = sock
    finally:
        ep.close()
    return socks


#: Linux's ``SO_TIMESTAMPNS`` (``SCM_TIMESTAMPNS`` in the ancillary data): the kernel stamps
#: each segment as it reaches the socket, which Python's ``socket`` module does not name.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("qq")


@dataclass
class Answer:
    """One connection's answer: when its first bytes were read (``perf_counter``), when the
    kernel received them (wall clock, ``SO_TIMESTAMPNS``), when they were read (wall clock,
    to compare with the kernel's), and the bytes."""

    read_at: float
    kernel_at: float
    read_wall: float
    raw: bytes


@dataclass
class Collected:
    answers: dict[int, Answer]
    #: Time spent handling the answers read (empty polls of ``spin`` left out).
    busy: float


class Collector:
    """Reads every connection's answer: when its first bytes arrived, and the bytes.

    Made before the change is sent, so that the first answers find it ready. Each socket is
    registered once, one-shot, so that an answer read whole (one segment, the usual case) costs
    one ``recvmsg`` and no ``epoll_ctl``; only a partial one is armed again. ``spin``: poll
    without sleeping, so that the proxy's writes never have to wake this process (on loopback
    the writer pays the reader's wake-up, which a remote client never costs it). The kernel's
    receive stamp of each answer is kept too: it does not depend on how soon this process gets
    to the socket, so comparing it with the read time shows whether the client kept up.
    """

    def __init__(self, socks: dict[int, socket.socket], spin: bool = True) -> None:
        self.socks = socks
        self.spin = spin
        self.ep = select.epoll(sizehint=len(socks))
        self.armed = select.EPOLLIN | select.EPOLLONESHOT
        for fd, sock in socks.items():
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.ep.register(fd, self.armed)

    def collect(self, deadline: float) -> Collected:
        socks, ep, armed = self.socks, self.ep, self.armed
        partial: dict[int, tuple[float, float, float, bytearray]] = {}
        done: dict[int, Answer] = {}
        clock, wall = time.perf_counter, time.time
        ancillary = socket.CMSG_SPACE(TIMESPEC.size)
        timeout = 0 if self.spin else 1.0
        busy = 0.0
        try:
            while len(done) < len(socks) and time.monotonic() < deadline:
                events = ep.poll(timeout, 4096)
                if not events:
                    continue
                now, now_wall = clock(), wall()
                for fd, _ in events:
                    chunk, cmsgs, _, _ = socks[fd].recvmsg(65536, ancillary)
                    started = partial.pop(fd, None)
                    if started is None:
                        kernel = now_wall
                        for level, kind, data in cmsgs:
                            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                                seconds, nanoseconds = TIMESPEC.unpack(data)
                                kernel = seconds + nanoseconds / 1e9
                        if not chunk or _complete(chunk):
                            done[fd] = Answer(now, kernel, now_wall, chunk)
                            continue
                        started = (now, kernel, now_wall, bytearray())
                    buffer = started[3]
                    buffer += chunk
                    if not chunk or _complete(buffer):
                        done[fd] = Answer(started[0], started[1], started[2], bytes(buffer))
                    else:
                        partial[fd] = started
                        ep.modify(fd, armed)
                busy += clock() - now
        finally:
            ep.close()
        return Collected(done, busy)


def _complete(buffer: bytes | bytearray) -> bool:
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(buffer[:end]).lower()
    marker = head.find(b"content-length:")
    if marker < 0:
        return True
    length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
    return len(buffer) >= end + 4 + length


def is_correct(raw: bytes, new_etag: bytes) -> bool:
    """The new ``200``, with the new ETag and the wait applied."""
    lower = raw.lower()
    return (
        raw.startswith(b"HTTP/1.1 200")
        and b"\r\netag: " + new_etag in lower
        and b"preference-applied: wait=" in lower
    )


def run(
    workdir: Path,
    clients: int,
    sources: int,
    pinning: Pinning,
    max_wait: int,
    loop: str,
    soft_limit: int = 1024,
    profile: Path | None = None,
    perf: Path | None = None,
    spin: bool = True,
    workers: int = 1,
    client_processes: int = 1,
) -> Result:
    result = Result(clients, sources, workers=workers, client_processes=client_processes)
    if client_processes == 1:
        raise_own_limit(clients + 1024)
    origin_port = processes.free_port()
    origin = processes.launch(
        "origin",
        [sys.executable, "-m", "bench.held", "--origin", str(origin_port)],
        workdir,
        port=origin_port,
        ready_path="/ready",
        pinning=pinning,
        env=processes.python_env(),
    )
    # As high as the run needs, where this process may give it (raising a hard limit needs
    # CAP_SYS_RESOURCE): the proxy's own limit line says what it got.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(soft_limit, hard)
    try:
        port = processes.free_port()
        command = [
            "prlimit", f"--nofile={soft}:{hard}", "--",
            sys.executable, "-m", "proxy", "--upstream", origin.url, "--port", str(port),
            "--log-level", "info", "--max-wait", str(max_wait), "--event-loop", loop,
        ]  # fmt: skip
        if workers > 1:
            command += ["--workers", str(workers)]
        proxy = processes.launch(
            "proxy", command, workdir, port=port, ready_path="/healthz", pinning=pinning,
            env=processes.python_env(),
        )  # fmt: skip
        if workers > 1:
            heldfleet.wait_serving(proxy.log_path, workers)
        if pinning.client is not None:
            # The load generator is this process (and the processes it starts): on its own CPU.
            os.sched_setaffinity(0, {int(pinning.client)})
        try:
            _measure(result, proxy, clients, sources, max_wait, profile, perf, spin)
        finally:
            proxy.stop()
            text = proxy.log_path.read_text(errors="replace")
            result.proxy_log = "\n".join(
                line
                for line in text.splitlines()
                if "descriptor limit" in line or "--max-connections" in line
            )
            limits = heldfleet.limit_lines(proxy.log_path)
            if len(limits) != workers:
                result.notes.append(f"{len(limits)} descriptor limit lines for {workers} workers")
    finally:
        origin.stop()
    return result


def _measure(
    result: Result,
    proxy: Service,
    clients: int,
    sources: int,
    max_wait: int,
    profile: Path | None,
    perf: Path | None = None,
    spin: bool = True,
) -> None:
    url = proxy.url + PATH
    auth = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
    status, headers, _ = client.http_get(url, auth)
    etag = dict((k.lower(), v) for k, v in headers)["etag"]
    assert status == 200, status
    new_etag = f'"v{int(etag.strip(chr(34))[1:]) + 1}"'.encode()
    client.http_get(url, auth)  # a hit: everything a held request touches is warm
    fleet = result.workers > 1
    result.rss_before = (heldfleet.tree_rss if fleet else processes.rss_bytes)(proxy.pid)
    started = time.monotonic()
    payload = request_bytes(etag, max_wait)
    group: heldfleet.Clients | None = None
    socks: dict[int, socket.socket] = {}
    if result.client_processes > 1:
        group = heldfleet.Clients.split(
            proxy.port, clients, sources, result.client_processes, payload, new_etag, spin
        )
        group.wait_ready(max_wait / 2)
    else:
        socks = open_held(proxy.port, clients, sources, payload)
    try:
        _held_and_woken(
            result, proxy, group, socks, started, new_etag, max_wait, profile, perf, spin
        )
    finally:
        if group is not None:
            group.close()
        for sock in socks.values():
            sock.close()


def _held_and_woken(
    result: Result,
    proxy: Service,
    group: heldfleet.Clients | None,
    socks: dict[int, socket.socket],
    started: float,
    new_etag: bytes,
    max_wait: int,
    profile: Path | None,
    perf: Path | None,
    spin: bool,
) -> None:
    fleet, clients = result.workers > 1, result.clients
    rss = heldfleet.tree_rss if fleet else processes.rss_bytes
    deadline = time.monotonic() + max_wait / 2
    held = 0.0
    while time.monotonic() < deadline:
        if fleet:
            result.held_by_worker = heldfleet.waiting(proxy.url)
            held = sum(result.held_by_worker.values())
            if held >= clients and len(result.held_by_worker) == result.workers:
                break
        else:
            held = client.metric_value(proxy.url, "cacheproxy_waiting_requests") or 0.0
            if held >= clients:
                break
        time.sleep(0.2)
    result.connect_seconds = time.monotonic() - started
    result.held = held
    time.sleep(1.0)  # let allocations settle
    result.rss_held = rss(proxy.pid)
    profilers: list[subprocess.Popen[bytes]] = []
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        profilers.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proxy.pid),
             "--rate", "500", "--format", "raw", "--output", str(profile), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        time.sleep(1.0)
    if perf is not None:
        # The kernel's share too (the writes' system calls), which py-spy does not see.
        perf.parent.mkdir(parents=True, exist_ok=True)
        profilers.append(subprocess.Popen(
            ["perf", "record", "-g", "-F", "2000", "-p", str(proxy.pid), "-o", str(perf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        time.sleep(1.0)
    collector = Collector(socks, spin) if group is None else None  # ready before any answer
    result.spin = spin
    cpu_before = processes.cpu_seconds(proxy.pid)
    if group is not None:
        group.go()  # every process armed (it said so) before the change is sent
    changed = time.perf_counter()
    poster = socket.create_connection(("127.0.0.1", proxy.port))
    poster.sendall(
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    client_before = time.process_time()
    stamps: list[heldfleet.Stamp]
    if collector is not None:
        collected = collector.collect(time.monotonic() + 60)
        result.client_cpu_ms = 1000 * (time.process_time() - client_before)
        result.client_busy_ms = 1000 * collected.busy
        stamps = [
            (a.read_at, a.kernel_at, a.read_wall, is_correct(a.raw, new_etag))
            for a in collected.answers.values()
        ]
    else:
        assert group is not None
        stamps, busy, cpu = group.collect(90)
        result.client_cpu_ms, result.client_busy_ms = 1000 * cpu, 1000 * busy
    result.wake_cpu_ms = 1000 * (processes.cpu_seconds(proxy.pid) - cpu_before)
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
    poster.close()
    _summarise(result, stamps, changed)


def _summarise(result: Result, stamps: list[heldfleet.Stamp], changed: float) -> None:
    times = sorted(stamp[0] for stamp in stamps)
    kernel = sorted(stamp[1] for stamp in stamps)
    lags = sorted(stamp[2] - stamp[1] for stamp in stamps)
    result.answered = len(stamps)
    result.correct = sum(1 for stamp in stamps if stamp[3])
    if times:
        result.first_to_last_ms = 1000 * (times[-1] - times[0])
        result.change_to_last_ms = 1000 * (times[-1] - changed)
        result.p50_ms = 1000 * (times[len(times) // 2] - times[0])
        result.p99_ms = 1000 * (times[min(len(times) - 1, len(times) * 99 // 100)] - times[0])
        result.kernel_first_to_last_ms = 1000 * (kernel[-1] - kernel[0])
        result.changed_at, result.first_at, result.last_at = changed, times[0], times[-1]
        result.lag_p99_ms = 1000 * lags[min(len(lags) - 1, len(lags) * 99 // 100)]
        result.lag_max_ms = 1000 * lags[-1]


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    title = "Held long polls on one proxy, and one change waking them"
    lines = [
        *common.heading(title, meta, then=f"; event loop {meta['loop']}"),
        "| held requests | RSS per held request (connection included) | first to last answer "
        "| by the kernel's receive stamps | answers: p50 / p99 after the first "
        "| change to last answer | proxy CPU for the wake | client: busy / CPU "
        "| client read lag p99 / max | correct 200s | opened in |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.held:,.0f} of {r.clients:,} | {r.per_held / 1024:.2f} KiB "
            f"| {r.first_to_last_ms:.0f} ms | {r.kernel_first_to_last_ms:.0f} ms "
            f"| {r.p50_ms:.0f} / {r.p99_ms:.0f} ms "
            f"| {r.change_to_last_ms:.0f} ms | {r.wake_cpu_ms:.0f} ms "
            f"| {r.client_busy_ms:.0f} / {r.client_cpu_ms:.0f} ms{'' if r.spin else ' (blocking)'} "
            f"| {r.lag_p99_ms:.1f} / {r.lag_max_ms:.1f} ms "
            f"| {r.correct:,} of {r.answered:,} "
            f"| {r.connect_seconds:.1f} s |"
        )
    for r in results:
        if r.workers > 1 or r.client_processes > 1:
            by_worker = ", ".join(f"{w}: {n:,.0f}" for w, n in sorted(r.held_by_worker.items()))
            lines += ["", f"{r.clients:,} clients: proxy `--workers {r.workers}` (RSS summed over "
                      "the supervisor, the workers and the private redis-server), load generator "
                      f"in {r.client_processes} processes; held by worker at the peak: "
                      f"{by_worker or 'one process'}. {' '.join(r.notes)}"]  # fmt: skip
    lines += ["", "The proxy's last log lines (its descriptor limit at start):", ""]
    for r in results:
        lines += ["```", r.proxy_log, "```"]
    lines += common.machine_lines(meta)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = standalone.parser("held", __doc__)
    parser.add_argument("--clients", type=int, action="append", help="repeatable (10000)")
    parser.add_argument("--sources", type=int, default=0, help="source addresses (auto)")
    parser.add_argument("--max-wait", type=int, default=120)
    parser.add_argument("--event-loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    parser.add_argument(
        "--soft-limit", type=int, default=1024, help="the proxy's soft RLIMIT_NOFILE at start"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output of the wake")
    parser.add_argument("--perf", type=Path, default=None, help="perf record output of the wake")
    parser.add_argument(
        "--block", action="store_true", help="the client sleeps in epoll while it waits (no spin)"
    )
    parser.add_argument("--workers", type=int, default=1, help="the proxy's --workers")
    parser.add_argument(
        "--client-processes", type=int, default=1,
        help="load generator processes, each opening clients/M (they block in epoll when M > 1)",
    )  # fmt: skip
    parser.add_argument("--origin", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.origin is not None:
        serve_origin(args.origin)
        return 0
    bench = Standalone.start("held", args, argv, loop=args.event_loop)
    pinning = bench.pinning
    results = []
    for clients in args.clients or [10_000]:
        # At most 10,000 per source address: connect() picks a port by scanning the ephemeral
        # range's even ports first (about 14,000 here), so past that each connect scans them all
        # (the 100,000 run at 20,000 an address stalled in connect at 87,000, system time 2/3).
        sources = args.sources or max(1, -(-clients // 10_000))
        with tempfile.TemporaryDirectory(prefix="aitronos-held-") as workdir:
            result = run(
                Path(workdir), clients, sources, pinning, args.max_wait, args.event_loop,
                args.soft_limit, args.profile, args.perf,
                not args.block and args.client_processes == 1, args.workers, args.client_processes,
            )  # fmt: skip
        print(
            f"held: {result.held:.0f} held, {result.per_held / 1024:.2f} KiB each, "
            f"first to last {result.first_to_last_ms:.0f} ms "
            f"(kernel stamps {result.kernel_first_to_last_ms:.0f} ms, "
            f"read lag max {result.lag_max_ms:.1f} ms), proxy CPU {result.wake_cpu_ms:.0f} ms, "
            f"{result.correct}/{result.answered} correct"
            + (f", by worker {result.held_by_worker}" if result.workers > 1 else ""),
            file=sys.stderr,
        )
        results.append(result)
    payload = {"results": [asdict(r) | {"per_held": r.per_held} for r in results]}
    return bench.finish(payload, lambda meta: markdown(results, meta))


if __name__ == "__main__":
    sys.exit(main())
