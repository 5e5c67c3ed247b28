"""A cache hit over HTTP/2 (h2c with prior knowledge), this proxy against nginx, in one run.

``python -m bench.http2 [--scale full|tiny] [--rounds N] [--out DIR] [--no-pin]``

Both serve the same completed transcription from their cache in front of the simulator; h2load
(nghttp2-client) drives each with the same connections and streams per connection, first over
HTTP/2 and then, for reference, over HTTP/1.1 (``h2load --h1``). The figure is the server's CPU
time per answered request (robust on a shared machine, as in ``bench/hit.py``), with the
throughput and the upstream requests during the run (0: every answer was a hit). Rounds are
interleaved across systems; the row is the median round by CPU per request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import client, processes
from bench.processes import NGINX_CONF, Pinning, Service, Unavailable

TOKEN = "bench-h2-token"
OUT = Path(__file__).resolve().parent / "results" / "http2"
SCALES = {"tiny": (1, 0, 1), "full": (10, 2, 3)}  # seconds, warm-up seconds, rounds
CONNECTIONS, STREAMS = 10, 10


@dataclass
class Run:
    system: str
    protocol: str
    requests: int
    failed: int
    seconds: float
    cpu_seconds: float
    upstream_requests: int

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def start_nginx_h2c(workdir: Path, upstream_port: int, pinning: Pinning) -> tuple[Service, int]:
    """``bench.processes``' nginx (the same proxy_cache) on its HTTP/1.1 port and a second one,
    ``listen ... http2``: h2c with prior knowledge (nginx speaks only HTTP/2 there)."""
    binary = processes.ensure_binary("nginx", install=True)
    home = workdir / "nginx"
    home.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    conf = home / "nginx.conf"
    h2_port = processes.free_port()
    listen = "listen 127.0.0.1:{port} reuseport backlog=4096;"
    # keepalive_requests: nginx ends a connection (GOAWAY) after 1,000 requests by default,
    # and h2load does not reconnect.
    extra = f"\n        listen 127.0.0.1:{h2_port} http2;\n        keepalive_requests 100000000;"
    text = NGINX_CONF.replace(listen, listen + extra)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        text.format(user=user, dir=home, port=port, upstream_port=upstream_port, gzip="")
    )
    command = [binary, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log"),
               "-g", "daemon off;"]  # fmt: skip
    service = processes.launch(
        "nginx", command, workdir, port=port, ready_path="/_sim/stats", pinning=pinning
    )
    return service, h2_port


def h2load(url: str, seconds: float, *, h1: bool, pinning: Pinning) -> tuple[int, int, float]:
    """(succeeded, failed, seconds) of one h2load run of ``seconds``."""
    binary = processes.ensure_binary("h2load", install=False)
    duration = str(max(1, round(seconds)))
    command = [binary, "-c", str(CONNECTIONS), "-m", str(STREAMS), "-D", duration,
               "-H", f"authorization: Bearer {TOKEN}", *(["--h1"] if h1 else []), url]  # fmt: skip
    result = subprocess.run(
        pinning.wrap(command, client=True), capture_output=True, text=True, timeout=seconds + 60
    )
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed",
                     result.stdout)  # fmt: skip
    took = re.search(r"finished in ([\d.]+)(m?s)", result.stdout)
    if done is None or took is None:
        raise Unavailable(f"h2load failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    elapsed = float(took[1]) / (1000 if took[2] == "ms" else 1)
    return int(done[1]), int(done[2]), elapsed


def measure(workdir: Path, scale: str, rounds: int | None, pinning: Pinning) -> list[Run]:
    seconds, warmup, default_rounds = SCALES[scale]
    simulator = processes.start_simulator(
        workdir, ["--queued-seconds", "0", "--processing-seconds", "0", "--seed", "1"], pinning
    )
    runs: list[Run] = []
    try:
        (transcription,) = client.seed(simulator.url, [TOKEN], 1)
        path = f"/v1/audio/transcribe/{transcription}"
        options = ["--event-loop", "uvloop", "--access-log", "false"]
        proxy = processes.start_proxy(workdir, simulator.url, pinning, options=options)
        systems = {"aitronos-cache-proxy": (proxy, proxy.port)}
        try:
            systems["nginx"] = start_nginx_h2c(workdir, simulator.port, pinning)
            for service, _ in systems.values():
                client.http_get(service.url + path, {"Authorization": f"Bearer {TOKEN}"})
            for _ in range(rounds or default_rounds):
                for name, (service, h2_port) in systems.items():
                    for h1 in (False, True):
                        port = service.port if h1 else h2_port
                        url = f"http://127.0.0.1:{port}{path}"
                        if warmup:
                            h2load(url, warmup, h1=h1, pinning=pinning)
                        upstream = client.stats(simulator.url)["requests"]
                        cpu = processes.cpu_seconds(service.pid)
                        ok, failed, took = h2load(url, seconds, h1=h1, pinning=pinning)
                        runs.append(Run(
                            name, "HTTP/1.1" if h1 else "HTTP/2", ok, failed, took,
                            processes.cpu_seconds(service.pid) - cpu,
                            client.stats(simulator.url)["requests"] - upstream,
                        ))  # fmt: skip
        finally:
            for service, _ in systems.values():
                service.stop()
    finally:
        simulator.stop()
    return runs


def medians(runs: list[Run]) -> list[Run]:
    rows = []
    for key in dict.fromkeys((run.system, run.protocol) for run in runs):
        group = sorted((r for r in runs if (r.system, r.protocol) == key), key=lambda r: r.cpu_us)
        rows.append(group[len(group) // 2])
    return rows


def report(runs: list[Run], pinning: Pinning, note: str) -> str:
    rows = medians(runs)
    nginx = {r.protocol: r.cpu_us for r in rows if r.system == "nginx"}
    lines = [
        "# A hit over HTTP/2: aitronos-cache-proxy and nginx",
        "",
        f"`python -m bench.http2`: h2load, {CONNECTIONS} connections x {STREAMS} streams each "
        f"(`-c {CONNECTIONS} -m {STREAMS}`), h2c with prior knowledge (and `--h1` for "
        "reference), one completed transcription from the cache. Median of "
        f"{len(runs) // max(1, len(rows))} interleaved rounds by CPU per request.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {processes.binary_version(['nginx', '-v'])}; "
        f"{pinning.describe()}. {note}",
        "",
        "| system | protocol | requests/s | CPU µs / request | x nginx | failed | upstream |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r.cpu_us / nginx[r.protocol] if nginx.get(r.protocol) else 0.0
        lines.append(
            f"| {r.system} | {r.protocol} | {r.rps:,.0f} | {r.cpu_us:.1f} | {ratio:.2f} | "
            f"{r.failed} | {r.upstream_requests} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http2", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    out: Path = args.out or (OUT if args.scale == "full" else OUT.parent / "tmp" / "http2")
    pinning = Pinning.choose(not args.no_pin)
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as workdir:
        runs = measure(Path(workdir), args.scale, args.rounds, pinning)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"runs": [asdict(r) | {"cpu_us": r.cpu_us, "rps": r.rps} for r in runs]}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(runs, pinning, args.note)
    (out / "results.md").write_text(text)
    print(text)
    print(f"median CPU µs/request: {statistics.median(r.cpu_us for r in runs):.1f}")


if __name__ == "__main__":
    main()
