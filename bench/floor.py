"""The floor of Python here: a bare asyncio ``Protocol`` with httptools writing prepared bytes.

Every request, whatever it asks, is answered with the one response the proxy sends on a cache
hit (status line, headers and body captured from it by the harness), serialised once at start:
per request only the parser callbacks, one ``write`` and the keep-alive decision remain. It is
what issue 10's table measured as "an asyncio Protocol with httptools writing prepared bytes",
the reference for what the proxy's own front could cost on the same loop.

``python -m bench.floor --port P --response FILE [--loop asyncio|uvloop]``
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httptools

from bench.bare import new_event_loop, parse_origin_args

#: Fields the capturing connection set for itself; the floor writes its own framing.
HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})


def load_prepared(path: Path) -> tuple[bytes, bytes]:
    """The captured hit as (head without ``Connection``/blank line, body)."""
    captured = json.loads(path.read_text())
    body = base64.b64decode(captured["body"])
    lines = [f"HTTP/1.1 {int(captured['status'])} OK\r\n".encode()]
    for name, value in captured["headers"]:
        if name.lower() not in HOP_BY_HOP:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"Content-Length: %d\r\n" % len(body))
    return b"".join(lines), body


class FloorProtocol(asyncio.Protocol):
    """Parses with httptools and answers each complete request with the prepared response."""

    def __init__(self, keep: bytes, close: bytes) -> None:
        self.keep = keep
        self.close = close
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.parser.should_keep_alive():
            transport.write(self.keep)
        else:
            transport.write(self.close)
            transport.close()


def main() -> None:
    args = parse_origin_args("python -m bench.floor")
    head, body = load_prepared(args.response)
    keep = head + b"Connection: keep-alive\r\n\r\n" + body
    close = head + b"Connection: close\r\n\r\n" + body
    loop = new_event_loop(args.loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: FloorProtocol(keep, close), "127.0.0.1", args.port)
    )
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
