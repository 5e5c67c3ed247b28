"""Serving from the store: a stored response, or a 304 when the client's validator matches."""

from __future__ import annotations

from proxy.cache.exchange import ProxyRequest, Responder
from proxy.core.models import Serve
from proxy.core.policy import not_modified, not_modified_headers
from proxy.ops.metrics import Metrics


class StoredServing:
    """Writes a ``Serve`` decision: ``Age`` and ``Cache-Status`` on the stored fields (§4)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def serve(self, request: ProxyRequest, responder: Responder, decision: Serve) -> None:
        """Answer from the stored response, locally with 304 when the client's validator matches
        (RFC 9110 §13.1.2, §13.1.3)."""
        entry = decision.entry
        age = str(int(decision.age))
        if 200 <= entry.status < 300 and not_modified(entry, request.headers):
            self.metrics.not_modified.inc()
            headers = [*not_modified_headers(entry), ("Age", age)]
            headers.append(("Cache-Status", decision.cache_status))
            responder.send(304, "", headers, b"")
            return
        size = len(entry.body)
        if request.method != "HEAD":
            self.metrics.response_bytes.inc(size)
            if decision.saved:
                self.metrics.bytes_saved.inc(size)
        headers = [*entry.served, ("Age", age), ("Cache-Status", decision.cache_status)]
        responder.send(entry.status, entry.reason, headers, entry.body)
