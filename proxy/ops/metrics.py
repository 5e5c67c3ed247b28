"""Prometheus metrics, registered on a registry passed in (never the global one).

Labels are bounded: a route class, a cache result, a status class, an error kind or a store
backend. Never an ID, a raw path or a credential.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import product
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy import __version__

ROUTES = ("transcription", "transcription_resource", "other")
RESULTS = ("hit", "miss", "revalidated", "stale", "bypass", "error")
#: ``status`` of ``cacheproxy_upstream_requests_total``: a status class, or ``error`` when no
#: response arrived (the kind is then in ``cacheproxy_upstream_errors_total``).
UPSTREAM_STATUSES = ("2xx", "3xx", "4xx", "5xx", "error")
LONG_POLL_OUTCOMES = ("changed", "timeout", "shed", "error")
#: How an event stream (``Accept: text/event-stream``) ended.
EVENT_STREAM_OUTCOMES = ("final", "seen", "disconnected", "shed", "drained", "error")
#: What an event stream writes: an event (a change) or a heartbeat comment.
EVENT_KINDS = ("event", "heartbeat")
UPSTREAM_ERROR_KINDS = ("refused", "timeout", "invalid", "5xx", "429")
CLIENT_PHASES = ("head", "body", "send")
TABLES = ("held_back", "invalidation")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``1.0``, ``0.0005``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


class LoopCounterChild:
    """One series of a ``LoopCounter``: a plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter(Collector):
    """A counter for the per-request path, exposed like a prometheus_client ``Counter``.

    prometheus_client takes a lock and re-validates on every ``inc``; for a cache hit that was
    about a tenth of the proxy's CPU (``python -m bench.profile``). The proxy updates metrics
    only on its event-loop thread, where ``/metrics`` also reads them, so a plain addition is
    enough. Unlabelled counters are incremented directly, labelled ones through ``labels()``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LoopCounterChild] = {}
        if not self.labelnames:
            self._children[()] = LoopCounterChild()
        registry.register(self)

    def labels(self, *values: str) -> LoopCounterChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopCounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].value += amount

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        return [family]


class LoopHistogramChild:
    """One series of a ``LoopHistogram``: counts per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def observe_many(self, amount: float, count: int) -> None:
        """``count`` observations of ``amount``."""
        self.counts[bisect_left(self.bounds, amount)] += count
        self.sum += amount * count

    def cumulative(self) -> Iterator[tuple[str, float]]:
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            yield _le(bound), float(total)


