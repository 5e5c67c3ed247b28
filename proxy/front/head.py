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

HOST, CREDENTIAL, INM, ACCEPT_ENCODING, LENGTH, CODING, EXPECT, OTHER = range(8)
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
    kinds = {b"accept-encoding": ACCEPT_ENCODING, b"if-none-match": INM}
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
