"""The body bytes of the representation being sent from a stored response (RFC 9110 §8.4).

A stored response keeps one body, in one coding (``proxy.core.coding.stored_form``). A client
that accepts that coding (or another stored one) gets the stored bytes as they are; a client
that accepts none gets identity, decoded from the stored body on the way out, as Varnish gunzips
for such clients. Decoded bodies are kept in a small LRU memo bounded by bytes, carved out of
``--cache-max-bytes`` by the runtime, so a burst of identity clients on one response decodes it
once. ``Bodies.body`` is the one place the serve paths (``proxy.cache.serve`` and the front's
prepared hits) get the bytes they send; whatever slices them (byte ranges) starts there.
"""

from __future__ import annotations

from collections import OrderedDict

from proxy.core.coding import CodingError, Representation, decode
from proxy.core.models import StoredResponse

#: Memory per memoised body beyond its bytes: the memo's key, its slot and the bytes header.
MEMO_OVERHEAD = 200
#: Share of the memo one decoded body may take; larger ones are decoded for each request.
LARGEST_SHARE = 4


class Bodies:
    """Bytes to send per representation; decoded identity bodies memoised within ``budget``."""

    def __init__(self, budget: int, decode_limit: int) -> None:
        self.budget = budget
        self.decode_limit = decode_limit
        # Keyed by the stored body object's id; the slot holds that object, so the id cannot be
        # reused while the memo remembers it (and a replaced entry's old body is simply missed).
        self._decoded: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()
        self._bytes = 0
        self.decodes = 0

    @property
    def memo_bytes(self) -> int:
        """Bytes accounted to the memo (within ``budget``)."""
        return self._bytes

    @property
    def entries(self) -> int:
        return len(self._decoded)

    def body(self, entry: StoredResponse, rep: Representation) -> bytes:
        """The body of ``rep``, one of ``entry.representations``, as sent.

        Raises ``CodingError`` when the stored body does not decode within the limit (a record
        written by another replica with another configuration): the caller asks the origin.
        """
        if rep.body is not None:
            return rep.body
        return self.identity(entry)

    def identity(self, entry: StoredResponse) -> bytes:
        """The identity body of a response stored coded: from the memo, or decoded now."""
        stored = entry.body
        slot = self._decoded.get(id(stored))
        if slot is not None and slot[0] is stored:
            self._decoded.move_to_end(id(stored))
            return slot[1]
        coding = entry.coding
        if coding is None:
            raise CodingError("stored as sent: no identity representation")
        decoded = decode(coding, stored, self.decode_limit)
        self.decodes += 1
        self._remember(stored, decoded)
        return decoded

    def _remember(self, stored: bytes, decoded: bytes) -> None:
        cost = len(stored) + len(decoded) + MEMO_OVERHEAD
        if cost * LARGEST_SHARE > self.budget:
            return
        old = self._decoded.pop(id(stored), None)
        if old is not None:
            self._bytes -= len(old[0]) + len(old[1]) + MEMO_OVERHEAD
        self._decoded[id(stored)] = (stored, decoded)
        self._bytes += cost
        while self._bytes > self.budget:
            _, (gone, body) = self._decoded.popitem(last=False)
            self._bytes -= len(gone) + len(body) + MEMO_OVERHEAD

    def clear(self) -> None:
        self._decoded.clear()
        self._bytes = 0