class LoopHistogram(Collector):
    """A histogram for the per-request path, exposed like a prometheus_client ``Histogram``.

    Same reasoning as ``LoopCounter``: one bisect and two additions per observation.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogramChild(self.bounds)
        return child

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, list(child.cumulative()), child.sum)
        return [family]


Labelled = TypeVar("Labelled", Counter, Histogram)


def _at_zero(metric: Labelled, *values: Sequence[str]) -> Labelled:
    """``metric`` with a series for every combination of the bounded label ``values`` from the
    start, so that rates and ratios in PromQL return a series (0, not "no data") before the
    first event of a kind has happened."""
    for labels in product(*values):
        metric.labels(*labels)
    return metric


class Metrics:
    """The proxy's metrics, with the label children of the hot path resolved up front."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = LoopCounter(
            "cacheproxy_requests",
            "Client requests by route and cache result.",
            ("route", "result"),
            registry=registry,
        )
        self.not_modified = Counter(
            "cacheproxy_not_modified",
            "Conditional requests answered locally with 304 Not Modified.",
            registry=registry,
        )
        self.upstream_requests = self._counter(
            "cacheproxy_upstream_requests",
            "Requests sent upstream by route and response status class (or error kind).",
            route=ROUTES,
            status=UPSTREAM_STATUSES,
        )
        self.upstream_errors = self._counter(
            "cacheproxy_upstream_errors",
            "Upstream failures by kind: refused, timeout, invalid, 5xx, 429.",
            route=ROUTES,
            kind=UPSTREAM_ERROR_KINDS,
        )
        self.upstream_duration = _at_zero(
            Histogram(
                "cacheproxy_upstream_request_duration_seconds",
                "Time until the upstream's response head arrived.",
                ("route",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            ROUTES,
        )
        self.request_duration = LoopHistogram(
            "cacheproxy_request_duration_seconds",
            "Time to answer a client, by cache result.",
            ("result",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.coalesced = Counter(
            "cacheproxy_coalesced_requests",
            "Client requests that shared another request's upstream fetch.",
            registry=registry,
        )
        self.cache_entries = Gauge(
            "cacheproxy_cache_entries",
            "Records (URIs with their variants) held in the in-process cache.",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "cacheproxy_cache_bytes",
            "Bytes accounted to the in-process cache's budget.",
            registry=registry,
        )
        self.cache_max_bytes = Gauge(
            "cacheproxy_cache_max_bytes",
            "The in-process cache's byte budget, to compare cacheproxy_cache_bytes against.",
            registry=registry,
        )
        self.table_bytes = Gauge(
            "cacheproxy_table_bytes",
            "Bytes accounted to the per-key tables kept beside the cache (each within a fixed "
            "budget): table is held_back (Retry-After) or invalidation.",
            ["table"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "cacheproxy_cache_evictions",
            "Records evicted to stay within the byte budget.",
            registry=registry,
        )
        self.response_bytes = LoopCounter(
            "cacheproxy_response_bytes",
            "Body bytes sent to clients.",
            registry=registry,
        )
        self.upstream_bytes = Counter(
            "cacheproxy_upstream_bytes",
            "Body bytes received from the upstream.",
            registry=registry,
        )
        self.bytes_saved = LoopCounter(
            "cacheproxy_bytes_saved",
            "Body bytes sent to clients from the cache instead of fetched upstream.",
            registry=registry,
        )
        self.store_errors = Counter(
            "cacheproxy_store_errors",
            "Store operations that failed, by backend.",
            ("backend",),
            registry=registry,
        )
        self.store_unreadable = Counter(
            "cacheproxy_store_unreadable_entries",
            "Reads that found a shared entry this version cannot decode (another format "
            "version, corruption): treated as misses.",
            ("backend",),
            registry=registry,
        )
        self.store_degraded = Gauge(
            "cacheproxy_store_degraded",
            "1 while a shared store is unreachable and the proxy serves from memory and upstream.",
            ("backend",),
            registry=registry,
        )
        self.client_connections = Gauge(
            "cacheproxy_client_connections",
            "Client connections the public listener holds open.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "cacheproxy_connections_refused",
            "Client connections refused or closed early because --max-connections was reached.",
            registry=registry,
        )
        self.client_timeouts = self._counter(
            "cacheproxy_client_timeouts",
            "Client connections cut for being too slow, by phase: head (request head or "
            "keep-alive idle), body (a pause in a request body), send (a response left unread).",
            phase=CLIENT_PHASES,
        )
        self.http2_errors = Counter(
            "cacheproxy_http2_errors",
            "HTTP/2 connections ended by a GOAWAY for an error, by its code (protocol_error, "
            "enhance_your_calm for floods, rapid resets and HPACK bombs, ...).",
            ("code",),
            registry=registry,
        )
        self.waiting_requests = Gauge(
            "cacheproxy_waiting_requests",
            "Requests held for a change with 'Prefer: wait' (long polls) right now.",
            registry=registry,
        )
        self.long_polls = Counter(
            "cacheproxy_long_poll",
            "Held requests by how they ended: changed, timeout, shed (--max-waiters reached, "
            "answered at once) or error.",
            ("outcome",),
            registry=registry,
        )
        self._long_polls = {
            outcome: self.long_polls.labels(outcome) for outcome in LONG_POLL_OUTCOMES
        }
        self.event_streams = self._counter(
            "cacheproxy_event_streams",
            "Event streams (Accept: text/event-stream) by how they ended: final (completed or "
            "failed sent), seen (204: the final event was already seen), disconnected, shed "
            "(--max-waiters reached), drained (shutdown) or error.",
            outcome=EVENT_STREAM_OUTCOMES,
        )
        self.events_sent = self._counter(
            "cacheproxy_events_sent",
            "Server-sent events written, by kind: event (a change) or heartbeat (a comment).",
            kind=EVENT_KINDS,
        )
        self.open_event_streams = Gauge(
            "cacheproxy_open_event_streams",
            "Event streams open right now (each also counts in cacheproxy_waiting_requests).",
            registry=registry,
        )
        self.build_info = Info(
            "cacheproxy_build",
            "The version of aitronos-cache-proxy.",
            registry=registry,
        )
        self.build_info.info({"version": __version__})
        self._requests = {
            (route, result): self.requests.labels(route, result)
            for route in ROUTES
            for result in RESULTS
        }
        self._durations = {result: self.request_duration.labels(result) for result in RESULTS}

    def _counter(self, name: str, documentation: str, **values: Sequence[str]) -> Counter:
        """A counter labelled by the names of ``values``, with a series at 0 for each
        combination of their values (``_at_zero``)."""
        return _at_zero(
            Counter(name, documentation, tuple(values), registry=self.registry), *values.values()
        )

    def track_store(self, entries: Callable[[], int], size: Callable[[], int]) -> None:
        self.cache_entries.set_function(entries)
        self.cache_bytes.set_function(size)

    def track_tables(self, held_back: Callable[[], int], invalidation: Callable[[], int]) -> None:
        for table, size in zip(TABLES, (held_back, invalidation), strict=True):
            self.table_bytes.labels(table).set_function(size)

    def track_backend(self, backend: str, max_bytes: int) -> None:
        """Expose the store's error series at 0 and the byte budget the cache is sized to."""
        self.store_errors.labels(backend)
        self.cache_max_bytes.set(max_bytes)

    def hit_series(self, route: str) -> tuple[LoopCounterChild, LoopHistogramChild]:
        """The request counter and duration histogram of a hit on ``route``, for the fast path
        to update with plain additions."""
        return self._requests[route, "hit"], self._durations["hit"]

    def count_long_poll(self, outcome: str, count: int = 1) -> None:
        """``count`` held requests ended (``LONG_POLL_OUTCOMES``), without a ``labels``
        look-up."""
        child = self._long_polls.get(outcome)
        if child is None:
            child = self._long_polls[outcome] = self.long_polls.labels(outcome)
        child.inc(count)

    def observe_request(self, route: str, result: str, seconds: float) -> None:
        self._requests[route, result].inc()
        self._durations[result].observe(seconds)

    def observe_requests(self, route: str, result: str, seconds: float, count: int) -> None:
        """``count`` requests answered together, ``seconds`` each (one wake's waiters)."""
        self._requests[route, result].inc(count)
        self._durations[result].observe_many(seconds, count)
