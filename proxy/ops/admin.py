"""Operator endpoints: authenticated purge, and the routes only the admin listener may serve.

Purging goes through the proxy's invalidation and so ``Store.delete``: every tier behind the store
(memory, Redis and the other replicas' fronts) forgets the key, and a fetch in flight cannot store
its answer afterwards. It is enabled only when an admin token is configured, and the token is
compared in constant time. With ``--admin-port`` these routes (and ``/metrics``) move to their own
listener and the public port answers 404 for them instead of forwarding them to the origin
(``proxy.front.endpoints`` routes them).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("proxy.admin")

#: ``DELETE /_cache/<request-target>`` purges ``<request-target>``, for clients that cannot send
#: a ``PURGE`` method.
PURGE_PREFIX = "/_cache"


class Purger:
    """Removes a stored URI (all its variants, for every credential scope) on an admin's request."""

    def __init__(
        self, invalidate: Callable[[str], Awaitable[tuple[bool, bool]]], token: str
    ) -> None:
        """``invalidate(key)`` forgets a key and says whether it was stored and whether every
        tier of the store confirmed."""
        if not token:
            raise ValueError("a purger needs an admin token")
        self._invalidate = invalidate
        self._expected = f"Bearer {token}".encode()

    def authorized(self, authorization: str) -> bool:
        given = authorization.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._expected)

    async def answer(
        self, method: str, target: str, authorization: str
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """(status, JSON body, extra fields) for a purge request, whatever server carries it."""
        if not self.authorized(authorization):
            challenge = ("WWW-Authenticate", 'Bearer realm="aitronos-cache-proxy admin"')
            return 401, _envelope("UNAUTHORIZED", "A valid admin token is required."), [challenge]
        key = target
        if method != "PURGE":
            key = key.removeprefix(PURGE_PREFIX)
        if not key.startswith("/"):
            return 400, _envelope("BAD_REQUEST", "Name the request-target to purge."), []
        existed, confirmed = await self._invalidate(key)
        if not confirmed:
            log.warning("purge of %s not confirmed by every store tier", key.partition("?")[0])
            message = "Forgotten here, but the store could not confirm it everywhere; retry."
            return 503, _envelope("STORE_UNAVAILABLE", message), []
        log.info("purged %s (%s)", key.partition("?")[0], "stored" if existed else "absent")
        return 200, {"success": True, "data": {"key": key, "existed": existed}}, []


def _envelope(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


__all__ = ["PURGE_PREFIX", "Purger"]
