"""The credential scope covers every credential line that is forwarded (issue 17, finding 1).

The origin here reads every line of every credential field and joins them, as many gateways do,
and it records every byte it receives. A caller with no credentials must never be served what
the origin answered for a token, whichever line the token was on, on the fast path, the full
path, a long poll and the Redis tier alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from proxy.ops.config import Settings
from proxy.tools.replicas import LocalRedis
from tests.support.rawkit import RawRequest, RawUpstream, exchange, response_bytes, serve_proxy

CREDENTIAL_FIELDS = ("authorization", "api-key", "x-api-key", "cookie", "proxy-authorization")
TOKEN = "tok-0123456789-secret"
#: The anonymous caller on the full path: two Accept-Encoding lines take it off the fast path.
FULL_PATH = b"Accept-Encoding: identity\r\nAccept-Encoding: identity\r\n"


def credential_lines_received(request: RawRequest) -> list[str]:
    """Every credential line the origin received, in order."""
    values = []
    for line in request.head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() in CREDENTIAL_FIELDS:
            values.append(value.strip())
    return values


def credentials_received(request: RawRequest) -> str:
    """The credential lines joined the way a lenient gateway joins them."""
    return ",".join(credential_lines_received(request))


async def joining_origin(
    request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A shared-cacheable answer naming whatever credential the origin made of the lines."""
    seen = credentials_received(request).strip(", ")
    body = f"for:{seen}" if seen else "public"
    etag = '"v-' + (seen or "public") + '"'
    headers = {"Cache-Control": "public, max-age=60", "ETag": etag}
    writer.write(response_bytes(200, body.encode(), headers))
    await writer.drain()


