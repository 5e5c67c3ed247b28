"""``python -m bench.workers``: what sharing one cache costs a hit, one process against workers.

Three setups of the proxy answer the same cached transcription under ``wrk -t1 -c50``: one
process with the memory store, one process on the Redis tier (a ``redis-server`` on a unix
socket, as the workers' private one), and ``--workers 2``. The first two differ only by the
tier; the last two by the second process. CPU per request counts every process of a setup
(supervisor, workers, their Redis). Rounds are interleaved; each line is printed as measured.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from bench import client, processes
from bench.processes import Pinning
from proxy.ops.private_redis import PrivateRedis

OPTIONS = ["--event-loop", "uvloop", "--access-log", "false"]


def wrk_once(
    wrk: str, pids: list[int], url: str, seconds: int, pinning: Pinning
) -> tuple[float, float]:
    """``(requests per second, CPU microseconds per request of pids)`` of one wrk run."""
    before = sum(processes.cpu_seconds(pid) for pid in pids)
    command = ["wrk", "-t1", "-c50", f"-d{seconds}s", "-H", "Authorization: Bearer bench", url]
    command[0] = wrk
    output = subprocess.run(
        pinning.wrap(command, client=True), capture_output=True, text=True, check=True
    ).stdout
    after = sum(processes.cpu_seconds(pid) for pid in pids)
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return rps, 1e6 * (after - before) / requests


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers to CPU 0")
    args = parser.parse_args()
    pinning = Pinning.choose(not args.no_pin)
    wrk = processes.ensure_binary("wrk", install=False)
    print(f"{pinning.describe()}; wrk -t1 -c50 -d{args.seconds}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as directory:
        workdir = Path(directory)
        simulator = processes.start_simulator(
            workdir, ["--queued-seconds", "0", "--processing-seconds", "0", "--seed", "1"], pinning
        )
        # The same private redis-server the workers start (proxy.ops.private_redis), for the
        # single process to use: its unix socket, no persistence, pinned like the servers.
        redis = PrivateRedis(str(workdir), 256 * 1024**2).__enter__()
        setups = {
            "1 process, memory store": OPTIONS,
            "1 process, Redis tier (unix socket)": [
                *OPTIONS,
                "--redis-url",
                redis.url,
            ],
            "--workers 2 (private redis-server)": [*OPTIONS, "--workers", "2"],
        }
        try:
            (transcription,) = client.seed(simulator.url, ["bench"], 1)
            path = f"/v1/audio/transcribe/{transcription}"
            for round_number in range(args.rounds):
                for index, (name, options) in enumerate(setups.items()):
                    service = processes.start_proxy(
                        workdir, simulator.url, pinning, name=f"setup-{index}", options=options
                    )
                    with processes.running(service):
                        for _ in range(3):
                            client.http_get(service.url + path, {"Authorization": "Bearer bench"})
                        pids = [service.pid]
                        if redis.url in options and redis.pid is not None:
                            pids.append(redis.pid)  # the workers count theirs as a descendant
                        rps, cpu = wrk_once(wrk, pids, service.url + path, args.seconds, pinning)
                    print(
                        f"round {round_number + 1} {name}: {rps:,.0f} req/s, "
                        f"{cpu:.1f} CPU us/request",
                        flush=True,
                    )
        finally:
            redis.__exit__()
            simulator.stop()


if __name__ == "__main__":
    main()
