"""The demo's two sources of figures: the simulator's ``/_sim/stats`` (what reached the origin)
and the proxy's ``/metrics`` (what it answered from its cache), read over HTTP as anyone could."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class UpstreamStats:
    """The simulator's count of what it served: the load that reached the origin."""

    requests: int
    not_modified: int
    bytes_sent: int

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> UpstreamStats:
        return cls(
            requests=int(payload["requests"]),
            not_modified=int(payload["not_modified"]),
            bytes_sent=int(payload["bytes_sent"]),
        )


@dataclass(frozen=True)
class ProxyStats:
    """The proxy's own counters, read from ``/metrics``; subtract two readings for one phase."""

    results: Mapping[str, int]
    not_modified: int
    response_bytes: int
    upstream_bytes: int
    bytes_saved: int

    @property
    def requests(self) -> int:
        return sum(self.results.values())

    @property
    def hit_ratio(self) -> float | None:
        total = self.requests
        return self.results.get("hit", 0) / total if total else None

    def since(self, earlier: ProxyStats) -> ProxyStats:
        keys = set(self.results) | set(earlier.results)
        return ProxyStats(
            results={k: self.results.get(k, 0) - earlier.results.get(k, 0) for k in keys},
            not_modified=self.not_modified - earlier.not_modified,
            response_bytes=self.response_bytes - earlier.response_bytes,
            upstream_bytes=self.upstream_bytes - earlier.upstream_bytes,
            bytes_saved=self.bytes_saved - earlier.bytes_saved,
        )


_PROXY_COUNTERS: Final = {
    "cacheproxy_not_modified_total": "not_modified",
    "cacheproxy_response_bytes_total": "response_bytes",
    "cacheproxy_upstream_bytes_total": "upstream_bytes",
    "cacheproxy_bytes_saved_total": "bytes_saved",
}


def parse_proxy_metrics(text: str) -> ProxyStats:
    """The demo's figures out of the proxy's Prometheus text; absent counters read as zero."""
    results: Counter[str] = Counter()
    totals = dict.fromkeys(_PROXY_COUNTERS.values(), 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cacheproxy_requests_total":
                results[sample.labels.get("result", "")] += int(sample.value)
            elif sample.name in _PROXY_COUNTERS:
                totals[_PROXY_COUNTERS[sample.name]] += int(sample.value)
    return ProxyStats(results=dict(results), **totals)


async def fetch_proxy_stats(session: aiohttp.ClientSession, proxy_url: str) -> ProxyStats:
    async with session.get(f"{proxy_url}/metrics") as response:
        response.raise_for_status()
        return parse_proxy_metrics(await response.text())


async def fetch_simulator_stats(session: aiohttp.ClientSession, sim_url: str) -> UpstreamStats:
    async with session.get(f"{sim_url}/_sim/stats") as response:
        response.raise_for_status()
        return UpstreamStats.from_json(await response.json())


async def reset_simulator_stats(session: aiohttp.ClientSession, sim_url: str) -> None:
    async with session.post(f"{sim_url}/_sim/reset-stats") as response:
        response.raise_for_status()
