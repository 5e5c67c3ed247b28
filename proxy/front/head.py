"""A request head as parsed and the pure rules over it (RFC 9112, RFC 9110): what the parser
lets through but the proxy must refuse before anything is forwarded, and which fields take a
request off the fast path. No I/O here: the connection collects the facts while parsing and
asks once per head.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from proxy.cache.exchange import RequestRejected
from proxy.core.credentials import SINGLETON_CREDENTIALS
from proxy.front.body import BodyStream, too_large

#: Request fields after which only the full RFC 9111 policy may answer (not the fast path).
UNUSUAL = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"prefer",  # Prefer: wait holds the request (proxy.cache.longpoll)
    }
)
#: What the proxy forwards; ``CONNECT`` is answered 405 with this list (RFC 9110 §15.5.6).
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

#: Field lines a head may have; one more is answered 431.
MAX_HEADER_FIELDS = 128

HOST, CREDENTIAL, INM, ACCEPT_ENCODING, LENGTH, CODING, EXPECT, OTHER, ACCEPT = range(9)
SINGLETONS = frozenset(name.encode() for name in SINGLETON_CREDENTIALS)


#: The usual methods' names as text, to spare a decode per request.
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


@dataclass(slots=True)
class Parsed:
    """A request head as parsed, with its body stream (``None`` when it has no body)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    version: str
    keep_alive: bool
    body: BodyStream | None
    rejected: RequestRejected | None
    plain: bool
    started: float
    host: str = ""
    credentials: tuple[tuple[bytes, str], ...] = ()
    if_none_match: str | None = None
    accept_encoding: str | None = None

    @property
    def http10(self) -> bool:
        return self.version == "1.0"


def refused(rejected: RequestRejected) -> Parsed:
    """The stand-in for a request refused before its head was whole."""
    return Parsed("GET", "/", [], "1.1", False, None, rejected, False, time.perf_counter())


@functools.lru_cache(maxsize=16)
def field_kinds(credential_names: frozenset[bytes]) -> dict[bytes, int]:
    """What a lower-cased request field name means to the parser callbacks, in one lookup
    (a framing or precondition field first, as it takes the request off the fast path).
    The singleton credential fields are always collected, so a second line is always seen."""
    kinds = {b"accept-encoding": ACCEPT_ENCODING, b"if-none-match": INM, b"accept": ACCEPT}
    kinds.update(dict.fromkeys(credential_names | SINGLETONS, CREDENTIAL))
    kinds[b"host"] = HOST
    kinds.update(dict.fromkeys(UNUSUAL, OTHER))
    kinds.update({b"content-length": LENGTH, b"transfer-encoding": CODING, b"expect": EXPECT})
    return kinds


@dataclass(slots=True)
class HeadFacts:
    """What the parser callbacks noted of one request head, for ``refusal``."""

    hosts: list[str] = field(default_factory=list)
    codings: list[str] = field(default_factory=list)
    length: str | None = None
    #: ``Expect`` members other than ``100-continue`` (RFC 9110 §10.1.1).
    expectations: list[str] = field(default_factory=list)
    #: A singleton credential field sent on a second line (RFC 9110 §11.6.2, §11.7.2).
    repeated_credential: bool = False
    #: An ``Expect`` field was sent: the front answers ``100 Continue`` itself on the body's
    #: first read (``BodyStream``); ``Expect`` is not forwarded.
    expects: bool = False


def asks_event_stream(accept: bytes) -> bool:
    """An ``Accept`` that may ask for server-sent events takes its request off the fast path
    (``proxy.core.events.wants_event_stream`` decides; this only rules out the rest)."""
    return b"event-stream" in accept.lower()


def has_body(facts: HeadFacts | None) -> bool:
    """Whether a head announces content (RFC 9112 §6.3): chunked, or a non-zero length."""
    return facts is not None and bool(facts.codings or (facts.length or "0") != "0")


def plain_head(plain: bool, version: str, hosts: list[str], target: str) -> bool:
    """Whether a head ``refusal`` would pass whatever its method but ``CONNECT``, without asking
    it: no framing or odd fields (``plain``), HTTP/1.1, one Host, an origin-form target.
    (The connection spells this test out inline on the hit path; tests hold the two together.)"""
    return plain and version == "1.1" and len(hosts) == 1 and target[:1] == "/"


