"""Long polling with ``Prefer: wait`` (RFC 7240 §4.3): may this request be held, and for how long?

Pure: the handler asks once, with the registry's count of waiters, and carries out the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.core.headers import parse_delta_seconds, split_list


def requested_wait(values: Iterable[str]) -> int | None:
    """The ``wait`` preference of the ``Prefer`` field values, in seconds (RFC 7240 §2, §4.3).

    A preference is ``token [ "=" word ] *( ";" parameter )``; the first ``wait`` counts and a
    value that is not delta-seconds makes it absent (§2: unrecognised values are ignored).
    """
    for preference in split_list(list(values)):
        name, _, rest = preference.partition("=")
        if name.strip().lower() != "wait":
            continue
        value = rest.split(";", 1)[0].strip().strip('"')
        return parse_delta_seconds(value) if value else None
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold the request up to ``seconds``; ``applied`` is the ``Preference-Applied`` value."""

    seconds: float
    applied: str


@dataclass(frozen=True, slots=True)
class Shed:
    """The client asked to wait but the proxy already holds ``--max-waiters``: answer now."""


def hold_decision(
    requested: int | None, *, waiting: int, max_waiters: int, max_wait: float
) -> Hold | Shed | None:
    """Whether a request whose ``If-None-Match`` matches the stored response is held.

    ``None``: no usable preference (or a wait of 0), answer at once as without ``Prefer``.
    The applied wait is ``min(requested, max_wait)``, echoed in ``Preference-Applied``.
    """
    if requested is None or requested <= 0 or max_wait <= 0:
        return None
    if waiting >= max_waiters:
        return Shed()
    seconds = min(float(requested), max_wait)
    return Hold(seconds, f"wait={int(seconds)}")
