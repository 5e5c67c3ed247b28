"""``async with`` for what starts and closes: closed also when starting failed half-way."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartsAndCloses:
    """A base for resources with ``async start()`` and ``async close()`` (the runtime, the
    throwaway Redis processes): ``async with`` starts it, and closes it on the way out, or at
    once when ``start()`` raised, so nothing half-started is left behind."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
