"""Sustained mixed traffic through the proxy, checking every answer and watching the process.

``tests/system/test_soak.py`` runs it for about 30 seconds; for a longer run::

    PYTHONPATH=. python bench/soak.py --seconds 600 [--workers 16] > soak.json

The traffic: polls of owned transcriptions (hits, misses, revalidations), conditional requests,
HEAD, sub-resources, creations (POST), purges, foreign and unknown IDs, anonymous calls, hostile
requests over raw sockets, and upstream faults injected through the simulator's ``/_sim/faults``.
Every answer is classified; anything that is neither correct nor a deliberate error (a 4xx the
request deserved, or a 502/503/504 envelope while faults are injected) is recorded as wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from proxy.tools.simulator import Simulator, SimulatorConfig, create_simulator_app

HOST = "127.0.0.1"
ADMIN_TOKEN = "soak-admin-token"
TOKENS = tuple(f"soak-token-{i}" for i in range(4))
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Statuses that are deliberate while faults are injected (with the API's error envelope): the
#: simulator's injected 500/503 passed through, or the proxy's own 502/504.
DELIBERATE_UPSTREAM = {500, 502, 503, 504}
HOSTILE = {
    "smuggling": (
        b"POST /v1/audio/transcribe HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "folding": (b"GET / HTTP/1.1\r\nHost: s\r\nX-A: a\r\n b\r\n\r\n", 400),
    "huge header": (b"GET / HTTP/1.1\r\nHost: s\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
    "long target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: s\r\n\r\n", 414),
    "garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "absolute form": (b"GET http://evil.test/ HTTP/1.1\r\nHost: s\r\n\r\n", 400),
}


@dataclass
class Tally:
    """What the traffic saw: a count per category, and the wrong answers."""

    counts: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def ok(self, category: str) -> None:
        self.counts[category] += 1

    def bad(self, description: str) -> None:
        self.counts["wrong"] += 1
        if len(self.wrong) < 50:
            self.wrong.append(description)

    def judge(self, right: bool, category: str, description: str) -> None:
        """Count a right answer in ``category``, or a wrong one as ``description``."""
        if right:
            self.ok(category)
        else:
            self.bad(description)


@dataclass
class Owned:
    token: str
    ids: list[str]
    etags: dict[str, str] = field(default_factory=dict)


def _envelope_field(body: bytes, success: bool, part: str, key: str) -> str | None:
    """``body[part][key]`` when ``body`` is an API envelope with that ``success`` and the field a
    string; ``None`` otherwise."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("success") is not success:
        return None
    inner = payload.get(part)
    value = inner.get(key) if isinstance(inner, dict) else None
    return value if isinstance(value, str) else None


def envelope_error(body: bytes) -> str | None:
    """The error code of an API error envelope, or ``None`` when the body is not one."""
    return _envelope_field(body, False, "error", "code")


def data_id(body: bytes) -> str | None:
    return _envelope_field(body, True, "data", "transcription_id")


