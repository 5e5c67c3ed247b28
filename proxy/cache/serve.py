"""Serving from the store: a stored response, or a 304 when the client's validator matches."""

from __future__ import annotations

from proxy.cache.exchange import Fields, ProxyRequest, Responder
from proxy.core.coding import choose
from proxy.core.conditional import not_modified, not_modified_headers
from proxy.core.headers import parse_cache_control
from proxy.core.models import Serve
from proxy.ops.metrics import Metrics


class Unacceptable(Exception):
    """The stored response has no representation in a coding the client accepts (it is only
    stored coded, under ``no-transform``): the request must go to the origin instead."""


class StoredServing:
    """Writes a ``Serve`` decision: ``Age`` and ``Cache-Status`` on the stored fields (§4)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def serve(
        self, request: ProxyRequest, responder: Responder, decision: Serve, extra: Fields = ()
    ) -> None:
        """Answer from the stored response in the best coding the client accepts (RFC 9110
        §12.5.3), locally with 304 when the client's validator matches the representation it
        holds (§13.1.2, §13.1.3); ``extra`` fields are appended (``Preference-Applied``).
        Raises ``Unacceptable`` when no stored coding will do."""
        entry = decision.entry
        codings = entry.codings
        if "cache-control" in request.headers and _no_transform(request):
            codings = codings[:1]  # RFC 9111 §5.2.1.6: only the origin's own representation
        index = choose(codings, request.headers.get("accept-encoding"))
        if index is None:
            raise Unacceptable
        rep = entry.representations[index]
        age = str(int(decision.age))
        if 200 <= entry.status < 300:
            held = not_modified(entry, request.headers, rep)
            if held is not None:
                self.metrics.not_modified.inc()
                headers = [*not_modified_headers(entry, held), ("Age", age)]
                headers.append(("Cache-Status", decision.cache_status))
                headers.extend(extra)
                responder.send(304, "", headers, b"")
                return
        size = len(rep.body)
        if request.method != "HEAD":
            self.metrics.response_bytes.inc(size)
            if decision.saved:
                self.metrics.bytes_saved.inc(size)
        served = entry.represented[index]
        headers = [*served, ("Age", age), ("Cache-Status", decision.cache_status), *extra]
        responder.send(entry.status, entry.reason, headers, rep.body)

    def count(self, status: int, method: str, size: int, saved: bool = True) -> None:
        """The metrics ``serve`` counts for an answer it wrote, for a copy of that answer
        written to another request of the same kind (a shared long-poll answer)."""
        if status == 304:
            self.metrics.not_modified.inc()
        elif method != "HEAD":
            self.metrics.response_bytes.inc(size)
            if saved:
                self.metrics.bytes_saved.inc(size)


def _no_transform(request: ProxyRequest) -> bool:
    return parse_cache_control(request.headers.getall("cache-control", ())).no_transform
