"""The demo's table, one column per phase, and what each figure in it means.

Newcomers asked why the proxy column shows more client requests than the one without, why the
long poll shows a p50 of seconds and no 304s, and why completion is noticed later through the
proxy. Each has a reason that follows from the API's ``Cache-Control`` and from what a long
poll is, so the demo prints that reason under the table, with this run's numbers in it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.tools.demo.stats import ProxyStats, UpstreamStats
from proxy.tools.fleet import FleetResult, percentile

_NOTE_WIDTH = 100


@dataclass(frozen=True)
class PhaseResult:
    """One column of the table: a fleet run through one path to the simulator.

    ``wait``: the ``Prefer: wait`` its pollers sent (a long-poll phase), else ``None``;
    ``events``: its clients subscribed to server-sent events instead of polling.
    """

    label: str
    fleet: FleetResult
    upstream: UpstreamStats
    proxy: ProxyStats | None = None
    wait: int | None = None
    events: bool = False


@dataclass(frozen=True)
class FleetSetting:
    """What the phases had in common, for the notes: how often pollers asked, how long a phase
    could last, and the ``max-age`` the API gave a pending transcription."""

    interval: float
    phase_seconds: float
    pending_max_age: int


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f} s"


def _saved(baseline: PhaseResult, phase: PhaseResult) -> str:
    if phase is baseline:
        return "—"
    before, after = baseline.upstream.bytes_sent, phase.upstream.bytes_sent
    share = f" ({(before - after) / before:.1%})" if before else ""
    return human_bytes(before - after) + share


def _per_poller(p: PhaseResult) -> float:
    return p.fleet.requests / p.fleet.pollers if p.fleet.pollers else 0.0


def _held(p: PhaseResult) -> str:
    if p.wait is None:
        return "—"
    held = percentile(p.fleet.held, 50)
    return f"{_s(held)} ({len(p.fleet.held)})" if held is not None else "none"


def _events(p: PhaseResult) -> str:
    return f"{p.fleet.events / p.fleet.pollers:.1f}" if p.events and p.fleet.pollers else "—"


def table_rows(phases: Sequence[PhaseResult]) -> list[tuple[str, list[str]]]:
    """The table's cells; the first phase is the baseline that "bandwidth saved" compares with."""
    if not phases:
        raise ValueError("need at least one phase")
    baseline = phases[0]

    def hit_ratio(p: PhaseResult) -> str:
        ratio = p.proxy.hit_ratio if p.proxy is not None else None
        return "—" if ratio is None else f"{ratio:.1%}"

    rows: list[tuple[str, Callable[[PhaseResult], str]]] = [
        ("phase took", lambda p: _s(p.fleet.elapsed)),
        ("client requests", lambda p: str(p.fleet.requests)),
        ("client requests per poller", lambda p: f"{_per_poller(p):.1f}"),
        ("upstream requests", lambda p: str(p.upstream.requests)),
        ("hit ratio", hit_ratio),
        ("304s answered locally", lambda p: str(p.proxy.not_modified if p.proxy else 0)),
        ("bytes sent to clients", lambda p: human_bytes(p.fleet.bytes_received)),
        ("bytes fetched from upstream", lambda p: human_bytes(p.upstream.bytes_sent)),
        ("bandwidth saved", lambda p: _saved(baseline, p)),
        ("p50 latency", lambda p: _ms(p.fleet.percentile(50))),
        ("p99 latency", lambda p: _ms(p.fleet.percentile(99))),
    ]
    if any(p.wait is not None for p in phases):
        rows.append(("long polls held for (p50, count)", _held))
    if any(p.events for p in phases):
        rows.append(("events received per client", _events))
    if any(p.fleet.cut for p in phases):
        rows.append(("long polls cut at the phase's end", lambda p: str(p.fleet.cut)))
    rows += [
        ("pollers that saw completion", lambda p: f"{p.fleet.pollers_done}/{p.fleet.pollers}"),
        ("completion noticed after (p50)", lambda p: _s(percentile(p.fleet.completion_lags, 50))),
        ("completion noticed after (max)", lambda p: _s(percentile(p.fleet.completion_lags, 100))),
    ]
    if any(p.fleet.errors for p in phases):
        rows.append(("client errors", lambda p: str(p.fleet.errors)))
    return [(name, [cell(p) for p in phases]) for name, cell in rows]


