"""The two things every waiter of the front needs: made on demand, woken once.

A connection (HTTP/1.1 or HTTP/2), an HTTP/2 stream and flow control each keep a future that a
held request or a writer awaits: ``disconnected`` (the client went away) and ``drain`` (the
client read what was written). ``watch`` makes such a future only when someone asks, already
done when what it waits for has happened; ``settle`` wakes it, with an error or without.
"""

from __future__ import annotations

import asyncio


def watch(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None] | None, happened: bool
) -> asyncio.Future[None]:
    """``future`` when there is one, else a new one, done at once if it ``happened`` already."""
    if future is None:
        future = loop.create_future()
        if happened:
            future.set_result(None)
    return future


def settle(future: asyncio.Future[None] | None, error: BaseException | None = None) -> None:
    """Wake ``future`` if it is there and still pending: ``error`` raised in it, or done."""
    if future is not None and not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
