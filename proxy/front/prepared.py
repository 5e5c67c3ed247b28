"""Prepared responses and the fast path of a common cache hit.

A common hit is a GET or HEAD with no request cache directives, no precondition but
``If-None-Match``, no body, for a stored variant selected by nothing but the credential scope (no
``Vary`` other than ``Accept-Encoding``, which picks a representation, not a variant). For such
a request the full RFC 9111 answer depends only on the stored variant, the credential scope, the
entry's age and the representation the client's ``Accept-Encoding`` picks (RFC 9110 §12.5.3), so
it is memoised per (target, Host, credential fields): each representation's head is serialised
once, its body is the stored bytes shared by every connection, and only ``Age`` and the
``Cache-Status`` ttl are formatted per request. The memo holds while the store keeps the same
record and the entry is fresh (§4.2); anything else goes through the full policy in
``proxy.cache``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict

from proxy.cache.exchange import ProxyRequest, route_of
from proxy.core.coding import CodingError, Representation, choose
from proxy.core.conditional import not_modified, not_modified_headers
from proxy.core.models import Record, Serve, StoredResponse, same_record
from proxy.core.policy import freshness_lifetime, lookup
from proxy.front.wire import CRLF, connection_field, field_lines, status_line
from proxy.ops.metrics import LoopCounterChild, LoopHistogramChild

if TYPE_CHECKING:
    from proxy.cache.proxy import CachingProxy
    from proxy.front.access import AccessLog
    from proxy.front.head import Parsed
    from proxy.front.seams import HeadValues, Writer
    from proxy.ops.metrics import Metrics

#: Memoised hits kept at most; past it (or past its byte budget) the memo starts over.
MAX_PREPARED = 4096
#: The memo's share of ``--cache-max-bytes``: a memoised record the store has since evicted
#: stays alive until the memo starts over, so what it may hold counts against a budget of its own.
MEMO_SHARE = 16
#: Request heads kept by their exact bytes (``FastPath.heads``), and the longest one kept.
MAX_HEADS = 1024
MAX_HEAD_BYTES = 4096


class NowaitStore(Protocol):
    def get_nowait(self, key: str) -> Record | None: ...


@dataclass(slots=True)
class Prepared:
    """One stored variant ready to write for one (target, Host, credentials): a serialised
    head per representation (its coding, validator and ``Content-Length``), built on first use."""

    record: Record
    entry: StoredResponse
    reps: tuple[Representation, ...]
    #: Each representation's stored bytes; None for identity decoded on the way out.
    bodies: tuple[bytes | None, ...]
    codings: tuple[str, ...]
    lifetime: float
    fresh_until: float
    route: str
    path: str
    heads: list[bytes | None]
    requests: LoopCounterChild
    durations: LoopHistogramChild
    heads_304: dict[int, bytes] = field(default_factory=dict)
    inm: tuple[str, int, str | None] | None = None
    held: Representation | None = None
    tail_key: tuple[int, int] = (-1, -1)
    tail: bytes = field(default=b"")
    #: The last ``Accept-Encoding`` seen and the representation it chose (RFC 9110 §12.5.3).
    accept_encoding: str | None = ""
    chosen: int | None = None

    def age(self, now: float) -> float:
        """§4.2.3 current_age."""
        entry = self.entry
        return entry.corrected_initial_age + max(0.0, now - entry.response_time)

    def tail_for(self, age: float) -> bytes:
        """``Age`` and the ``Cache-Status`` member (RFC 9211), as the full path writes them."""
        key = (int(age), int(self.lifetime - age))
        if key != self.tail_key:
            self.tail_key = key
            self.tail = b"Age: %d\r\nCache-Status: aitronos-cache-proxy; hit; ttl=%d\r\n" % key
        return self.tail

    def head(self, index: int, length: int) -> bytes:
        """The status line and served fields of representation ``index``, ``length`` long."""
        head = self.heads[index]
        if head is None:
            entry = self.entry
            head = (
                status_line(entry.status, entry.reason)
                + field_lines(entry.fields_of(self.reps[index], self.reps))
                + b"Content-Length: %d\r\n" % length
            )
            self.heads[index] = head
        return head

    def not_modified(
        self, inm: str, index: int, accept_encoding: str | None
    ) -> Representation | None:
        """RFC 9110 §13.1.2: the representation the client holds when it gets a 304, memoised
        for the last (``If-None-Match``, chosen representation, ``Accept-Encoding``) seen: the
        client's codings say which representations it could hold."""
        if (inm, index, accept_encoding) != self.inm:
            entry = self.entry
            self.inm = (inm, index, accept_encoding)
            fields = {"if-none-match": inm}
            if accept_encoding is not None:
                fields["accept-encoding"] = accept_encoding
            self.held = (
                not_modified(entry, fields, self.reps[index]) if 200 <= entry.status < 300 else None
            )
        return self.held

    def not_modified_head(self, held: Representation) -> bytes:
        """The 304's status line and the fields it repeats for the representation held."""
        index = self.reps.index(held)
        head = self.heads_304.get(index)
        if head is None:
            head = status_line(304) + field_lines(not_modified_headers(self.entry, held))
            self.heads_304[index] = head
        return head


