"""What the pure policy tests decide about: a fixed ``NOW``, one ``POLICY``, a stored response
(``stored``) and a request's facts (``facts``), shared by the tests under ``tests/core``."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.core.headers import format_http_date
from proxy.core.models import StoredResponse
from proxy.core.policy import CachePolicy, RequestFacts, request_facts

NOW = 1_800_000_000.0
POLICY = CachePolicy(heuristic_max=3600, keep_stale=600, stale_grace=60)


def stored(
    *headers: tuple[str, str],
    status: int = 200,
    at: float = NOW,
    scope: str = "s",
    selecting: tuple[tuple[str, str], ...] = (),
    request_time: float | None = None,
) -> StoredResponse:
    return StoredResponse(
        status=status,
        reason="OK",
        headers=(("Date", format_http_date(at)), *headers),
        body=b"body",
        request_time=at if request_time is None else request_time,
        response_time=at,
        scope=scope,
        selecting=selecting,
        targeted=True,
    )


def facts(scope: str = "s", **headers: str) -> RequestFacts:
    multi = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    return request_facts(multi, scope=scope, cache_control=multi.getall("cache-control", []))
