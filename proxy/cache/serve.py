"""Serving from the store: a stored response, a 304 when the client's validator matches, or
byte ranges of it (RFC 9110 §14: a 206 or a 416)."""

from __future__ import annotations

import secrets

from proxy.cache.bodies import Bodies
from proxy.cache.exchange import Fields, ProxyRequest, Responder, envelope
from proxy.core.coding import IDENTITY, CodingError, Representation, choose
from proxy.core.conditional import not_modified, not_modified_headers
from proxy.core.headers import parse_cache_control
from proxy.core.models import ACCEPT_RANGES, Headers, Serve, StoredResponse, header_value
from proxy.core.ranges import (
    NotSatisfiable,
    Partial,
    RangeDecision,
    Whole,
    multipart,
    multipart_type,
    range_decision,
)
from proxy.ops.metrics import Metrics


class Unacceptable(Exception):
    """The stored response has no representation in a coding the client accepts (it is only
    stored coded, under ``no-transform``), or its stored body does not decode here: the
    request must go to the origin instead."""


class StoredServing:
    """Writes a ``Serve`` decision: ``Age`` and ``Cache-Status`` on the stored fields (§4)."""

    def __init__(self, metrics: Metrics, bodies: Bodies) -> None:
        self.metrics = metrics
        self.bodies = bodies

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
        reps = entry.representations
        rep = reps[index]
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
        try:
            body = self.bodies.body(entry, rep)
        except CodingError as error:
            raise Unacceptable from error
        served: Headers = entry.fields_of(rep, reps)
        status, reason = entry.status, entry.reason
        if "range" in request.headers:
            match ranges_for(request, entry, rep, len(body)):
                case Partial() as partial:
                    status, reason = 206, "Partial Content"
                    served, body = partial_content(served, body, partial)
                case NotSatisfiable() as unsatisfiable:
                    status, reason = 416, "Range Not Satisfiable"
                    served = (
                        ("Content-Type", "application/json"),
                        ("Content-Range", unsatisfiable.content_range),
                        ACCEPT_RANGES,
                    )
                    body = envelope(
                        "RANGE_NOT_SATISFIABLE",
                        f"No range is within the {unsatisfiable.length} bytes of the response.",
                    )
                case Whole():
                    pass
        size = len(body)
        if request.method != "HEAD":
            self.metrics.response_bytes.inc(size)
            if decision.saved:
                self.metrics.bytes_saved.inc(size)
        headers = [*served, ("Age", age), ("Cache-Status", decision.cache_status), *extra]
        responder.send(status, reason, headers, body)

    def count(
        self, status: int, method: str, size: int, saved: bool = True, copies: int = 1
    ) -> None:
        """The metrics ``serve`` counts for an answer it wrote, for ``copies`` of that answer
        written to other requests of the same kind (a shared long-poll answer)."""
        if copies <= 0:
            return
        if status == 304:
            self.metrics.not_modified.inc(copies)
        elif method != "HEAD":
            self.metrics.response_bytes.inc(size * copies)
            if saved:
                self.metrics.bytes_saved.inc(size * copies)


def ranges_for(
    request: ProxyRequest, entry: StoredResponse, rep: Representation, length: int
) -> RangeDecision:
    """The request's ``Range`` and ``If-Range`` against the representation chosen for it, whose
    body (as sent: ``Bodies.body``) is ``length`` bytes."""
    headers = request.headers
    return range_decision(
        method=request.method,
        status=entry.status,
        ranges=headers.getall("range", ()),
        if_range=headers.get("if-range"),
        length=length,
        etag=rep.etag,
        last_modified=entry.last_modified,
        date=entry.date,
        coded=rep.coding != IDENTITY,
        derived=rep.derived,
    )


def partial_content(served: Headers, body: bytes, partial: Partial) -> tuple[Headers, bytes]:
    """A 206's fields and body (RFC 9110 §15.3.7): the 200's fields with ``Content-Range`` for
    one part, or a ``multipart/byteranges`` body whose parts carry the ``Content-Type``."""
    if len(partial.ranges) == 1:
        part = partial.ranges[0]
        fields = (*served, ("Content-Range", part.content_range(partial.length)))
        return fields, body[part.first : part.last + 1]
    boundary = secrets.token_hex(16)
    content_type = header_value(served, "content-type")
    kept = tuple(item for item in served if item[0].lower() != "content-type")
    fields = (*kept, ("Content-Type", multipart_type(boundary)))
    return fields, multipart(body, partial, content_type, boundary)


def _no_transform(request: ProxyRequest) -> bool:
    return parse_cache_control(request.headers.getall("cache-control", ())).no_transform