def prepare(
    entry: StoredResponse,
    record: Record,
    decision: Serve,
    lifetime: float,
    now: float,
    path: str,
    metrics: Metrics,
) -> Prepared:
    fresh_until = now + (lifetime - decision.age)
    reps = entry.representations
    bodies = tuple(rep.body for rep in reps)
    codings = tuple(rep.coding for rep in reps)
    heads: list[bytes | None] = [None] * len(reps)
    route = route_of(path)
    requests, durations = metrics.hit_series(route)
    return Prepared(
        record, entry, reps, bodies, codings, lifetime, fresh_until, route, path, heads, requests,
        durations,
    )  # fmt: skip


class FastPath:
    """Answers common hits from prepared responses; says ``False`` for anything else."""

    def __init__(
        self,
        proxy: CachingProxy,
        store: NowaitStore,
        access: AccessLog | None,
        clock: Callable[[], float],
        scheme: str,
    ) -> None:
        self.proxy = proxy
        self.store = store
        self.access = access
        self.clock = clock
        self.scheme = scheme
        self.metrics = proxy.metrics
        self.decoded = proxy.bodies
        self.response_bytes = self.metrics.response_bytes.labels()
        self.bytes_saved = self.metrics.bytes_saved.labels()
        self.memo: dict[tuple[object, ...], Prepared] = {}
        self.memo_bytes = 0
        self.memo_budget = max(64 * 1024, proxy.settings.cache_max_bytes // MEMO_SHARE)
        #: Plain keep-alive GET/HEAD heads answered inline, by their exact bytes: a poller's
        #: byte-identical head is answered again without parsing it (``HttpConnection``).
        #: The values are what parsing found, so every decision is made as the first time.
        self.heads: dict[bytes, HeadValues] = {}

    def remember(self, head: bytes, values: HeadValues) -> None:
        """``head``, one whole plain head, parsed to ``values`` and answered inline."""
        if len(head) > MAX_HEAD_BYTES:
            return
        heads = self.heads
        if len(heads) >= MAX_HEADS:
            heads.clear()
        heads[head] = values

    def serve(self, conn: Writer, parsed: Parsed) -> bool:
        method = parsed.method
        if method != "GET" and method != "HEAD":
            return False
        return self.answer(
            conn, method, parsed.target, parsed.host, parsed.credentials,
            parsed.if_none_match, parsed.accept_encoding, parsed.keep_alive, parsed.version,
            parsed.started, parsed,
        )  # fmt: skip

    def answer(
        self,
        conn: Writer,
        method: str,
        target: str,
        host: str,
        credentials: tuple[tuple[bytes, str], ...],
        inm: str | None,
        accept_encoding: str | None,
        keep_alive: bool,
        version: str,
        started: float,
        parsed: Parsed | None,
    ) -> bool:
        """A plain GET or HEAD from its parsed values; without ``parsed`` (the connection has
        not built one) a hit that is not memoised yet is declined, since preparing it needs the
        request's fields."""
        record = self.store.get_nowait(target)
        key = (target, host, credentials)
        if record is None:
            if key in self.memo:
                self._forget(key)
            return False
        now = self.clock()
        prepared = self.memo.get(key)
        if prepared is None or not same_record(prepared.record, record):
            if parsed is None:
                return False
            prepared = self._prepare(conn, parsed, record, now, key)
            if prepared is None:
                return False
        elif now >= prepared.fresh_until:
            self._forget(key)
            return False
        entry = prepared.entry
        if accept_encoding == prepared.accept_encoding:
            index = prepared.chosen
        else:
            index = prepared.chosen = choose(prepared.codings, accept_encoding)
            prepared.accept_encoding = accept_encoding
        if index is None:
            return False  # only coded under no-transform, and the client can't read it
        # §4.2.3 current_age, as Prepared.age computes it
        resident = now - entry.response_time
        age = entry.corrected_initial_age + (resident if resident > 0.0 else 0.0)
        if (int(age), int(prepared.lifetime - age)) == prepared.tail_key:
            tail = prepared.tail
        else:
            tail = prepared.tail_for(age)
        if keep_alive and version != "1.0":
            connection = b""
        else:
            connection = connection_field(keep_alive, version == "1.0")
        held = prepared.not_modified(inm, index, accept_encoding) if inm is not None else None
        if held is not None:
            self.metrics.not_modified.inc()
            conn.write_response(
                b"".join((prepared.not_modified_head(held), tail, connection, CRLF)), b""
            )
            status, size = 304, 0
        else:
            body = prepared.bodies[index]
            if body is None:
                try:
                    body = self.decoded.identity(entry)
                except CodingError:
                    return False  # the full path asks the origin
            head = prepared.heads[index] or prepared.head(index, len(body))
            head = b"".join((head, tail, connection, CRLF))
            status = entry.status
            if method == "HEAD":
                conn.write_response(head, b"")
                size = 0
            else:
                conn.write_response(head, body)
                size = len(body)
                self.response_bytes.value += size
                self.bytes_saved.value += size
        elapsed = time.perf_counter() - started
        prepared.requests.value += 1
        prepared.durations.observe(elapsed)
        if self.access is not None:
            self.access.record(method, prepared.path, status, "hit", elapsed, size)
        return True

    def _prepare(
        self,
        conn: Writer,
        parsed: Parsed,
        record: Record,
        now: float,
        key: tuple[object, ...],
    ) -> Prepared | None:
        """The full policy once; memoised only when its answer is a plain fresh hit."""
        headers = CIMultiDict(parsed.headers)
        request = ProxyRequest(
            parsed.method, parsed.target, headers, None, conn.peer, self.scheme,
            parsed.version, parsed.host,
        )  # fmt: skip
        proxy = self.proxy
        decision = lookup(record, proxy.facts(request), now, proxy.policy)
        if not isinstance(decision, Serve) or decision.result != "hit" or decision.refresh:
            return None
        entry = decision.entry
        if any(variant.selection_vary for variant in record):
            return None  # the variant depends on more than the scope: the full policy selects
        lifetime = freshness_lifetime(entry, proxy.policy)
        prepared = prepare(entry, record, decision, lifetime, now, request.path, self.metrics)
        if key in self.memo:
            self._forget(key)
        if len(self.memo) >= MAX_PREPARED or self.memo_bytes + entry.size > self.memo_budget:
            self.memo.clear()
            self.memo_bytes = 0
        self.memo[key] = prepared
        self.memo_bytes += entry.size
        return prepared

    def _forget(self, key: tuple[object, ...]) -> None:
        prepared = self.memo.pop(key)
        self.memo_bytes -= prepared.entry.size
