"""Forwarding and streaming: requests to the origin, and answers relayed chunk by chunk.

Everything that is not answered from the store passes here: the upstream request's fields
(RFC 9110 §7.6: end-to-end only, with ``Via`` and ``X-Forwarded-*``), the upstream metrics, and
relaying a response body to one client while holding at most one chunk of it.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from proxy import CACHE_NAME
from proxy.cache.exchange import ProxyRequest, Responder
from proxy.core.headers import (
    HOP_BY_HOP,
    connection_tokens,
    proxy_owned_or_invalid_name,
    valid_field,
)
from proxy.core.models import NOT_SERVED, Headers
from proxy.ops.config import Settings
from proxy.ops.metrics import Metrics, status_class
from proxy.upstream import Upstream, UpstreamError, UpstreamResponse, translate_error

log = logging.getLogger("proxy")

#: Client validators and byte ranges are evaluated here against the stored response, never sent
#: upstream on a cacheable fetch, so that the fetch is the same for every collapsed caller and
#: a range request fills the cache with the whole body (RFC 9110 §14, ``proxy.core.ranges``).
CLIENT_VALIDATORS = frozenset({"if-none-match", "if-modified-since", "range", "if-range"})


def end_to_end(items: Any) -> Headers:
    """RFC 9110 §7.6.1: drop hop-by-hop fields and those the ``Connection`` field names.

    Fields with control characters are dropped too (§5.5): no front may send them, so storing
    one would make an entry that can never be served.
    """
    pairs = list(items)
    connection = connection_tokens(v for k, v in pairs if k.lower() == "connection")
    return tuple(
        (k, v)
        for k, v in pairs
        if k.lower() not in HOP_BY_HOP and k.lower() not in connection and valid_field(k, v)
    )


@dataclass(slots=True)
class Streamed:
    """An upstream answer too large or not storable: streamed to the one caller that asked."""

    response: UpstreamResponse
    headers: Headers
    prefix: bytes = b""


class Forwarder:
    """Sends requests upstream (with metrics) and relays what comes back."""

    def __init__(self, settings: Settings, upstream: Upstream, metrics: Metrics) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.via = f"1.1 {CACHE_NAME}"

    @property
    def received_via(self) -> Headers:
        """The ``Via`` this cache adds to what it received (RFC 9110 §7.6.3)."""
        return (("Via", self.via),)

    def received(self, response: UpstreamResponse) -> Headers:
        """The origin's end-to-end fields with this cache's ``Via`` (RFC 9110 §7.6.3)."""
        return (*end_to_end(response.headers.items()), ("Via", self.via))

    def upstream_headers(
        self, request: ProxyRequest, *, strip_validators: bool
    ) -> list[tuple[str, str]]:
        """The request's end-to-end fields for the origin, with Via and X-Forwarded-* (§7.6.3).

        ``Expect`` is not forwarded: the front answers ``100 Continue`` itself when the body is
        first read (RFC 9110 §10.1.1), and an origin that never sends one (an HTTP/1.0 origin)
        would otherwise hold the request and its pooled connection until the upstream bound.
        """
        drop = {"host", "via", "expect"} | (CLIENT_VALIDATORS if strip_validators else set())
        forwarded = [
            (k, v)
            for k, v in end_to_end(request.headers.items())
            if k.lower() not in drop and not proxy_owned_or_invalid_name(k)
        ]
        # The client's own X-Forwarded-For is dropped: this proxy is the first trusted hop.
        peer = request.peer or "unknown"
        prior_via = request.headers.get("Via")
        version = request.version
        forwarded += [
            ("X-Forwarded-For", peer),
            ("X-Forwarded-Proto", request.scheme),
            (
                "Via",
                f"{prior_via}, {version} {CACHE_NAME}" if prior_via else f"{version} {CACHE_NAME}",
            ),
        ]
        forwarded_host = self.settings.public_host or (
            request.host if self.settings.host_keyed else ""
        )
        if forwarded_host:
            forwarded.append(("X-Forwarded-Host", forwarded_host))
        return forwarded

    async def send(
        self,
        route: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Any,
    ) -> UpstreamResponse:
        """One upstream request, counted by route and status class (never by path or ID)."""
        started = time.perf_counter()
        try:
            response = await self.upstream.fetch(method, target, headers, body)
        except UpstreamError as error:
            self.metrics.upstream_requests.labels(route, "error").inc()
            self.metrics.upstream_errors.labels(route, error.kind).inc()
            raise
        self.metrics.upstream_duration.labels(route).observe(time.perf_counter() - started)
        self.metrics.upstream_requests.labels(route, status_class(response.status)).inc()
        if response.status >= 500 or response.status == 429:
            kind = "429" if response.status == 429 else "5xx"
            self.metrics.upstream_errors.labels(route, kind).inc()
        return response

    async def send_with_body(self, request: ProxyRequest, route: str) -> UpstreamResponse:
        """Forward the request as it is, its body streamed within the client limits."""
        headers = self.upstream_headers(request, strip_validators=False)
        body = request.body
        try:
            return await self.send(route, request.method, request.target, headers, body)
        except UpstreamError:
            if body is not None and body.rejected is not None:
                raise body.rejected from None
            raise

    async def forward(
        self, request: ProxyRequest, responder: Responder, route: str, status_header: str
    ) -> None:
        """Pass a request through uncached, streaming both bodies."""
        response = await self.send_with_body(request, route)
        streamed = Streamed(response, self.received(response))
        await self.stream(request, responder, streamed, status_header)

    def relay(
        self,
        responder: Responder,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes,
        status_header: str,
    ) -> None:
        """Send an answer read in full that is not served from the store."""
        served = [(k, v) for k, v in headers if k.lower() not in NOT_SERVED]
        served.append(("Cache-Status", status_header))
        self.metrics.response_bytes.inc(len(body))
        responder.send(status, reason, served, body)

    async def stream(
        self,
        request: ProxyRequest,
        responder: Responder,
        outcome: Streamed,
        status_header: str,
    ) -> None:
        """Relay an upstream response chunk by chunk, holding at most one chunk in memory."""
        upstream = outcome.response
        headers = [(k, v) for k, v in outcome.headers if k.lower() != "cache-status"]
        headers.append(("Cache-Status", status_header))
        try:
            await responder.start(upstream.status, upstream.reason, headers)
            if request.method == "HEAD" or upstream.status in (204, 304):
                upstream.close()
                await responder.finish()
                return
            if outcome.prefix:
                await responder.write(outcome.prefix)
                self.metrics.response_bytes.inc(len(outcome.prefix))
            async with aclosing(upstream.chunks()) as chunks:
                async for chunk in chunks:
                    self.metrics.upstream_bytes.inc(len(chunk))
                    await responder.write(chunk)
                    self.metrics.response_bytes.inc(len(chunk))
            await responder.finish()
        except (TimeoutError, UpstreamError) as error:
            # The head is already sent: the only honest signal left is to cut the connection.
            log.warning("upstream body failed mid-stream: %s", translate_error(error))
            upstream.close()
            responder.abort()
        except ConnectionError:
            upstream.close()
        finally:
            upstream.release()
