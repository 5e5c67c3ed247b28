"""``/metrics`` with several worker processes: every worker's series, labelled ``worker``.

Each worker keeps its own registry (the per-request counters are plain additions on its event
loop, see ``LoopCounter``) and serves it on a private unix socket in the supervisor's run
directory. Whichever worker answers a scrape reads its siblings' sockets and returns one
exposition in which every sample carries ``worker="<slot>"``: a bounded label (``0`` to
``N-1``, the slot and not the pid, so a restarted worker continues its slot's series, which
Prometheus sees as a counter reset). Fleet totals are PromQL's ``sum without (worker)``.

prometheus-client's multiprocess mode was not used: it only aggregates its own metric classes
(through mmap files in a shared directory), not the proxy's custom collectors, and it turns live
gauges (entries, bytes) into per-pid files that outlive a restarted worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("proxy.workers")

#: Seconds a scrape waits for a sibling worker; one that does not answer is left out.
SIBLING_TIMEOUT = 2.0
WORKER_LABEL = "worker"


def metrics_socket(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"metrics-{index}.sock")


class _Families(Collector):
    """Already gathered metric families, handed to ``generate_latest`` as they are."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_expositions(parts: Iterable[tuple[str, str]]) -> bytes:
    """One exposition from ``(worker, text)`` pairs, each sample labelled with its worker."""
    families: dict[str, Metric] = {}
    for worker, text in parts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
                for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)


class WorkerMetrics:
    """This worker's registry on its private socket, and the fleet-wide view for ``/metrics``."""

    def __init__(
        self, registry: CollectorRegistry, *, index: int, count: int, run_dir: str
    ) -> None:
        self.registry = registry
        self.index = index
        self.count = count
        self.run_dir = run_dir
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Serve the own registry to the siblings on ``metrics-<index>.sock`` (mode 0600)."""
        path = metrics_socket(self.run_dir, self.index)
        if os.path.exists(path):
            os.unlink(path)  # left by this slot's previous worker
        self._server = await asyncio.start_unix_server(self._own, path)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _own(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One answer per connection: whatever a sibling asks, this worker's exposition.

        Only siblings can reach the socket (mode 0600 in the private run directory), and they
        send one ``GET /metrics``; the head is read so that the answer never races the request.
        """
        try:
            async with asyncio.timeout(SIBLING_TIMEOUT):
                await reader.readuntil(b"\r\n\r\n")
            body = generate_latest(self.registry)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def exposition(self) -> bytes:
        """Every worker's samples, labelled; a sibling that does not answer is left out."""
        others = [i for i in range(self.count) if i != self.index]
        texts = await asyncio.gather(*(self._sibling(i) for i in others))
        parts = [(str(self.index), generate_latest(self.registry).decode())]
        parts += [(str(i), text) for i, text in zip(others, texts, strict=True) if text]
        return merge_expositions(sorted(parts, key=lambda part: int(part[0])))

    async def _sibling(self, index: int) -> str:
        connector = aiohttp.UnixConnector(path=metrics_socket(self.run_dir, index))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get("http://worker/metrics") as response,
            ):
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("worker %d did not answer for /metrics: %s", index, type(error).__name__)
            return ""


__all__ = ["WorkerMetrics", "merge_expositions", "metrics_socket"]
