"""The aiohttp application: routes, endpoints, lifecycle and the access log around the handler."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.cache import CachingProxy, route_of
from proxy.ops.admin import Purger, add_admin_routes, add_reserved_routes
from proxy.ops.config import ConfigError, Settings
from proxy.ops.metrics import Metrics
from proxy.server import RESULT_KEY, cache_handler, handler_args, request_guard
from proxy.stores.coordination import Coordinator
from proxy.stores.memory import MemoryStore, Store, StoreError
from proxy.upstream import Upstream, UpstreamConfig

if TYPE_CHECKING:
    from proxy.stores.redis import RedisShare


log = logging.getLogger("proxy")


PROXY_KEY = web.AppKey("proxy", CachingProxy)
METRICS_KEY = web.AppKey("metrics", Metrics)
SETTINGS_KEY = web.AppKey("settings", Settings)
PURGER_KEY = web.AppKey("purger", Purger)
#: With ``--workers N``, what ``/metrics`` serves instead of this process's registry alone.
EXPOSITION_KEY: web.AppKey[Callable[[], Awaitable[bytes]]] = web.AppKey("exposition")


async def metrics_endpoint(request: web.Request) -> web.Response:
    exposition = request.app.get(EXPOSITION_KEY)
    if exposition is not None:
        body = await exposition()
    else:
        body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
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
    body = {
        "status": status,
        "upstream_session": "open" if upstream_ready else "closed",
        "store": proxy.store.backend if store_ready else f"{proxy.store.backend} degraded",
    }
    return web.json_response(body, status=200 if ready else 503)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    coordinator: Coordinator | None = None,
) -> web.Application:
    """Build the proxy application; tests inject the store, registry, clock and coordinator.

    With ``settings.redis_url`` (and no injected store) the store is the Redis-backed tier and
    fetches are coordinated across the replicas sharing it.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    share = None
    if store is None and settings.redis_url:
        share = redis_share(settings, metrics, clock)
        store, coordinator = share.store, share.coordinator
    if store is None:
        store = MemoryStore(
            settings.cache_max_bytes, clock=clock, on_evict=metrics.cache_evictions.inc
        )
    metrics.track_store(lambda: store.entries, lambda: store.bytes)
    metrics.track_backend(store.backend, settings.cache_max_bytes)
    upstream = Upstream(
        UpstreamConfig(
            base_url=settings.upstream,
            connect_timeout=settings.upstream_connect_timeout,
            timeout=settings.upstream_timeout,
            max_connections=settings.upstream_max_connections,
            pool_timeout=settings.upstream_pool_timeout,
        )
    )
    proxy = CachingProxy(settings, store, upstream, metrics, clock, coordinator)
    metrics.track_tables(
        lambda: proxy.fetcher.held_back_bytes, lambda: proxy.entries.invalidation_bytes
    )
    if share is not None:
        share.on_change = proxy.waits.changed_digest
    app = web.Application(
        handler_args=handler_args(settings), middlewares=[request_guard(settings)]
    )
    app[PROXY_KEY] = proxy
    app[METRICS_KEY] = metrics
    app[SETTINGS_KEY] = settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await upstream.start()
        if share is not None:
            await share.start()
        yield
        await proxy.waits.close()
        await proxy.flights.cancel_all()
        await upstream.close()
        await store.close()
        if share is not None:
            await share.close()
        log.info("closed the upstream session and the %s store", store.backend)

    async def drain(app: web.Application) -> None:
        """Runs once the listener is closed; aiohttp then waits for in-flight requests."""
        proxy.draining = True
        proxy.waits.release_all()  # held long polls are answered (304) before the drain
        log.info("draining: finishing in-flight requests for up to %gs", settings.drain_seconds)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    purger = None
    if settings.admin_token:
        purger = Purger(proxy.purge, settings.admin_token)
        app[PURGER_KEY] = purger
    if settings.admin_port is None:
        add_admin_routes(app.router, purger, metrics_endpoint)
    else:
        add_reserved_routes(app.router)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", cache_handler(proxy, settings))
    return app


def redis_share(settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> RedisShare:
    """The Redis tier, imported only when asked for, since redis-py is an optional extra."""
    try:
        from proxy.stores.redis import RedisShare
    except ImportError:
        raise ConfigError(
            "--redis-url: redis-py is not installed: pip install 'aitronos-cache-proxy[redis]'"
        ) from None
    return RedisShare(settings, metrics, clock)


def create_admin_app(app: web.Application) -> web.Application:
    """The admin listener's application: ``/metrics`` and purging for the proxy ``app``.

    It shares the proxy's objects and owns none of them: ``app``'s lifecycle opens and closes
    them, so the admin runner is cleaned up first.
    """
    settings = app[SETTINGS_KEY]
    admin = web.Application(
        handler_args=handler_args(settings), middlewares=[request_guard(settings)]
    )
    admin[PROXY_KEY] = app[PROXY_KEY]
    admin[METRICS_KEY] = app[METRICS_KEY]
    admin[SETTINGS_KEY] = settings
    if EXPOSITION_KEY in app:
        admin[EXPOSITION_KEY] = app[EXPOSITION_KEY]
    add_admin_routes(admin.router, app.get(PURGER_KEY), metrics_endpoint)
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    return admin


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON line per request: method, path without the query, status, cache result, time.

    The query string is left out because callers put tokens in it; headers are never logged.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        record = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "cache": request.get(RESULT_KEY, "-") if isinstance(request, web.Request) else "-",
            "duration_ms": round(time * 1000, 3),
            "bytes": response.body_length,
        }
        self.logger.info(json.dumps(record, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


__all__ = ["CachingProxy", "JsonAccessLogger", "create_admin_app", "create_app", "route_of"]