def refusal(
    facts: HeadFacts, method: bytes, version: str, target: str, max_body_bytes: int
) -> RequestRejected | None:
    """What the parser lets through but the proxy must not forward (RFC 9112, RFC 9110)."""
    if version not in ("1.1", "1.0"):
        return RequestRejected(505, "HTTP_VERSION_NOT_SUPPORTED", "Only HTTP/1.0 and 1.1.")
    if not target.startswith("/"):
        # Absolute-, authority- and asterisk-form targets would be glued onto the upstream
        # URL; a reverse proxy only serves origin-form (§3.2.1).
        return RequestRejected(400, "BAD_REQUEST", "The request-target must start with '/'.")
    if method == b"CONNECT":
        # A reverse proxy opens no tunnels (RFC 9110 §9.3.6); nothing reaches the origin.
        return connect_refused()
    if len(facts.hosts) > 1 or (version == "1.1" and not facts.hosts):
        return RequestRejected(400, "BAD_REQUEST", "Exactly one Host field is required.")
    if facts.repeated_credential:
        # The origin might read either line; the cache scope could not match what it used.
        return RequestRejected(
            400, "BAD_REQUEST", "Authorization and Proxy-Authorization take one field line."
        )
    codings = facts.codings
    if codings:
        if version == "1.0":
            # §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            return RequestRejected(
                400, "BAD_REQUEST", "Transfer-Encoding is not allowed in HTTP/1.0."
            )
        if codings[-1] != "chunked":
            return RequestRejected(400, "BAD_REQUEST", "The body framing is not chunked.")
        if len(codings) > 1:
            # §6.1: a transfer coding the server does not implement is answered 501.
            return RequestRejected(
                501, "NOT_IMPLEMENTED", "Only the chunked transfer coding is supported."
            )
    if facts.expectations:
        return RequestRejected(417, "EXPECTATION_FAILED", "Only 100-continue is supported.")
    if facts.length is not None and int(facts.length) > max_body_bytes:
        return too_large()
    return None


def unfinished_head(data: bytes, continued: bool, counted: int) -> int:
    """The bytes of a request head not whole after a read of ``data``, as the parser may hold
    them (a field without its line end is kept there until it ends). ``continued``: the head
    began in an earlier read, ``counted`` of it then. Else it began after the last blank line of
    this read (an over-count only if a Content-Length body came just before it)."""
    if continued:
        return counted + len(data)
    end = data.rfind(b"\r\n\r\n")
    return len(data) - (end + 4 if end >= 0 else 0)


def unfinished_refusal(
    target: bytes, has_fields: bool, size: int, max_request_line: int, max_header_bytes: int
) -> RequestRejected | None:
    """A head still unfinished past what a whole one may take: 414 while the request line is
    under way, else 431 (RFC 9110 §15.5.15, RFC 6585 §5)."""
    if size <= max_request_line + max_header_bytes:
        return None
    return headers_too_large() if has_fields or not target else uri_too_long()


def http09(target: bytes, has_fields: bool, data: bytes) -> bool:
    """A request line without a version (HTTP/0.9): llhttp would wait for more, the proxy
    answers 400 at once."""
    return bool(target) and not has_fields and target + b"\r\n" in data


def fields_too_large(size: int, count: int, max_header_bytes: int) -> bool:
    """The head's fields past ``--max-header-bytes`` or ``MAX_HEADER_FIELDS`` lines (431).
    (Checked inline per field on the hit path; tests hold the two together.)"""
    return size > max_header_bytes or count > MAX_HEADER_FIELDS


def expectations(value: str) -> list[str]:
    """The members of an ``Expect`` line other than ``100-continue`` (RFC 9110 §10.1.1)."""
    members = (member.strip().lower() for member in value.split(","))
    return [member for member in members if member and member != "100-continue"]


def connect_refused() -> RequestRejected:
    return RequestRejected(
        405, "METHOD_NOT_ALLOWED", "CONNECT is not served.", headers=(("Allow", ALLOW),)
    )


def uri_too_long() -> RequestRejected:
    return RequestRejected(414, "URI_TOO_LONG", "The request-target is too long.")


def headers_too_large() -> RequestRejected:
    return RequestRejected(431, "HEADERS_TOO_LARGE", "The request header fields are too large.")
