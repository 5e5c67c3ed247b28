"""``python -m proxy demo``: flags (each also ``DEMO_<FLAG>``), signals, and the exit status."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Mapping
from contextlib import suppress

from proxy.ops.config import env_backed_options, from_attributes
from proxy.tools.demo.process import ProxyProcessError
from proxy.tools.demo.run import DemoOptions, run_demo


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for ``python -m proxy demo``; each also defaults from ``DEMO_<FLAG>``."""
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="python -m proxy demo",
        description="Run the simulated API, the proxy (as `python -m proxy`, with its default "
        "settings; PROXY_* variables apply) and a polling fleet, and compare.",
    )

    option = env_backed_options(parser, environ, "DEMO_")
    option("--pollers", int, defaults.pollers, "concurrent polling clients")
    option("--transcriptions", int, defaults.transcriptions, "transcriptions they poll")
    option(
        "--duration",
        float,
        defaults.duration,
        "each of the four phases lasts at most half of this many seconds, and ends sooner "
        "once every poller saw a final status",
    )
    option("--interval", float, defaults.interval, "seconds between a client's polls (±20%%)")
    option("--seed", int, defaults.seed, "random seed for the simulator and the fleet")
    parser.add_argument(
        "--compressing-origin",
        action="store_true",
        default=environ.get("DEMO_COMPRESSING_ORIGIN", "").lower() in ("1", "true", "yes", "on"),
        help="put the simulated API behind an nginx-like front: gzip with Vary: Accept-Encoding "
        "on 200s only, Vary: Origin and CORS ($DEMO_COMPRESSING_ORIGIN)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the table, keep the proxy and the simulator up until Ctrl-C",
    )
    return parser


async def _main(options: DemoOptions, environ: Mapping[str, str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        results = await run_demo(
            options, out=sys.stdout, err=sys.stderr, stop=stop, environ=environ
        )
    except ProxyProcessError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 130 if results is None else 0


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """``python -m proxy demo``: no network, no credentials; exits 0 after cleaning up."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    try:
        options = from_attributes(DemoOptions, args)
    except ValueError as exc:
        parser.error(str(exc))
    return asyncio.run(_main(options, environ))
