"""The command line: the only place that reads ``sys.argv`` and ``os.environ``.

``python -m proxy [options]`` serves; ``python -m proxy demo`` and ``python -m proxy simulate``
run the offline demo and the simulated transcription API.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from proxy.ops.config import ConfigError, Settings, parse_settings

if TYPE_CHECKING:
    from proxy.ops.workers import WorkerPlace

PROG = "aitronos-cache-proxy"
COMMANDS = """\
Serve a caching reverse proxy (RFC 9111) in front of --upstream; each option is also PROXY_<NAME>.

commands:
  demo      the simulated API, this proxy (run as `python -m proxy`) and a polling fleet on this
            machine, compared side by side; no network, no credentials (demo --help)
  simulate  serve only the simulated transcription API, e.g. simulate --port 9000 (simulate --help)
"""


def help_text() -> str:
    """``--help``: the serving options and the ``demo`` and ``simulate`` commands."""
    import argparse

    from proxy.ops.config import add_arguments

    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="\n       ".join(f"%(prog)s {c}[options]" for c in ("", "demo ", "simulate ")),
        description=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser.format_help()


def configure_logging(level: str, worker: int | None = None) -> None:
    """Log lines to stderr; a worker's carry ``worker=<slot>`` after the logger's name."""
    tag = "" if worker is None else f" worker={worker}"
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s %(name)s{tag} %(message)s",
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


def log_start(settings: Settings) -> None:
    log = logging.getLogger("proxy")
    if settings.shared_scope:
        log.warning(
            "cache scope is 'shared': every caller can receive responses stored for another "
            "caller's credentials; use this only for single-tenant deployments"
        )
    if settings.redis_url and not settings.scope_secret:
        log.warning(
            "--redis-url without --scope-secret: the credential scopes stored in Redis are "
            "unkeyed hashes of the callers' tokens, so anyone who can read Redis can test "
            "guessed tokens against them offline; set the same random PROXY_SCOPE_SECRET "
            "(e.g. from `openssl rand -hex 32`) on every replica"
        )
    if settings.admin_token and settings.admin_port is None:
        log.warning("purging is enabled on the public port; consider --admin-port")
    log.info("forwarding to %s", settings.upstream)


def serve(
    settings: Settings,
    loop_factory: LoopFactory = asyncio.new_event_loop,
    worker: WorkerPlace | None = None,
) -> None:
    configure_logging(settings.log_level, None if worker is None else worker.index)
    from proxy.ops.limits import limit_report, raise_descriptor_limit

    warning, line = limit_report(settings, raise_descriptor_limit())
    if worker is None or worker.index == 0:
        log_start(settings)
    # Every worker: each is a process with its own RLIMIT_NOFILE and connection cap.
    logging.getLogger("proxy").log(logging.WARNING if warning else logging.INFO, "%s", line)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(settings, worker))


def serve_worker(settings: Settings, place: WorkerPlace) -> None:
    """One worker of ``--workers N`` (started by ``proxy.ops.workers``): serve as one process
    does, on a ``SO_REUSEPORT`` listener, with the fleet-wide ``/metrics``."""
    serve(settings, event_loop_factory(settings.event_loop), place)


async def run(settings: Settings, worker: WorkerPlace | None = None) -> None:
    """Serve until SIGINT or SIGTERM: the public listener and, with ``--admin-port``, the admin one.

    Both are our own HTTP/1.1 front (``proxy.front``) over one ``Runtime``. On a signal the
    public listener stops accepting and in-flight requests get up to ``--drain-seconds``; then
    the admin listener closes (``/metrics`` stays scrapable during the drain) and the runtime
    closes the cache, the upstream session and the store.
    """
    from proxy.front.server import FrontServer
    from proxy.runtime import Runtime

    log = logging.getLogger("proxy")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    access = logging.getLogger("proxy.access") if settings.access_log else None
    reuse_port = worker is not None
    scheme = "https" if settings.tls_cert else "http"
    fleet_metrics = None
    try:
        async with Runtime(settings) as runtime:
            if worker is not None:
                from proxy.ops.worker_metrics import WorkerMetrics

                fleet_metrics = WorkerMetrics(
                    runtime.registry, index=worker.index, count=worker.count, run_dir=worker.run_dir
                )
                runtime.exposition = fleet_metrics.exposition
                parent = multiprocessing.parent_process()
                if parent is not None and parent.sentinel is not None:
                    # The supervisor died without forwarding a signal: drain and stop all the same.
                    loop.add_reader(parent.sentinel, stop.set)
            listeners: list[FrontServer] = []
            try:
                public = FrontServer(runtime, access=access)
                listeners.append(public)
                await public.start(settings.host, settings.port, reuse_port=reuse_port)
                log.info("Running on %s://%s:%s (proxy)", scheme, settings.host, public.port)
                if settings.admin_port is not None:
                    admin = FrontServer(runtime, access=access, role="admin")
                    listeners.append(admin)
                    await admin.start(
                        settings.admin_host, settings.admin_port, reuse_port=reuse_port
                    )
                    log.info("Running on http://%s:%s (admin)", settings.admin_host, admin.port)
                if fleet_metrics is not None and worker is not None:
                    await fleet_metrics.start()
                    worker.announce_ready()
                await stop.wait()
                log.info("shutting down")
            finally:
                for listener in listeners:  # the public one first: it drains the runtime
                    await listener.close()
    finally:
        if fleet_metrics is not None:
            await fleet_metrics.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if arguments and arguments[0] == "demo":
        from proxy.tools import demo

        return demo.main(arguments[1:], env)
    if arguments and arguments[0] == "simulate":
        from proxy.tools import simulator

        return simulator.main(arguments[1:], env)
    if "-h" in arguments or "--help" in arguments:
        print(help_text(), end="")
        return 0
    try:
        settings = parse_settings(arguments, env)
        loop_factory = event_loop_factory(settings.event_loop)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return supervise_workers(settings)
    serve(settings, loop_factory)
    return 0


def supervise_workers(settings: Settings) -> int:
    """``--workers N`` with N > 1: the supervisor process (``proxy.ops.workers``)."""
    from proxy.ops.private_redis import PrivateRedisError, redis_server_path
    from proxy.ops.workers import supervise

    if not settings.redis_url:
        try:
            redis_server_path()
        except PrivateRedisError as error:
            print(
                f"{PROG}: error: --workers {settings.workers} without --redis-url needs a "
                f"private redis-server to share one cache: {error}",
                file=sys.stderr,
            )
            return 2
    configure_logging(settings.log_level)
    try:
        return supervise(settings)
    except (OSError, PrivateRedisError) as error:
        logging.getLogger("proxy").error("cannot start the workers: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
