"""The proxy's own endpoints: ``/healthz``, ``/readyz``, ``/metrics`` and purging.

Every listener is our front; what it serves of these depends on its role. Without
``--admin-port`` the public listener serves them all. With it, ``/metrics`` and purging move to
the admin listener and the public one answers 404 for them (never forwarding them to the
origin); the admin listener forwards nothing (405: there every path takes only ``PURGE``),
and both serve the health checks.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.cache.exchange import Responder, envelope
from proxy.ops.admin import PURGE_PREFIX

if TYPE_CHECKING:
    from proxy.runtime import Runtime

Endpoint = Callable[[str, str, str, Responder], Awaitable[None]]
JSON = "application/json; charset=utf-8"
#: What a listener is for: ``public`` (the cache) or ``admin`` (``--admin-port``).
PUBLIC, ADMIN = "public", "admin"


def send_json(responder: Responder, status: int, payload: Any, *extra: tuple[str, str]) -> None:
    responder.send(status, "", [("Content-Type", JSON), *extra], json.dumps(payload).encode())


def send_envelope(responder: Responder, status: int, code: str, message: str) -> None:
    responder.send(status, "", [("Content-Type", JSON)], envelope(code, message))


class Endpoints:
    """Routes a request to a local endpoint, or says it is for the cache (``None``)."""

    def __init__(self, runtime: Runtime, role: str = PUBLIC) -> None:
        self.runtime = runtime
        self.purger = runtime.purger
        self.admin = role == ADMIN
        self.admin_elsewhere = role == PUBLIC and runtime.settings.admin_port is not None

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
        # On the admin listener every path takes PURGE and nothing is forwarded.
        return self.only_purge if self.admin else None

    async def healthz(self, method: str, target: str, auth: str, responder: Responder) -> None:
        send_json(responder, 200, {"status": "ok"})

    async def readyz(self, method: str, target: str, auth: str, responder: Responder) -> None:
        readiness = await self.runtime.readiness()
        send_json(responder, readiness.http_status, readiness.body())

    async def metrics_text(self, method: str, target: str, auth: str, responder: Responder) -> None:
        text = await self.runtime.metrics_text()
        responder.send(200, "", [("Content-Type", CONTENT_TYPE_LATEST)], text)

    async def not_here(self, method: str, target: str, auth: str, responder: Responder) -> None:
        send_envelope(responder, 404, "NOT_FOUND", "Not served on this listener.")

    async def only_purge(self, method: str, target: str, auth: str, responder: Responder) -> None:
        responder.send(
            405,
            "",
            [("Content-Type", JSON), ("Allow", "PURGE")],
            envelope("METHOD_NOT_ALLOWED", "The admin listener only purges here."),
        )

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
