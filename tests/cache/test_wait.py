"""The waiter registry on its own: memory per held request and what it leaves behind."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

from multidict import CIMultiDict

from proxy.cache.wait import Observation, WaitRoom
from tests.support.waiting import eventually

HELD = 1000
#: Budget per held request: the waiter, its future and timer, and the coroutine holding it.
BUDGET = 4096


async def test_a_held_request_costs_under_4_kib_and_leaves_nothing_behind() -> None:
    outcomes: list[str] = []
    room: WaitRoom[bytes] = WaitRoom(on_outcome=lambda o, n: outcomes.extend([o] * n))
    headers = [CIMultiDict({"If-None-Match": f'"{i}"'}) for i in range(HELD)]
    observing = asyncio.Event()
    never = asyncio.Event()

    async def observe() -> Observation[bytes]:
        observing.set()
        await never.wait()  # an upstream that never answers: only the drain ends the waits
        raise AssertionError("unreachable")

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [asyncio.create_task(room.hold("flight", "/k", observe, h, 30)) for h in headers]
        await eventually(lambda: room.waiting == HELD and observing.is_set())
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_request = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / HELD
    assert per_request < BUDGET, per_request

    room.release_all()
    wakes = await asyncio.gather(*held)
    assert {wake.outcome for wake in wakes} == {"timeout"}
    assert outcomes == ["timeout"] * HELD
    assert room.waiting == 0 and not room._watches and not room._by_key
    assert not room._keys_by_digest


class CountingFuture(asyncio.Future[None]):
    """A connection's disconnect future that counts the callbacks put on it and taken off."""

    added = 0
    removed = 0

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self.added += 1
        super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Any) -> int:
        removed = super().remove_done_callback(fn)
        self.removed += removed
        return removed


async def test_a_disconnect_callback_does_not_outlive_its_request() -> None:
    room: WaitRoom[bytes] = WaitRoom(on_outcome=lambda _o, _n: None)
    lost = CountingFuture()

    async def observe() -> Observation[bytes]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    headers = CIMultiDict({"If-None-Match": '"a"'})
    for _ in range(3):  # one keep-alive connection, request after request
        wake = await room.hold("flight", "/k", observe, headers, 0.01, lost)
        assert wake.outcome == "timeout"
    assert lost.added == lost.removed == 3
    assert not room._watches
