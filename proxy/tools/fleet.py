"""The polling fleet: clients that poll transcriptions as real ones do, shared by demo and bench.

One poller per (token, ID): its first poll goes out at a random point of the interval, then one
every interval ± jitter with ``If-None-Match`` and the last ``ETag``, until it sees a final status.
With ``wait`` it long-polls instead (RFC 7240 ``Prefer: wait``): each conditional request may be
held until the response changes, and the next one goes out as soon as a held answer arrives.
Like a real fleet, its clients spell ``Accept-Encoding`` the ways real HTTP libraries and browsers
do (``SPELLINGS``), and bytes are counted as received on the wire, before decoding.

``python -m proxy demo`` runs it without and with the proxy; ``bench.fleet`` and
``bench.longpoll`` run the same fleet through other caches and scales.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import aiohttp

from proxy.core.coding import CodingError, decode
from proxy.tools.simulator.model import API_PREFIX, TERMINAL_STATUSES

#: How clients in the wild spell Accept-Encoding: none, requests/httpx, aiohttp, a hand-written
#: header, an upper-cased one, curl --compressed, Chromium (``shared/api``, "Clients seen").
SPELLINGS: Final = (
    "",
    "gzip",
    "gzip, deflate",
    "gzip,deflate",
    "GZIP, DEFLATE",
    "deflate, gzip, br, zstd",
    "gzip, deflate, br, zstd",
)
#: The long-polling fleet's ``Prefer: wait`` (RFC 7240), in seconds.
LONG_POLL_WAIT: Final = 25
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=10.0)
#: Seconds the pollers get past the fleet's duration before the ones still waiting are cancelled.
_SHUTDOWN_GRACE: Final = 2.0
#: Decoded bodies a poller reads, at most (the simulator's are far smaller).
_MAX_DECODED: Final = 64 * 1024 * 1024


def fleet_session(connections: int, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A client session that sends only the ``Accept-Encoding`` a poller is given and counts
    bodies as they arrive (no decoding by aiohttp), with a connection per poller."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


def decoded(response: aiohttp.ClientResponse, body: bytes) -> bytes:
    """The body without its content coding (as is if it cannot be decoded)."""
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    if not coding or coding == "identity":
        return body
    try:
        return decode(coding, body, _MAX_DECODED)
    except CodingError:
        return body


def final_at(body: bytes) -> float | None:
    """When the transcription became final (epoch seconds, its ``completed_at``), or ``None``
    while it is not."""
    try:
        data = json.loads(body)["data"]
        if data["status"] not in TERMINAL_STATUSES:
            return None
        return datetime.fromisoformat(data["completed_at"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class FleetProgress:
    elapsed: float
    requests: int
    pollers_done: int
    pollers: int


@dataclass(frozen=True)
class FleetResult:
    """What the clients saw, in seconds where timed.

    ``latencies``: per answer that was not held, how long it took. ``held``: per long poll the
    cache held (its answer carried ``Preference-Applied``), how long it waited for a change; a
    hold is not slowness, so it is kept apart. ``completion_lags``: per poller that saw a final
    status, how long after the transcription became final it noticed; a cache trades this
    (bounded by the pending response's ``max-age``) for upstream load. ``cut``: long polls still
    held when the fleet's time ran out, cancelled then (not errors: nothing had changed yet).
    """

    pollers: int
    pollers_done: int
    requests: int
    errors: int
    statuses: Mapping[int, int]
    bytes_received: int
    latencies: tuple[float, ...]
    elapsed: float
    completion_lags: tuple[float, ...] = ()
    held: tuple[float, ...] = ()
    cut: int = 0
    #: Server-sent events received (an event-stream fleet; ``latencies`` is then each
    #: stream's time to its first event).
    events: int = 0

    def percentile(self, q: float) -> float | None:
        """Nearest-rank latency percentile, ``q`` in [0, 100]; ``None`` without any response."""
        return percentile(self.latencies, q)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Tally:
    pollers: int
    requests: int = 0
    errors: int = 0
    done: int = 0
    bytes_received: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    completion_lags: list[float] = field(default_factory=list)
    holding: set[int] = field(default_factory=set)
    events: int = 0


@dataclass(frozen=True)
class _Poller:
    index: int
    url: str
    token: str
    accept_encoding: str | None
    interval: float
    jitter: float
    wait: int | None


async def _poll(
    session: aiohttp.ClientSession,
    poller: _Poller,
    deadline: float,
    rng: random.Random,
    tally: _Tally,
) -> None:
    """One client: first poll at a random point of the interval, then every interval ± jitter.

    With ``wait`` it long-polls: each conditional request carries ``Prefer: wait``, and the next
    one goes out as soon as a held answer arrives (after an interval if the wait was not applied).
    """
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {poller.token}"}
    if poller.accept_encoding is not None:
        headers["Accept-Encoding"] = poller.accept_encoding
    wait = poller.wait
    timeout = aiohttp.ClientTimeout(total=wait + 10.0) if wait else None
    delay = rng.uniform(0.0, poller.interval)
    while True:
        if deadline - loop.time() <= delay:
            return
        await asyncio.sleep(delay)
        if wait and "If-None-Match" in headers:
            headers["Prefer"] = f"wait={wait}"
            tally.holding.add(poller.index)
        started = time.perf_counter()
        answer: tuple[aiohttp.ClientResponse, bytes] | None = None
        try:
            async with session.get(poller.url, headers=headers, timeout=timeout) as response:
                answer = response, await response.read()
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
        finally:
            tally.holding.discard(poller.index)
        if answer is not None:
            response, body = answer
            took = time.perf_counter() - started
            was_held = bool(wait) and "Preference-Applied" in response.headers
            (tally.held if was_held else tally.latencies).append(took)
            tally.requests += 1
            tally.statuses[response.status] += 1
            tally.bytes_received += len(body)
            if response.status == 200:
                etag = response.headers.get("ETag")
                if etag:
                    headers["If-None-Match"] = etag
                became_final = final_at(decoded(response, body))
                if became_final is not None:
                    tally.done += 1
                    tally.completion_lags.append(max(0.0, time.time() - became_final))
                    return
            if was_held:
                delay = 0.0
                continue
        delay = poller.interval * rng.uniform(1.0 - poller.jitter, 1.0 + poller.jitter)


#: No total time for a stream: it lasts until the final event (or the fleet's end).
_STREAM_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=10.0)


async def _subscribe(
    session: aiohttp.ClientSession,
    poller: _Poller,
    deadline: float,
    rng: random.Random,
    tally: _Tally,
) -> None:
    """One ``EventSource``-like client: ``Accept: text/event-stream``, one request for all the
    changes; it reconnects with ``Last-Event-ID`` after an interval if a stream ends early."""
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {poller.token}", "Accept": "text/event-stream"}
    delay = rng.uniform(0.0, poller.interval)
    received = 0
    while deadline - loop.time() > delay:
        await asyncio.sleep(delay)
        delay = poller.interval
        started = time.perf_counter()
        tally.holding.add(poller.index)
        try:
            async with session.get(poller.url, headers=headers, timeout=_STREAM_TIMEOUT) as answer:
                tally.requests += 1
                tally.statuses[answer.status] += 1
                if answer.status == 204:
                    return  # seen to the end already
                data: list[str] = []
                async for raw in answer.content:
                    tally.bytes_received += len(raw)
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("id:"):
                        headers["Last-Event-ID"] = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        if not received:
                            tally.latencies.append(time.perf_counter() - started)
                        received += 1
                        tally.events += 1
                        became_final = final_at("\n".join(data).encode())
                        data = []
                        if became_final is not None:
                            tally.done += 1
                            tally.completion_lags.append(max(0.0, time.time() - became_final))
                            return
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
        finally:
            tally.holding.discard(poller.index)


def assign_pollers(
    transcriptions: Sequence[tuple[str, str]], pollers: int
) -> list[tuple[str, str]]:
    """Spread ``pollers`` evenly over (token, id) pairs: several clients watch each one."""
    if not transcriptions:
        raise ValueError("need at least one transcription")
    return [transcriptions[i % len(transcriptions)] for i in range(pollers)]


async def run_fleet(
    base_url: str,
    tokens_and_ids: Sequence[tuple[str, str]],
    duration: float,
    *,
    session: aiohttp.ClientSession | None = None,
    interval: float = 0.5,
    jitter: float = 0.2,
    seed: int = 0,
    on_progress: Callable[[FleetProgress], None] | None = None,
    progress_every: float = 1.0,
    spellings: Sequence[str | None] = SPELLINGS,
    wait: int | None = None,
    events: bool = False,
) -> FleetResult:
    """Poll until every poller saw a final status or ``duration`` seconds passed.

    One poller per (token, id) element; poller ``i`` sends ``spellings[i % len]`` as its
    ``Accept-Encoding`` (``None``: no such field). Without ``session`` a private one is made
    (``fleet_session``), with enough connections for every poller at once.
    With ``wait`` the pollers long-poll (``Prefer: wait``, RFC 7240) instead; with ``events``
    each subscribes once to server-sent events (``Accept: text/event-stream``).
    """
    if session is None:
        async with fleet_session(len(tokens_and_ids) + 16, REQUEST_TIMEOUT) as own:
            return await run_fleet(
                base_url,
                tokens_and_ids,
                duration,
                session=own,
                interval=interval,
                jitter=jitter,
                seed=seed,
                on_progress=on_progress,
                progress_every=progress_every,
                spellings=spellings,
                wait=wait,
                events=events,
            )
    loop = asyncio.get_running_loop()
    client = _subscribe if events else _poll
    rng = random.Random(seed)
    tally = _Tally(pollers=len(tokens_and_ids))
    started = loop.time()
    deadline = started + duration
    base = base_url.rstrip("/")

    def progress() -> FleetProgress:
        return FleetProgress(loop.time() - started, tally.requests, tally.done, tally.pollers)

    pollers = [
        asyncio.create_task(
            client(
                session,
                _Poller(
                    index,
                    f"{base}{API_PREFIX}/{transcription_id}",
                    token,
                    spellings[index % len(spellings)] if spellings else None,
                    interval,
                    jitter,
                    wait,
                ),
                deadline,
                random.Random(rng.getrandbits(64)),
                tally,
            )
        )
        for index, (token, transcription_id) in enumerate(tokens_and_ids)
    ]
    reporter = asyncio.create_task(_report(progress, on_progress, progress_every))
    cut = 0
    try:
        _, running = await asyncio.wait(pollers, timeout=duration)
        # A long poll still held has nothing to answer yet: cut it now. A plain request in
        # flight gets a grace to finish; one that overstays it counts as an error.
        held = {pollers[i] for i in tally.holding} & running
        cut = len(held)
        for task in held:
            task.cancel()
        rest = running - held
        if rest:
            _, late = await asyncio.wait(rest, timeout=_SHUTDOWN_GRACE)
            tally.errors += len(late)
    finally:
        for task in (*pollers, reporter):
            task.cancel()
        await asyncio.gather(*pollers, reporter, return_exceptions=True)
    if on_progress is not None:
        on_progress(progress())
    return FleetResult(
        pollers=tally.pollers,
        pollers_done=tally.done,
        requests=tally.requests,
        errors=tally.errors,
        statuses=dict(tally.statuses),
        bytes_received=tally.bytes_received,
        latencies=tuple(sorted(tally.latencies)),
        elapsed=loop.time() - started,
        completion_lags=tuple(sorted(tally.completion_lags)),
        held=tuple(sorted(tally.held)),
        cut=cut,
        events=tally.events,
    )


async def _report(
    progress: Callable[[], FleetProgress],
    on_progress: Callable[[FleetProgress], None] | None,
    every: float,
) -> None:
    if on_progress is None:
        return
    while True:
        await asyncio.sleep(every)
        on_progress(progress())


def merged(results: Sequence[FleetResult]) -> FleetResult:
    """One fleet's result from its parts polling different replicas at the same time."""
    statuses: Counter[int] = Counter()
    for result in results:
        statuses.update(result.statuses)
    return FleetResult(
        pollers=sum(r.pollers for r in results),
        pollers_done=sum(r.pollers_done for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        statuses=dict(statuses),
        bytes_received=sum(r.bytes_received for r in results),
        latencies=tuple(sorted(x for r in results for x in r.latencies)),
        elapsed=max(r.elapsed for r in results),
        completion_lags=tuple(sorted(x for r in results for x in r.completion_lags)),
        held=tuple(sorted(x for r in results for x in r.held)),
        cut=sum(r.cut for r in results),
    )


async def spread_fleet(
    base_urls: Sequence[str],
    assignments: Sequence[tuple[str, str]],
    duration: float,
    *,
    session: aiohttp.ClientSession,
    interval: float,
    seed: int = 0,
    wait: int | None = None,
) -> FleetResult:
    """The fleet with its pollers dealt round-robin over ``base_urls``, as a load balancer would."""
    parts = [assignments[i :: len(base_urls)] for i in range(len(base_urls))]
    results = await asyncio.gather(
        *(
            run_fleet(
                url, part, duration, session=session, interval=interval, seed=seed + i, wait=wait
            )
            for i, (url, part) in enumerate(zip(base_urls, parts, strict=True))
            if part
        )
    )
    return merged(results)


async def seed_simulator(
    session: aiohttp.ClientSession, sim_url: str, tokens: Sequence[str], count: int
) -> list[tuple[str, str]]:
    """Create ``count`` transcriptions over ``tokens`` through the simulator's control plane."""
    payload = {"tokens": list(tokens), "count": count}
    async with session.post(f"{sim_url}/_sim/seed", json=payload) as response:
        response.raise_for_status()
        created = (await response.json())["transcriptions"]
    return [(str(item["token"]), str(item["transcription_id"])) for item in created]
