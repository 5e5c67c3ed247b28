"""The seam for coalescing fetches across replicas: who fetches, and what the others learn.

In one process ``SingleFlight`` already makes concurrent requests share one fetch. A
``Coordinator`` extends that to every replica sharing a store: one replica holds the right to
fetch a flight, the others wait for its ``Notice`` and then read what it stored. Without a
shared store there is nothing to coordinate, and the application runs with none.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Notice:
    """What a replica announces when its fetch is over.

    ``response_time`` identifies the stored response it produced (``None``: nothing was stored,
    so waiters must fetch for themselves); ``revalidated`` says the fetch was a 304.
    """

    response_time: float | None = None
    revalidated: bool = False


@dataclass(slots=True)
class Claim:
    """The answer to "may I fetch this flight?".

    Without a ``notice``, this replica leads: it fetches, then ``announce``s what it stored (also
    when the coordinator could not be asked and the fetch goes ahead alone). With one, another
    replica fetched, and the notice says what it stored.
    """

    notice: Notice | None = None
    announced: Notice = Notice()

    @property
    def leader(self) -> bool:
        return self.notice is None

    def announce(self, response_time: float | None, *, revalidated: bool = False) -> None:
        self.announced = Notice(response_time, revalidated)


class Coordinator(Protocol):
    """Grants one fetch per flight (a cache key with the request facts that select a variant)."""

    def claim(self, flight: str) -> AbstractAsyncContextManager[Claim]: ...
