"""``python -m proxy simulate``: the simulated transcription API on a port of its own.

The flags (each also ``SIM_<FLAG>``) build a ``SimulatorConfig``; the start-up lines say where it
listens and how to get a transcription ID from it with curl, and how to poll that ID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web

from proxy.ops.config import env_backed_options, from_attributes
from proxy.ops.values import parse_bool
from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator.api import create_simulator_app
from proxy.tools.simulator.model import API_PREFIX, Simulator, SimulatorConfig

_SEEDED_SHOWN: Final = 10
#: The token the start-up lines suggest: any bearer token is accepted and owns what it creates.
EXAMPLE_TOKEN: Final = "my-token"
EXAMPLE_AUDIO: Final = "https://example.com/audio/meeting.mp3"


def _float_list(value: str) -> tuple[float, ...]:
    return tuple(float(part) for part in value.split(",") if part.strip())


def _str_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for ``python -m proxy simulate``; each defaults from ``SIM_<FLAG>`` in ``environ``."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m proxy simulate",
        description="Serve a simulated Aitronos transcription API (no network, no credentials).",
    )

    option = env_backed_options(parser, environ, "SIM_")
    option("--host", str, "127.0.0.1", "interface to listen on")
    option("--port", int, 8081, "port to listen on; 0 picks a free one")
    option("--queued-seconds", float, defaults.queued_seconds, "time spent queued")
    option("--processing-seconds", float, defaults.processing_seconds, "time spent processing")
    option("--failure-ratio", float, defaults.failure_ratio, "share of transcriptions that fail")
    option("--seed", int, defaults.seed, "random seed for IDs, failures and transcripts")
    option("--transcript-words", int, defaults.transcript_words, "words per transcript")
    option("--pending-max-age", int, defaults.pending_max_age, "max-age while queued/processing")
    option("--final-max-age", int, defaults.final_max_age, "max-age once completed/failed")
    option("--start-offsets", _float_list, "", "comma-separated delays for seeded transcriptions")
    option("--seed-tokens", _str_list, "", "comma-separated tokens to pre-seed transcriptions for")
    option("--seed-count", int, 0, "transcriptions to pre-seed per token")
    option(
        "--compress",
        _str_list,
        "",
        "codings to compress JSON/text answers with, as nginx's gzip does (e.g. gzip or "
        "gzip,br,zstd), with Vary: Accept-Encoding and weak ETags; empty: never",
    )
    option(
        "--narrow-304-vary",
        parse_bool,
        False,
        "send 304s without Vary: Accept-Encoding (as nginx's gzip_vary does)",
    )
    option(
        "--cors",
        parse_bool,
        False,
        "answer CORS preflights and add Access-Control-Allow-Origin and Vary: Origin",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The flags of the same names; ``--compress``, ``--narrow-304-vary`` and ``--cors`` make the
    ``OriginFront`` (every list flag is already a tuple: argparse applies ``type`` to defaults)."""
    return from_attributes(SimulatorConfig, args, front=from_attributes(OriginFront, args))


def listening_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


@asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` (port 0: a free one) for the block's duration; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield listening_url(runner)
    finally:
        await runner.cleanup()


def startup_lines(
    url: str, config: SimulatorConfig, seeded: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """What ``simulate`` prints once listening: where, what was seeded, and how to get a
    transcription ID (POST it with any bearer token) and poll it (GET with the same token)."""
    lines = [f"simulated transcription API listening on {url}"]
    for token, transcription_id in seeded[:_SEEDED_SHOWN]:
        lines.append(f"seeded {transcription_id} for token {token}")
    if len(seeded) > _SEEDED_SHOWN:
        lines.append(f"... and {len(seeded) - _SEEDED_SHOWN} more")
    body = json.dumps({"audio_url": EXAMPLE_AUDIO})
    create = shlex.join(
        [
            "curl", "-s", "-X", "POST", f"{url}{API_PREFIX}",
            "-H", f"Authorization: Bearer {EXAMPLE_TOKEN}",
            "-H", "Content-Type: application/json",
            "-d", body,
        ]
    )  # fmt: skip
    token, transcription_id = seeded[0] if seeded else (EXAMPLE_TOKEN, "<transcription_id>")
    item = f"{url}{API_PREFIX}/{transcription_id}"
    poll = f"curl -si {item} -H {shlex.quote(f'Authorization: Bearer {token}')}"
    timeline = (
        f"queued {config.queued_seconds:g}s, processing {config.processing_seconds:g}s, then "
        f"final; Cache-Control: max-age={config.pending_max_age} until then"
    )
    lines += [
        "get a transcription ID (any bearer token owns what it creates; the ID is "
        '"transcription_id" in the answer\'s "data"):',
        f"  {create}",
        f"poll {'a seeded one' if seeded else 'it with the same token'} ({timeline}):",
        f"  {poll}",
        f"through the proxy: python -m proxy --upstream {url}, then the same GET on its port",
        f"stats: curl -s {url}/_sim/stats",
    ]
    return lines


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then shut the listener down cleanly."""
    simulator = Simulator(config)
    async with serving(create_simulator_app(simulator=simulator), host, port) as url:
        for line in startup_lines(url, config, simulator.owners()):
            print(line, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """``python -m proxy simulate``: parse flags, then serve until interrupted."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
