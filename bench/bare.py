"""The ceiling of our stack: a bare aiohttp handler answering every GET with prepared bytes.

It serves the very status, headers and body the proxy sends on a cache hit (captured by the
harness into a JSON file), through the same ``web.Application`` router and the same event loop,
so the difference to the proxy is the proxy's own work per request.

``python -m bench.bare --port P --response FILE [--loop asyncio|uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

#: Fields aiohttp writes itself, and hop-by-hop ones that belonged to the capturing connection.
SET_BY_AIOHTTP = frozenset(
    {"connection", "content-length", "date", "keep-alive", "server", "transfer-encoding"}
)


def load_response(path: Path) -> tuple[int, CIMultiDict[str], bytes]:
    prepared = json.loads(path.read_text())
    headers = CIMultiDict((k, v) for k, v in prepared["headers"] if k.lower() not in SET_BY_AIOHTTP)
    return int(prepared["status"]), headers, base64.b64decode(prepared["body"])


def create_bare_app(status: int, headers: CIMultiDict[str], body: bytes) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def new_event_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def parse_origin_args(prog: str) -> argparse.Namespace:
    """The command line of a benchmark origin: its port, its recorded response, its loop."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return parser.parse_args()


def main() -> None:
    args = parse_origin_args("python -m bench.bare")
    status, headers, body = load_response(args.response)
    web.run_app(
        create_bare_app(status, headers, body),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=new_event_loop(args.loop),
    )


if __name__ == "__main__":
    main()
