"""The fast path of a hit and the full RFC 9111 policy give the same answers (hypothesis).

For generated stored responses and requests, the answer our front sends over a real socket (the
fast path when it applies) is compared with what ``CachingProxy`` answers for the same request at
the same instant through the seam: status, every field but the connection's own, and the body.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from proxy.cache.exchange import Fields, ProxyRequest
from proxy.core.coding import CodingPolicy, Representation, encode, representations
from proxy.core.headers import format_http_date
from proxy.core.models import StoredResponse
from proxy.front.server import FrontServer
from proxy.ops.config import Settings
from proxy.runtime import Runtime
from proxy.stores.memory import MemoryStore
from proxy.tools.fleet import SPELLINGS
from tests.conftest import FakeClock
from tests.support.rawkit import HOST, read_response

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "150"))
CONNECTION_FIELDS = {"connection", "content-length", "transfer-encoding"}


@dataclass
class Recorded:
    """A ``Responder`` keeping what the cache wrote."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def send(
        self, status: int, reason: str, headers: Fields, body: bytes, *, close: bool = False
    ) -> None:
        self.status, self.headers, self.body = status, list(headers), body

    async def start(self, status: int, reason: str, headers: Fields) -> None:
        self.status, self.headers = status, list(headers)

    async def write(self, chunk: bytes) -> None:
        self.body += chunk

    async def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass(frozen=True)
class Case:
    status: int
    max_age: int | None
    age_field: int | None
    resident: float
    etag: str | None
    inm: str | None
    method: str
    token: str | None
    stored_for: str | None
    extra: tuple[tuple[str, str], ...]
    compressible: bool
    stored_coding: str
    vary_coding: bool
    accept_encoding: str | None


TAGS = ['"a"', 'W/"a"', '"b"', 'W/"a-gzip"', 'W/"a-identity"']
#: The spellings real fleets send (transcription-api.md, "Clients seen in the wild"), and edges.
ACCEPT_ENCODINGS = [
    None,
    *SPELLINGS,
    "identity;q=0",
    "br;q=0.5, gzip",
    "zstd",
    "*;q=0",
]
cases = st.builds(
    Case,
    status=st.sampled_from([200, 203, 404]),
    max_age=st.one_of(st.none(), st.integers(0, 120)),
    age_field=st.one_of(st.none(), st.integers(0, 200)),
    resident=st.floats(0, 150, allow_nan=False),
    etag=st.one_of(st.none(), st.sampled_from(TAGS)),
    inm=st.one_of(st.none(), st.sampled_from([*TAGS, "*", '"a", "b"', "garbage", ""])),
    method=st.sampled_from(["GET", "HEAD"]),
    token=st.sampled_from([None, "tok-a", "tok-b"]),
    stored_for=st.sampled_from([None, "tok-a", "tok-b"]),
    extra=st.lists(
        st.tuples(
            st.sampled_from(["X-Thing", "Content-Type", "Link"]),
            st.text("abc ;=/", max_size=8).map(str.strip),
        ),
        max_size=3,
    ).map(tuple),
    compressible=st.booleans(),
    stored_coding=st.sampled_from(["identity", "gzip"]),
    vary_coding=st.booleans(),
    accept_encoding=st.sampled_from(ACCEPT_ENCODINGS),
)


def test_the_fast_path_answers_as_the_full_policy() -> None:
    loop = asyncio.new_event_loop()
    clock = FakeClock()
    store = MemoryStore(64 * 1024**2, clock=clock)
    # Nothing listens on the discard port: anything the cache would fetch fails the same way.
    runtime = Runtime(
        Settings(upstream="http://127.0.0.1:9", upstream_connect_timeout=1.0),
        store=store,
        registry=CollectorRegistry(),
        clock=clock,
    )
    server = FrontServer(runtime, access=None)
    loop.run_until_complete(runtime.start())
    loop.run_until_complete(server.start(HOST, 0))
    counter = iter(range(10**9))
    try:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def check(case: Case) -> None:
            loop.run_until_complete(compare(server, store, clock, case, next(counter)))

        check()
        assert server.front is not None and server.front.fast is not None
        assert server.front.fast.memo, "the fast path never answered"
    finally:
        loop.run_until_complete(server.close(drain_seconds=0.1))
        loop.run_until_complete(runtime.close())
        loop.close()


async def compare(
    server: FrontServer, store: MemoryStore, clock: FakeClock, case: Case, n: int
) -> None:
    target = f"/v1/audio/transcribe/trans_{n}"
    headers: list[tuple[str, str]] = [("Host", "proxy.test")]
    if case.token is not None:
        headers.append(("Authorization", f"Bearer {case.token}"))
    if case.inm is not None:
        headers.append(("If-None-Match", case.inm))
    if case.accept_encoding is not None:
        headers.append(("Accept-Encoding", case.accept_encoding))
    if case.stored_for is not None or case.token is None:
        owner: list[tuple[str, str]] = [("Host", "proxy.test")]
        if case.stored_for is not None:
            owner.append(("Authorization", f"Bearer {case.stored_for}"))
        scope = server.runtime.cache.facts(request_of("GET", target, owner)).scope
        store.set_nowait(target, (stored(case, clock.now, scope),), 3600)
    direct = Recorded()
    await server.runtime.cache.handle(request_of(case.method, target, headers), direct)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    raw = f"{case.method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    writer.write(raw.encode() + b"\r\n")
    async with asyncio.timeout(10):
        answer = await read_response(reader, head=case.method == "HEAD")
    writer.close()
    assert answer.status == direct.status
    expected = {k.lower(): v for k, v in direct.headers if k.lower() not in CONNECTION_FIELDS}
    got = {k: v for k, v in answer.headers.items() if k not in CONNECTION_FIELDS}
    if "date" not in expected:
        got.pop("date")  # the front dates what the cache answers without a stored Date
    assert got == expected
    if case.method == "GET":
        assert answer.body == direct.body
    if direct.status not in (204, 304):
        assert answer.headers["content-length"] == str(len(direct.body))


def request_of(method: str, target: str, headers: list[tuple[str, str]]) -> ProxyRequest:
    fields = CIMultiDict(headers)
    return ProxyRequest(method, target, fields, None, "127.0.0.1", "http", "1.1", "proxy.test")


def stored(case: Case, now: float, scope: str) -> StoredResponse:
    received = now - case.resident
    headers: list[tuple[str, str]] = [("Date", format_http_date(received))]
    if case.max_age is not None:
        headers.append(("Cache-Control", f"max-age={case.max_age}"))
    if case.etag is not None:
        headers.append(("ETag", case.etag))
    if case.age_field is not None:
        headers.append(("Age", str(case.age_field)))
    headers.extend(case.extra)
    body: Any = f"body of {case.status}".encode()
    derived: tuple[Representation, ...] = ()
    if case.compressible:
        # A JSON body large enough to be compressed: the cache derives its other codings once.
        body = b'{"transcript": "' + b"word " * 400 + b'"}'
        headers.append(("Content-Type", "application/json"))
        if case.stored_coding == "gzip":
            body = encode("gzip", body)
            headers.append(("Content-Encoding", "gzip"))
        if case.vary_coding:
            headers.append(("Vary", "Accept-Encoding"))
        derived = representations(
            body=body,
            etag=case.etag,
            content_type="application/json",
            content_encoding=[case.stored_coding],
            no_transform=False,
            policy=CodingPolicy(),
        )[1:]
    return StoredResponse(
        status=case.status,
        reason="OK",
        headers=tuple(headers),
        body=body,
        request_time=received,
        response_time=received,
        scope=scope,
        targeted=True,
        derived=derived,
    )
