"""The one way a test serves its own origin: an aiohttp handler (or application) on a free port.

``catch_all`` routes every method and path to one handler, so the handler sees each request as
the proxy sent it; ``serve_app`` runs an application on 127.0.0.1 and yields its base URL. The
root ``tests/conftest.py`` wraps both in the ``serve_origin`` fixture (closed at the test's end)
and lets ``make_harness(handler=...)`` put a proxy in front of any handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

HOST = "127.0.0.1"

#: An origin's whole behaviour: one aiohttp handler for every request.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Large enough never to be the limit under test (the proxy's own limits are).
ORIGIN_MAX_BODY = 2**24


def catch_all(handler: Handler, *, client_max_size: int = ORIGIN_MAX_BODY) -> web.Application:
    """An application sending every method and path to ``handler``."""
    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """An aiohttp application on a free port; yields its base URL (no trailing slash)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        yield f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def serving(origin: Handler | web.Application) -> contextlib.AbstractAsyncContextManager[str]:
    """``async with serving(handler_or_app) as url``: ``serve_app`` of a handler or an app."""
    return serve_app(origin if isinstance(origin, web.Application) else catch_all(origin))