def get(path: str, fields: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: proxy.test\r\n" + fields + b"\r\n"


def leaked(body: bytes) -> bool:
    return TOKEN.encode() in body


CASES = [
    (name, first)
    for name in ("Authorization", "api-key", "x-api-key", "Cookie")
    for first in ("", "   ")
]


@pytest.mark.parametrize("path_kind", ["fast", "full"])
@pytest.mark.parametrize(("name", "first"), CASES)
async def test_a_token_on_a_later_line_never_reaches_an_anonymous_caller(
    name: str, first: str, path_kind: str
) -> None:
    async with (
        RawUpstream(joining_origin) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
    ):
        lines = f"{name}: {first}\r\n{name}: {TOKEN}\r\n".encode()
        token = await exchange(proxy.port, get("/t", lines))
        forwarded = [r for r in origin.requests if TOKEN.encode() in r.head]
        if name.lower() == "authorization":
            # A singleton field on two lines is refused before anything is forwarded.
            assert token.status == 400
            assert origin.requests == []
        else:
            assert token.status == 200
            assert len(forwarded) == 1
        extra = FULL_PATH if path_kind == "full" else b""
        # Twice, so the second can be a fast-path hit of whatever the first stored.
        for _ in range(2):
            anonymous = await exchange(proxy.port, get("/t", extra))
            assert anonymous.status == 200
            assert not leaked(anonymous.body), anonymous.body
            assert anonymous.body == b"public"


@pytest.mark.parametrize(
    "fields",
    [
        b"Authorization: Bearer a\r\nauthorization: Bearer b\r\n",
        b"AUTHORIZATION: \r\nAuthorization: " + TOKEN.encode() + b"\r\n",
        b"Proxy-Authorization: \r\nProxy-Authorization: " + TOKEN.encode() + b"\r\n",
        b"Authorization: x\r\nPragma: x\r\nAuthorization: " + TOKEN.encode() + b"\r\n",
    ],
    ids=["two-tokens", "casing", "proxy-authorization", "full-path"],
)
async def test_a_singleton_credential_on_two_lines_is_refused_unforwarded(fields: bytes) -> None:
    async with (
        RawUpstream(joining_origin) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
    ):
        for method in (b"GET", b"POST"):
            request = get("/s", fields).replace(b"GET", method, 1)
            refused = await exchange(proxy.port, request)
            assert refused.status == 400
        assert origin.requests == []


@pytest.mark.parametrize(
    "fields",
    [
        # an empty line is not no line: the origin may tell them apart
        b"api-key: \r\n",
        b"Cookie:\r\n",
        # obs-fold: refused by the parser, never joined into the scope's view
        b"api-key: \r\n " + TOKEN.encode() + b"\r\n",
        # mixed credential fields, the token in a field after an empty one
        b"api-key: \r\nx-api-key: " + TOKEN.encode() + b"\r\n",
        # trailing whitespace kept as forwarded
        b"api-key: " + TOKEN.encode() + b" \t\r\n",
        # the token on the first of two lines, an empty second line
        b"Cookie: " + TOKEN.encode() + b"\r\nCookie: \r\n",
        # one field in two casings
        b"API-KEY: \r\napi-key: " + TOKEN.encode() + b"\r\n",
        # whitespace before the colon (RFC 9112 §5.1: must be refused)
        b"api-key : " + TOKEN.encode() + b"\r\n",
    ],
    ids=[
        "empty-api-key",
        "empty-cookie",
        "obs-fold",
        "mixed",
        "trailing-ws",
        "empty-second",
        "casing",
        "space-before-colon",
    ],
)
async def test_odd_credential_lines_never_land_in_the_anonymous_scope(fields: bytes) -> None:
    async with (
        RawUpstream(joining_origin) as origin,
        serve_proxy(Settings(upstream=origin.url)) as proxy,
    ):
        odd = await exchange(proxy.port, get("/o", fields))
        assert odd.status in (200, 400)
        for extra in (b"", FULL_PATH, b""):
            anonymous = await exchange(proxy.port, get("/o", extra))
            assert anonymous.body == b"public"
        # Every anonymous answer came from an anonymous request to the origin.
        anonymous_fetches = [r for r in origin.requests if not credential_lines_received(r)]
        odd_fetches = [r for r in origin.requests if credential_lines_received(r)]
        assert len(anonymous_fetches) == 1
        assert len(odd_fetches) == (1 if odd.status == 200 else 0)


async def test_line_order_and_count_are_part_of_the_scope() -> None:
    names = ("cookie",)

    from multidict import CIMultiDict

    from proxy.core.credentials import credential_lines, credential_scope

    def scope(*lines: str) -> str:
        headers = CIMultiDict([("Cookie", line) for line in lines])
        return credential_scope(credential_lines(headers, names), shared=False)

    seen = {
        scope(),
        scope(""),
        scope("", ""),
        scope("a"),
        scope("a", ""),
        scope("", "a"),
        scope("a", "b"),
        scope("b", "a"),
        scope("a", "a"),
        scope("1:a"),
    }
    assert len(seen) == 10
    assert scope() == "anonymous"
    # One non-empty line per field keeps the scope earlier releases computed (Redis entries).
    assert scope("a") == credential_scope(["a"], shared=False)


async def test_a_long_poll_never_wakes_an_anonymous_waiter_with_a_token_answer() -> None:
    """The token holder's held request must not open the anonymous flight's watch, whose
    refresh would then forward its token and wake the anonymous waiter with the answer."""
    # The entry goes stale within a second, so the watch refreshes within the waits.
    async with RawUpstream(short_lived) as origin:
        settings = Settings(upstream=origin.url)
        async with serve_proxy(settings) as proxy:
            served = await exchange(proxy.port, get("/lp"))
            assert served.body == b"public"
            etag = served.headers["etag"].encode()
            proxy_app = proxy.server
            assert proxy_app is not None and proxy_app.front is not None
            waits = proxy_app.front.proxy.waits
            hold = b"If-None-Match: " + etag + b"\r\nPrefer: wait=3\r\n"
            token_fields = b"api-key: \r\napi-key: " + TOKEN.encode() + b"\r\n"
            token = asyncio.create_task(exchange(proxy.port, get("/lp", token_fields + hold)))
            async with asyncio.timeout(5):
                while waits.waiting == 0 and not token.done():
                    await asyncio.sleep(0.01)
            anonymous = await exchange(proxy.port, get("/lp", hold))
            assert not leaked(anonymous.body), anonymous.body
            assert anonymous.status in (200, 304)
            await token


async def short_lived(
    request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """As ``joining_origin``, fresh for one second, and answering a matching validator 304."""
    seen = credentials_received(request).strip(", ")
    body = f"for:{seen}" if seen else "public"
    etag = '"v-' + (seen or "public") + '"'
    headers = {"Cache-Control": "public, max-age=1", "ETag": etag}
    if request.header("if-none-match") == etag:
        writer.write(
            b"HTTP/1.1 304 Not Modified\r\nETag: " + etag.encode() + b"\r\n"
            b"Cache-Control: public, max-age=1\r\nContent-Length: 0\r\n\r\n"
        )
    else:
        writer.write(response_bytes(200, body.encode(), headers))
    await writer.drain()


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    async with LocalRedis() as server:
        yield server.url


async def test_the_redis_tier_keeps_the_token_answer_out_of_the_anonymous_scope() -> None:
    async with RawUpstream(joining_origin) as origin, redis_server() as url:
        settings = Settings(upstream=origin.url, redis_url=url, redis_prefix="scope")
        async with serve_proxy(settings) as first, serve_proxy(settings) as second:
            fields = b"x-api-key: \r\nx-api-key: " + TOKEN.encode() + b"\r\n"
            token = await exchange(first.port, get("/r", fields))
            assert token.status == 200
            client = Redis.from_url(url)
            try:
                async with asyncio.timeout(5):
                    while not [key async for key in client.scan_iter(match="scope:*")]:
                        await asyncio.sleep(0.01)
            finally:
                await client.aclose()
            # The second replica has nothing in memory: what it serves comes from Redis.
            for extra in (b"", FULL_PATH):
                anonymous = await exchange(second.port, get("/r", extra))
                assert anonymous.body == b"public", anonymous.body