def format_table(phases: Sequence[PhaseResult]) -> str:
    """A plain-text table, one column per phase, aligned for a terminal."""
    rows = table_rows(phases)
    labels = [p.label for p in phases]
    name_width = max(len(name) for name, _ in rows)
    widths = [
        max(len(label), *(len(cells[i]) for _, cells in rows)) for i, label in enumerate(labels)
    ]
    header = " " * name_width + "".join(
        f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for name, cells in rows:
        lines.append(
            f"{name:<{name_width}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def _lag(p: PhaseResult) -> float | None:
    return percentile(p.fleet.completion_lags, 50)


def notes(phases: Sequence[PhaseResult], setting: FleetSetting) -> list[tuple[str, str]]:
    """(row, what its figures mean in this run), for the rows a newcomer would ask about."""
    if not phases:
        raise ValueError("need at least one phase")
    baseline = phases[0]
    polled = [p for p in phases[1:] if p.proxy is not None and p.wait is None and not p.events]
    held = [p for p in phases if p.wait is not None]
    streamed = [p for p in phases if p.events]
    age = setting.pending_max_age
    every = f"{setting.interval:g} s"
    result = [
        (
            "phase took",
            f"a phase ends as soon as every poller saw the final status, after "
            f"{setting.phase_seconds:g} s at most; each phase polls transcriptions of its own, "
            "created when it starts.",
        )
    ]
    requests = f"every poller asks every {every} (±20%) until it sees the final status, then stops."
    if polled:
        through, without = _per_poller(polled[0]), _per_poller(baseline)
        comparison = f"{through:.1f} requests a poller against {without:.1f} without"
        if through > without:
            requests += (
                ' Through the proxy it sees that status later (see "completion noticed"), so '
                f"it keeps asking longer: {comparison}, answered by the proxy, not the API."
            )
        else:
            requests += f" Through the proxy: {comparison}."
    if held:
        requests += (
            f" A long poller asks, then asks again with Prefer: wait={held[0].wait} and is "
            "answered only when the transcription changes: "
            f"{_per_poller(held[0]):.1f} requests a poller."
        )
    if streamed:
        requests += (
            " A subscriber (events column) sends one request, Accept: text/event-stream, and "
            "is sent every change on it until the final status: "
            f"{_per_poller(streamed[0]):.1f} requests a subscriber (more only if a stream "
            "broke and it reconnected with Last-Event-ID)."
        )
    result.append(("client requests", requests))
    result.append(
        (
            "upstream requests",
            "what reached the simulated API. Through the proxy: one fetch per transcription per "
            f"max-age window (the API sends max-age={age} while pending), however many pollers "
            "watch it.",
        )
    )
    if polled or held:
        result.append(
            (
                "hit ratio",
                "the proxy's answers from its stored copy (a held long poll answered from the "
                "refreshed copy included). Requests that arrive while a copy is being fetched "
                "share that one fetch and count as misses, so a busy machine shows a lower ratio "
                "for the same upstream requests.",
            )
        )
    if held:
        result.append(
            (
                "304s answered locally",
                "the proxy's 304s to If-None-Match against its fresh copy. A long poll that "
                "would get one is held instead and answered 200 once the transcription changes, "
                f"so that column shows (almost) none: a 304 comes only when its "
                f"{held[0].wait} s wait runs out.",
            )
        )
    sent = (
        "as received on the wire, before decoding: the proxy sends gzip to the pollers "
        "whose Accept-Encoding allows it."
    )
    if streamed:
        sent += (
            " Event streams are sent uncompressed (each event must reach the client at once), "
            "so the events column carries every changed JSON as it is."
        )
    result.append(("bytes sent to clients", sent))
    if held:
        result += [
            (
                "p50 latency",
                "of the answers that were not held; a held long poll is counted apart (next "
                "row), since waiting for a change is its purpose, not slowness. In the long-poll "
                "column that leaves each poller's first request, all sent in the phase's first "
                "interval, when the proxy fetches every transcription for the first time.",
            ),
            (
                "long polls held for",
                "how long a held request waited for the change: until the proxy's copy was "
                f"{age} s old (max-age), when it revalidated and the change was there.",
            ),
        ]
    if streamed:
        result.append(
            (
                "events received per client",
                "server-sent events a subscriber got: one per change of the transcription "
                "(queued, processing, completed; fewer when a change fell within one max-age "
                "window), heartbeat comments not counted. In the events column p50 and p99 "
                "latency are each stream's time to its first event.",
            )
        )
    if any(p.fleet.cut for p in phases):
        result.append(
            (
                "long polls cut",
                "still held when the phase's time ran out (nothing had changed yet), so the "
                "fleet hung up; not errors, though the proxy's figures may count them as 304s "
                "answered locally. A longer --duration lets them see the change.",
            )
        )
    completion = (
        "from the transcription's completed_at until the poller saw it. Without the proxy: "
        f"within about one polling interval ({every} ±20%, plus the answer's own time)."
    )
    lags = [(p.label, _lag(p)) for p in phases]
    base_lag = _lag(baseline)
    if polled or held:
        later = [
            f"{lag - base_lag:+.1f}s {label}"
            for label, lag in lags[1:]
            if lag is not None and base_lag is not None
        ]
        completion += (
            f" Through the proxy up to max-age ({age} s) later"
            + (f" ({', '.join(later)} at p50)" if later else "")
            + f", by design: the API sends a pending transcription with Cache-Control: "
            f"max-age={age}, so a shared cache answers from its copy until that copy is {age} s "
            "old (RFC 9111 §4.2) and only then asks the API again. Long polls and event "
            "streams are woken by that same revalidation, so they notice no sooner. This lag is "
            "the price of the upstream requests saved; an API that wants completion seen "
            "sooner sends a shorter max-age."
        )
    result.append(("completion noticed after", completion))
    return result


def wrapped(text: str, first: str = "", rest: str = "  ") -> list[str]:
    """``text`` in lines for a terminal, no number split from its unit."""
    return textwrap.wrap(
        text, _NOTE_WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )


def format_notes(phases: Sequence[PhaseResult], setting: FleetSetting) -> str:
    """The notes as a block for a terminal, each after its row's name."""
    lines = ["What the figures mean:"]
    for name, text in notes(phases, setting):
        lines += wrapped(f"{name}: {text}", "- ")
    return "\n".join(lines)
