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
#: The longest answer a remembered head keeps whole, to write again in one piece
#: (``Head.answer``); its bytes count against the memo's budget.
MAX_REPLAY_BYTES = 32 * 1024


class Head:
    """A request head remembered by its exact bytes: what parsing it found (``values``) and,
    once answered from a prepared response, that whole answer, to write again as long as the
    store holds the same record, the entry is fresh and ``Age`` and the ``Cache-Status`` ttl
    (``tail_key``) read the same: the full path would write the same bytes."""

    __slots__ = ("answer", "log_prefix", "not_modified", "prepared", "record", "size", "status",
                 "tail_key", "values")  # fmt: skip

    def __init__(self, values: HeadValues) -> None:
        self.values = values
        self.prepared: Prepared | None = None
        self.record: Record = ()
        self.tail_key = (-1, -1)
        self.answer = b""
        self.status = 0
        self.size = 0
        self.not_modified = False
        #: Its access-log line up to the duration (``AccessLog.prefix``).
        self.log_prefix = ""


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
    #: The entry's §4.2.3 corrected_initial_age and response_time (computed when asked).
    initial_age: float = 0.0
    response_time: float = 0.0

    def __post_init__(self) -> None:
        self.initial_age = self.entry.corrected_initial_age
        self.response_time = self.entry.response_time

    def age(self, now: float) -> float:
        """§4.2.3 current_age."""
        resident = now - self.response_time
        return self.initial_age + (resident if resident > 0.0 else 0.0)

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
        self.heads: dict[bytes, Head] = {}
        #: The bytes of the answers the heads keep to ``replay`` (with the memo's, within
        #: ``memo_budget``).
        self.replay_bytes = 0

    def remember(self, head: bytes, values: HeadValues) -> None:
        """``head``, one whole plain head, parsed to ``values`` and answered inline."""
        if len(head) > MAX_HEAD_BYTES:
            return
        if len(self.heads) >= MAX_HEADS:
            self._forget_heads()
        self.heads[head] = Head(values)

    def _forget_heads(self) -> None:
        self.heads.clear()
        self.replay_bytes = 0

    def answer_head(self, conn: Writer, raw: bytes) -> bool:
        """Answer a head remembered by its exact bytes (``remember``), as when it was parsed."""
        head = self.heads.get(raw)
        if head is None:
            return False
        started = time.perf_counter()
        if self.replay(conn, head, started):
            return True
        method, target, host, credentials, inm, accept_encoding = head.values
        return self.answer(
            conn, method, target, host, credentials, inm, accept_encoding, True, "1.1", started,
            None, head,
        )  # fmt: skip

    def replay(self, conn: Writer, head: Head, started: float) -> bool:
        """Write ``head``'s last answer again if the full path would write the same bytes:
        the store holds the same record (which also counts as its use for the LRU), the entry
        is fresh and ``Age`` and the ttl read the same. Else ``answer`` decides anew."""
        prepared = head.prepared
        if prepared is None:
            return False
        now = self.clock()
        if now >= prepared.fresh_until:
            return False
        resident = now - prepared.response_time
        age = prepared.initial_age + (resident if resident > 0.0 else 0.0)
        if (int(age), int(prepared.lifetime - age)) != head.tail_key:
            return False
        record, kept = self.store.get_nowait(head.values[1]), head.record
        if record is not kept and (record is None or len(record) != 1 or record[0] is not kept[0]):
            return False
        conn.write_response(head.answer, b"")
        if head.not_modified:
            self.metrics.not_modified.inc()
        elapsed = self._counted(prepared, started, head.size)
        if self.access is not None:
            self.access.record_line(head.log_prefix, elapsed, head.size)
        return True

    def _counted(self, prepared: Prepared, started: float, size: int) -> float:
        """A hit's metrics but the 304 count, ``size`` body bytes written; its duration."""
        if size:
            self.response_bytes.value += size
            self.bytes_saved.value += size
        elapsed = time.perf_counter() - started
        prepared.requests.value += 1
        prepared.durations.observe(elapsed)
        return elapsed

    def _keep(
        self, head: Head, prepared: Prepared, record: Record, answer: bytes, status: int,
        size: int,
    ) -> None:  # fmt: skip
        """Remember on ``head`` the answer just written, to ``replay`` it."""
        if len(answer) > MAX_REPLAY_BYTES:
            return
        if self.memo_bytes + self.replay_bytes + len(answer) > self.memo_budget:
            self._forget_heads()  # ``head`` is then no longer one of them: nothing to keep
            return
        self.replay_bytes += len(answer) - len(head.answer)
        head.prepared, head.record, head.tail_key = prepared, record, prepared.tail_key
        head.answer, head.status, head.size = answer, status, size
        head.not_modified = status == 304
        if self.access is not None:
            head.log_prefix = self.access.prefix(head.values[0], prepared.path, status, "hit")

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
        head: Head | None = None,
    ) -> bool:
        """A plain GET or HEAD from its parsed values; without ``parsed`` (the connection has
        not built one) a hit that is not memoised yet is declined, since preparing it needs the
        request's fields. With ``head`` (answered by its remembered bytes) the answer is kept
        on it, written in one piece, to ``replay``."""
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
        resident = now - prepared.response_time
        age = prepared.initial_age + (resident if resident > 0.0 else 0.0)
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
            answer = b"".join((prepared.not_modified_head(held), tail, connection, CRLF))
            conn.write_response(answer, b"")
            status, size = 304, 0
        else:
            body = prepared.bodies[index]
            if body is None:
                try:
                    body = self.decoded.identity(entry)
                except CodingError:
                    return False  # the full path asks the origin
            answer = b"".join((prepared.heads[index] or prepared.head(index, len(body)), tail,
                               connection, CRLF))  # fmt: skip
            status = entry.status
            if method == "HEAD":
                conn.write_response(answer, b"")
                size = 0
            else:
                size = len(body)
                if head is not None and size <= MAX_REPLAY_BYTES:
                    answer += body  # one piece, as it is replayed
                    conn.write_response(answer, b"")
                else:
                    conn.write_response(answer, body)
                    head = None  # ``answer`` is not all of it: nothing to replay
        elapsed = self._counted(prepared, started, size)
        if self.access is not None:
            self.access.record(method, prepared.path, status, "hit", elapsed, size)
        if head is not None:
            self._keep(head, prepared, record, answer, status, size)
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
