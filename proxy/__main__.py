"""The command line: the only place that reads ``sys.argv`` and ``os.environ``.

``python -m proxy [options]`` serves; ``python -m proxy demo`` and ``python -m proxy simulate``
run the offline demo and the simulated transcription API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.ops.config import ConfigError, Settings, parse_settings

if TYPE_CHECKING:
    from proxy.server import ProxyRunner

PROG = "aitronos-cache-proxy"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop_factory(choice: str) -> LoopFactory:
    """What makes the loop to serve on: on uvloop a cache hit costs 5-10% less CPU (bench/)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "--event-loop: uvloop is not installed "
                    "(pip install 'aitronos-cache-proxy[speedups]')"
                ) from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def serve(settings: Settings, loop_factory: LoopFactory = asyncio.new_event_loop) -> None:
    configure_logging(settings.log_level)
    log = logging.getLogger("proxy")
    if settings.shared_scope:
        log.warning(
            "cache scope is 'shared': every caller can receive responses stored for another "
            "caller's credentials; use this only for single-tenant deployments"
        )
    if settings.admin_token and settings.admin_port is None:
        log.warning("purging is enabled on the public port; consider --admin-port")
    log.info("forwarding to %s", settings.upstream)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(settings))


async def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM: the public listener and, with ``--admin-port``, the admin one.

    The public listener is our own HTTP/1.1 front (``proxy.front``) unless ``--front aiohttp``;
    the admin listener stays on aiohttp's server (``ProxyRunner``, whose malformed-request
    answers are the proxy's envelope). On a signal the public listener stops accepting, lets
    in-flight requests finish for up to ``--drain-seconds``, then everything closes (admin
    first, since the proxy application owns the shared upstream session and store).
    """
    from proxy.app import create_admin_app, create_app
    from proxy.front.server import FrontServer

    log = logging.getLogger("proxy")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    access = logging.getLogger("proxy.access") if settings.access_log else None
    app = create_app(settings)
    scheme = "https" if settings.tls_cert else "http"
    front: FrontServer | None = None
    runners: list[ProxyRunner] = []
    try:
        if settings.front == "own":
            front = FrontServer(app, access=access)
            await front.start(settings.host, settings.port)
            log.info("Running on %s://%s:%s (proxy)", scheme, settings.host, front.port)
        else:
            runners.append(await _aiohttp_site(app, settings.host, settings.port, access, settings))
        if settings.admin_port is not None:
            admin = create_admin_app(app)
            runners.append(
                await _aiohttp_site(
                    admin, settings.admin_host, settings.admin_port, access, settings
                )
            )
        await stop.wait()
        log.info("shutting down")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if front is not None:
            await front.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _aiohttp_site(
    app: web.Application,
    host: str,
    port: int,
    access: logging.Logger | None,
    settings: Settings,
) -> ProxyRunner:
    from proxy.app import JsonAccessLogger
    from proxy.front.server import tls_context
    from proxy.server import ProxyRunner

    runner = ProxyRunner(
        app,
        access_log=access,
        access_log_class=JsonAccessLogger,
        shutdown_timeout=settings.drain_seconds,
    )
    await runner.setup()
    await web.TCPSite(
        runner, host, port, ssl_context=tls_context(settings) if port == settings.port else None
    ).start()
    for address in runner.addresses:
        log = logging.getLogger("proxy")
        log.info("Running on http://%s:%s", address[0], address[1])
    return runner


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if arguments and arguments[0] == "demo":
        from proxy.tools import demo

        return demo.main(arguments[1:], env)
    if arguments and arguments[0] == "simulate":
        from proxy.tools import simulator

        return simulator.main(arguments[1:], env)
    try:
        settings = parse_settings(arguments, env)
        loop_factory = event_loop_factory(settings.event_loop)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    serve(settings, loop_factory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
