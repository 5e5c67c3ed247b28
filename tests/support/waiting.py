"""Waiting in tests for a state to be reached: a bounded wait on state, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 10.0,
    what: str | Callable[[], object] = "",
) -> None:
    """Wait until ``condition`` holds, checking on every short tick; fail after ``within`` s.

    ``what`` names the awaited state in the failure message; a callable is evaluated at
    failure time, so it can report the state as it was when the wait gave up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {detail or condition}")
        await asyncio.sleep(0.005)


def eventually_sync(
    condition: Callable[[], bool],
    *,
    within: float = 10.0,
    what: str | Callable[[], object] = "",
) -> None:
    """``eventually`` for synchronous tests (subprocesses, containers): the same bounded wait."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {detail or condition}")
        time.sleep(0.05)