class Traffic:
    """Workers sending the mix until a deadline; one task injecting upstream faults."""

    def __init__(self, proxy_url: str, sim_url: str, owned: list[Owned], seed: int) -> None:
        self.proxy_url = proxy_url
        self.sim_url = sim_url
        self.owned = owned
        self.random = random.Random(seed)
        self.tally = Tally()
        self.proxy_port = int(proxy_url.rsplit(":", 1)[1])

    async def run(self, seconds: float, workers: int) -> Tally:
        deadline = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as control:
            tasks = [asyncio.ensure_future(self._worker(i, deadline)) for i in range(workers)]
            tasks.append(asyncio.ensure_future(self._faults(control, deadline)))
            await asyncio.gather(*tasks)
            async with control.delete(self.sim_url + "/_sim/faults"):
                pass
        return self.tally

    async def _faults(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while time.monotonic() < deadline:
            fault = self.random.choice(
                [{"status": 503, "count": 3}, {"status": 500, "count": 2}, {"delay": 1.5}]
            )
            async with session.post(self.sim_url + "/_sim/faults", json=fault) as response:
                await response.read()
            self.tally.ok("fault injected")
            await asyncio.sleep(self.random.uniform(0.5, 1.5))

    async def _worker(self, index: int, deadline: float) -> None:
        rng = random.Random(self.random.random())
        timeout = aiohttp.ClientTimeout(total=15)
        actions = {
            self._get: 40,
            self._conditional: 14,
            self._head: 5,
            self._resource: 8,
            self._foreign: 6,
            self._unknown: 4,
            self._anonymous: 3,
            self._create: 6,
            self._purge: 2,
            self._hostile: 6,
        }
        choices, weights = list(actions), list(actions.values())
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                action = rng.choices(choices, weights)[0]
                owner = self.owned[rng.randrange(len(self.owned))]
                try:
                    await action(session, rng, owner)
                except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as error:
                    self.tally.bad(f"{action.__name__}: {type(error).__name__}: {error}")

    def _url(self, transcription_id: str, suffix: str = "") -> str:
        return f"{self.proxy_url}/v1/audio/transcribe/{transcription_id}{suffix}"

    async def _fetch(
        self, session: aiohttp.ClientSession, method: str, url: str, token: str | None, **kw: Any
    ) -> tuple[int, Any, bytes]:
        """One request (with ``token`` as its bearer, if any): status, headers, body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with session.request(method, url, headers=headers, **kw) as response:
            return response.status, response.headers, await response.read()

    def _judge(self, kind: str, status: int, body: bytes, ok: str | None, bad: str) -> None:
        """``ok`` names a right answer; else a deliberate upstream error envelope passes as
        ``KIND upstream error`` and anything else is ``bad``."""
        if ok is not None:
            self.tally.ok(ok)
        elif status in DELIBERATE_UPSTREAM and envelope_error(body):
            self.tally.ok(f"{kind} upstream error")
        else:
            self.tally.bad(bad)

    def _judge_poll(
        self, what: str, status: int, body: bytes, headers: Any, expected_id: str
    ) -> None:
        ok = None
        if status == 200 and data_id(body) == expected_id:
            hit = "; hit" in headers.get("Cache-Status", "")
            ok = f"{what} hit" if hit else f"{what} forwarded"
        self._judge(what, status, body, ok, f"{what} {expected_id}: {status} {body[:120]!r}")

    async def _get(self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned) -> None:
        transcription_id = rng.choice(owner.ids)
        url = self._url(transcription_id)
        status, headers, body = await self._fetch(session, "GET", url, owner.token)
        if status == 200 and "ETag" in headers:
            owner.etags[transcription_id] = headers["ETag"]
        self._judge_poll("poll", status, body, headers, transcription_id)

    async def _conditional(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        transcription_id = rng.choice(owner.ids)
        etag = owner.etags.get(transcription_id)
        if etag is None:
            return await self._get(session, rng, owner)
        status, headers, body = await self._fetch(
            session,
            "GET",
            self._url(transcription_id),
            owner.token,
            headers={"If-None-Match": etag},
        )
        if status == 304 and body == b"":
            self.tally.ok("conditional 304")
        else:
            self._judge_poll("conditional", status, body, headers, transcription_id)

    async def _head(self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned) -> None:
        transcription_id = rng.choice(owner.ids)
        url = self._url(transcription_id)
        status, _, body = await self._fetch(session, "HEAD", url, owner.token)
        right = status in (200, *DELIBERATE_UPSTREAM) and body == b""
        self.tally.judge(right, "head", f"HEAD {transcription_id}: {status}")

    async def _resource(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        transcription_id = rng.choice(owner.ids)
        url = self._url(transcription_id, "/paragraphs")
        status, _, body = await self._fetch(session, "GET", url, owner.token)
        not_ready = ("TRANSCRIPTION_NOT_COMPLETED", "TRANSCRIPTION_FAILED")
        if status == 409 and envelope_error(body) in not_ready:
            self.tally.ok("resource not ready")
            return
        good = status == 200 and b'"paragraphs"' in body and transcription_id.encode() in body
        bad = f"paragraphs {transcription_id}: {status} {body[:120]!r}"
        self._judge("resource", status, body, "resource" if good else None, bad)

    async def _refused(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        transcription_id: str,
        token: str | None,
        expected: tuple[int, str, str],
        leak: str,
    ) -> None:
        """A GET the proxy must refuse with ``expected`` (status, error code, tally name)."""
        status, _, body = await self._fetch(session, "GET", self._url(transcription_id), token)
        refused = status == expected[0] and envelope_error(body) == expected[1]
        self._judge(kind, status, body, expected[2] if refused else None, f"{leak}: {status}")

    async def _foreign(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        """Another token's ID: the proxy must never hand over the owner's stored answer."""
        others = [o for o in self.owned if o.token != owner.token]
        victim = rng.choice(others)
        transcription_id = rng.choice(victim.ids)
        leak = f"LEAK? {owner.token} got {transcription_id}"
        expected = (404, "TRANSCRIPTION_NOT_FOUND", "foreign refused")
        await self._refused(session, "foreign", transcription_id, owner.token, expected, leak)

    async def _unknown(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        transcription_id = f"trans_{rng.getrandbits(128):032x}"
        expected = (404, "TRANSCRIPTION_NOT_FOUND", "unknown")
        await self._refused(
            session,
            "unknown",
            transcription_id,
            owner.token,
            expected,
            f"unknown {transcription_id}",
        )

    async def _anonymous(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        transcription_id = rng.choice(owner.ids)
        leak = f"LEAK? anonymous got {transcription_id}"
        expected = (401, "UNAUTHORIZED", "anonymous refused")
        await self._refused(session, "anonymous", transcription_id, None, expected, leak)

    async def _create(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        payload = {"audio_url": f"https://example.test/{rng.getrandbits(32)}.mp3"}
        url = f"{self.proxy_url}/v1/audio/transcribe"
        status, _, body = await self._fetch(session, "POST", url, owner.token, json=payload)
        created = data_id(body) if status == 201 else None
        if created:
            owner.ids.append(created)
            if len(owner.ids) > 200:
                del owner.ids[: len(owner.ids) - 200]
        bad = f"POST: {status} {body[:120]!r}"
        self._judge("create", status, body, "create" if created else None, bad)

    async def _purge(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        transcription_id = rng.choice(owner.ids)
        url = self._url(transcription_id)
        status, _, body = await self._fetch(session, "PURGE", url, ADMIN_TOKEN)
        right = status == 200 and b'"success": true' in body
        self.tally.judge(right, "purge", f"PURGE {transcription_id}: {status} {body[:120]!r}")

    async def _hostile(
        self, session: aiohttp.ClientSession, rng: random.Random, owner: Owned
    ) -> None:
        name = rng.choice(list(HOSTILE))
        raw, expected = HOSTILE[name]
        reader, writer = await asyncio.open_connection(HOST, self.proxy_port)
        try:
            writer.write(raw)
            async with asyncio.timeout(10):
                status_line = await reader.readline()
                rest = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        body = rest.partition(b"\r\n\r\n")[2]
        right = status == expected and bool(envelope_error(body))
        self.tally.judge(right, f"hostile {name}", f"hostile {name}: {status_line!r}")


@contextlib.asynccontextmanager
async def simulated_api(seed: int) -> AsyncIterator[tuple[str, Simulator]]:
    """The simulated API on a free port, with short lifetimes so entries keep revalidating."""
    config = SimulatorConfig(
        queued_seconds=1.0,
        processing_seconds=3.0,
        failure_ratio=0.1,
        seed=seed,
        transcript_words=120,
        pending_max_age=1,
        final_max_age=3,
        status_check_interval=2.0,
    )
    simulator = Simulator(config)
    runner = web.AppRunner(create_simulator_app(simulator=simulator), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0).start()
        yield f"http://{HOST}:{runner.addresses[0][1]}", simulator
    finally:
        await runner.cleanup()


def seed_owned(simulator: Simulator, per_token: int) -> list[Owned]:
    owned = {token: Owned(token, []) for token in TOKENS}
    for token, transcription_id in simulator.seed(list(TOKENS), per_token * len(TOKENS)):
        owned[token].ids.append(transcription_id)
    return list(owned.values())


def proxy_arguments(sim_url: str) -> list[str]:
    """The proxy's flags for a soak: a small cache so the byte budget is reached early."""
    return [
        "--upstream", sim_url,
        "--host", HOST,
        "--port", "0",
        "--cache-max-bytes", "1MiB",
        "--upstream-timeout", "1",
        "--stale-grace", "2",
        "--keep-stale", "30",
        "--admin-token", ADMIN_TOKEN,
        "--access-log", "false",
        "--log-level", "info",
    ]  # fmt: skip


class ProxyProcess:
    """``python -m proxy`` in a child process, its log drained, its RSS and descriptors read."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, arguments: list[str]) -> ProxyProcess:
        env = {
            **os.environ,
            "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", *arguments,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert process.stderr is not None
        log: list[str] = []
        async with asyncio.timeout(20):
            while True:
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("the proxy exited:\n" + "".join(log))
                log.append(line)
                if match := re.search(r"Running on (http://\S+) \(proxy\)", line):
                    url = match.group(1)
                    break
        started = cls(process, url, log)
        started._drain = asyncio.ensure_future(started._pump())
        return started

    async def _pump(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            if len(self.log) < 10_000:
                self.log.append(line.decode())

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        async with asyncio.timeout(20):
            code = await self.process.wait()
        if self._drain is not None:
            await self._drain
        return code


@dataclass
class SoakReport:
    seconds: float
    workers: int
    tally: Tally
    rss: list[tuple[float, int]]
    descriptors_before: int
    descriptors_after: int
    exit_code: int

    def rss_halves(self, warmup: float = 0.2) -> tuple[float, float]:
        """Median RSS of the first and second half of the run, after a warm-up share."""
        start = self.rss[0][0] + warmup * (self.rss[-1][0] - self.rss[0][0])
        samples = [value for t, value in self.rss if t >= start]
        half = len(samples) // 2
        return statistics.median(samples[:half]), statistics.median(samples[half:])

    def summary(self) -> dict[str, Any]:
        first, second = self.rss_halves()
        return {
            "seconds": self.seconds,
            "workers": self.workers,
            "answers": sum(v for k, v in self.tally.counts.items() if k != "wrong"),
            "counts": dict(sorted(self.tally.counts.items())),
            "wrong": self.tally.wrong,
            "rss_mib_first_half_median": round(first / 2**20, 2),
            "rss_mib_second_half_median": round(second / 2**20, 2),
            "rss_mib_max": round(max(v for _, v in self.rss) / 2**20, 2),
            "descriptors_before": self.descriptors_before,
            "descriptors_after": self.descriptors_after,
            "exit_code": self.exit_code,
        }


async def wait_for_descriptors(proxy: ProxyProcess, at_most: int, seconds: float) -> int:
    """The proxy's descriptor count once it is back to ``at_most`` (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    count = proxy.descriptors()
    while count > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = proxy.descriptors()
    return count


async def soak(seconds: float, *, workers: int = 12, seed: int = 7) -> SoakReport:
    """Run the mix against a proxy process; measure RSS throughout and descriptors after."""
    rss: list[tuple[float, int]] = []
    async with simulated_api(seed) as (sim_url, simulator):
        owned = seed_owned(simulator, per_token=25)
        proxy = await ProxyProcess.start(proxy_arguments(sim_url))
        try:
            before = proxy.descriptors()
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    rss.append((time.monotonic(), proxy.rss()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.25)

            sampler = asyncio.ensure_future(sample())
            try:
                tally = await Traffic(proxy.url, sim_url, owned, seed).run(seconds, workers)
            finally:
                done.set()
                await sampler
        except BaseException:
            await proxy.stop()
            raise
    # The simulator is gone, so the proxy's pooled upstream connections have been closed.
    after = await wait_for_descriptors(proxy, before, 10.0)
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/healthz") as r:
        if r.status != 200:
            tally.bad(f"healthz after the soak: {r.status}")
    exit_code = await proxy.stop()
    return SoakReport(seconds, workers, tally, rss, before, after, exit_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    report = asyncio.run(soak(args.seconds, workers=args.workers, seed=args.seed))
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.tally.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
