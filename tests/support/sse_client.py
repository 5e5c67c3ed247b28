"""A small ``text/event-stream`` reader for tests: events and comments as the client sees them
(HTML Living Standard §9.2.6), read from a real response over a socket."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp


@dataclass
class Received:
    """One dispatched block: an event (``id``, ``event``, ``data``), a comment, or ``retry``."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.data)

    @property
    def is_event(self) -> bool:
        return bool(self.data)


class EventReader:
    """Reads blocks off an aiohttp response; ``None`` once the stream has ended."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> Received | None:
        block = Received()
        seen = False
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return block if seen else None
            line = raw.decode().rstrip("\n").rstrip("\r")
            if not line:
                if seen:
                    return block
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                block.comments.append(value)
            elif name == "id":
                block.id = value
            elif name == "event":
                block.event = value
            elif name == "data":
                block.data.append(value)
            elif name == "retry":
                block.retry = int(value)

    async def next_event(self) -> Received | None:
        """The next event, skipping comments (heartbeats) and ``retry``."""
        while True:
            block = await self.next()
            if block is None or block.is_event:
                return block
