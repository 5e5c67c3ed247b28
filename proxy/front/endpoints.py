"""The proxy's own endpoints on our front: ``/healthz``, ``/readyz``, ``/metrics`` and purging.

They mirror the aiohttp routes of ``proxy.app`` and ``proxy.ops.admin`` (the admin listener
keeps serving those): with ``--admin-port`` the public port answers 404 for the admin paths.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.cache.exchange import Responder, envelope
from proxy.cache.proxy import CachingProxy
from proxy.ops.admin import PURGE_PREFIX, Purger
from proxy.ops.metrics import Metrics
from proxy.stores.memory import StoreError

Endpoint = Callable[[str, str, str, Responder], Awaitable[None]]
JSON = "application/json; charset=utf-8"


def send_json(responder: Responder, status: int, payload: Any, *extra: tuple[str, str]) -> None:
    responder.send(status, "", [("Content-Type", JSON), *extra], json.dumps(payload).encode())


def send_envelope(responder: Responder, status: int, code: str, message: str) -> None:
    responder.send(status, "", [("Content-Type", JSON)], envelope(code, message))


class Endpoints:
    """Routes a request to a local endpoint, or says it is for the cache (``None``)."""

    def __init__(
        self,
        proxy: CachingProxy,
        metrics: Metrics,
        purger: Purger | None,
        *,
        admin_elsewhere: bool,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.exposition = exposition
        self.proxy = proxy
        self.metrics = metrics
        self.purger = purger
        self.admin_elsewhere = admin_elsewhere

    def route(self, method: str, path: str) -> Endpoint | None:
        if method in ("GET", "HEAD") and path in ("/healthz", "/readyz"):
            return self.healthz if path == "/healthz" else self.readyz
        admin_path = path == "/metrics" or path.startswith(PURGE_PREFIX + "/")
        if self.admin_elsewhere:
            if admin_path:
                return self.not_here
            return self.purge_disabled if method == "PURGE" else None
        if path == "/metrics" and method in ("GET", "HEAD"):
            return self.metrics_text
        if method == "PURGE" or (method == "DELETE" and path.startswith(PURGE_PREFIX + "/")):
            return self.purge if self.purger is not None else self.purge_disabled
        if path.startswith(PURGE_PREFIX + "/"):
            return self.purge_disabled
        return None

    async def healthz(self, method: str, target: str, auth: str, responder: Responder) -> None:
        send_json(responder, 200, {"status": "ok"})

    async def readyz(self, method: str, target: str, auth: str, responder: Responder) -> None:
        proxy = self.proxy
        upstream_ready = proxy.upstream.ready
        try:
            store_ready = await proxy.store.ready()
        except StoreError:
            store_ready = False
        ready = upstream_ready and not proxy.draining
        if not ready:
            status = "draining" if proxy.draining else "unavailable"
        else:
            status = "ready" if store_ready else "degraded"
        backend = proxy.store.backend
        body = {
            "status": status,
            "upstream_session": "open" if upstream_ready else "closed",
            "store": backend if store_ready else f"{backend} degraded",
        }
        send_json(responder, 200 if ready else 503, body)

    async def metrics_text(self, method: str, target: str, auth: str, responder: Responder) -> None:
        if self.exposition is not None:
            text = await self.exposition()  # --workers: every worker's samples
        else:
            text = generate_latest(self.metrics.registry)
        responder.send(200, "", [("Content-Type", CONTENT_TYPE_LATEST)], text)

    async def not_here(self, method: str, target: str, auth: str, responder: Responder) -> None:
        send_envelope(responder, 404, "NOT_FOUND", "Not served on this listener.")

    async def purge_disabled(
        self, method: str, target: str, auth: str, responder: Responder
    ) -> None:
        if method == "PURGE":
            send_envelope(responder, 405, "METHOD_NOT_ALLOWED", "Purging is not enabled here.")
        else:
            send_envelope(responder, 404, "NOT_FOUND", "Purging is not enabled here.")

    async def purge(self, method: str, target: str, auth: str, responder: Responder) -> None:
        assert self.purger is not None
        status, payload, extra = await self.purger.answer(method, target, auth)
        send_json(responder, status, payload, *extra)
