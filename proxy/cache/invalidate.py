"""Invalidation (RFC 9111 §4.4): unsafe methods pass through and, on success, forget what
they touched; operators purge a key by hand."""

from __future__ import annotations

from proxy.cache.entries import Entries
from proxy.cache.exchange import ProxyRequest, Responder
from proxy.cache.forward import Forwarder, Streamed
from proxy.core.policy import cache_status, invalidates, invalidation_targets


class Invalidator:
    """Forwards unsafe methods and invalidates the target URI, ``Location`` and
    ``Content-Location`` of a non-error answer."""

    def __init__(self, entries: Entries, forwarder: Forwarder) -> None:
        self.entries = entries
        self.forwarder = forwarder

    async def unsafe(self, request: ProxyRequest, responder: Responder, route: str) -> str:
        """§4.4: forward an unsafe method and, on success, invalidate what it touched."""
        response = await self.forwarder.send_with_body(request, route)
        received = self.forwarder.received(response)
        if invalidates(request.method, response.status):
            origins = self.forwarder.upstream.origin_hosts
            await self.entries.invalidate(invalidation_targets(request.target, received, origins))
        streamed = Streamed(response, received)
        await self.forwarder.stream(request, responder, streamed, cache_status(fwd="method"))
        return "bypass"

    async def purge(self, key: str) -> tuple[bool, bool]:
        """Forget ``key`` on an operator's request: (whether it was stored, whether every tier
        of the store confirmed). Like any invalidation, a fetch already in flight cannot
        store its answer afterwards."""
        return await self.entries.purge(key)
