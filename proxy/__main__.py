"""The command line: the only place that reads ``sys.argv`` and ``os.environ``.

``python -m proxy [options]`` serves; ``python -m proxy demo`` and ``python -m proxy simulate``
run the offline demo and the simulated transcription API.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from proxy.config import ConfigError, Settings, parse_settings

PROG = "aitronos-cache-proxy"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def serve(settings: Settings) -> None:
    from proxy.app import JsonAccessLogger, create_app

    configure_logging(settings.log_level)
    log = logging.getLogger("proxy")
    if settings.shared_scope:
        log.warning(
            "cache scope is 'shared': every caller can receive responses stored for another "
            "caller's credentials; use this only for single-tenant deployments"
        )
    log.info("forwarding to %s", settings.upstream)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=logging.getLogger("proxy.access") if settings.access_log else None,
        access_log_class=JsonAccessLogger,
        shutdown_timeout=settings.drain_seconds,
        print=lambda message: log.info("%s", message.strip()),
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if arguments and arguments[0] == "demo":
        from proxy import demo

        return demo.main(arguments[1:], env)
    if arguments and arguments[0] == "simulate":
        from proxy import simulator

        return simulator.main(arguments[1:], env)
    try:
        settings = parse_settings(arguments, env)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
