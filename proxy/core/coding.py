"""Content codings (RFC 9110 §8.4, §12.5.3): negotiation, representations, transforms.

Pure code: no I/O, no clock. Negotiation turns every spelling of ``Accept-Encoding`` into the one
coding this cache would serve, so ``gzip``, ``gzip, deflate`` and ``GZIP,DEFLATE`` are the same
preference. A stored response is kept once; the other codings are representations derived from it
once (when stored), each with its own body and validator (§8.8.3), never recomputed per hit.
gzip is the standard library's; brotli and zstandard are optional packages (``[compression]``),
used only when installed. Hand-written: the ``Accept-Encoding`` grammar (no library parses it
with q-values and ``*`` the way §12.5.3 asks).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType

from proxy.core.headers import parse_entity_tag, split_list

IDENTITY = "identity"
#: Compressing codings in the order this cache prefers them when a client accepts several equally.
PREFERENCE = ("zstd", "br", "gzip")
#: nginx's ``gzip_types`` idea: media types worth compressing (``text/*`` matches any text type).
DEFAULT_COMPRESS_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/problem+json",
    "image/svg+xml",
)
DEFAULT_COMPRESS_MIN_BYTES = 1024
#: The weight of an identity the client did not name: acceptable, below any named coding.
IMPLICIT_IDENTITY = 0.0001
#: Longer ``Accept-Encoding`` values are negotiated without being cached.
_CACHED_FIELD_LENGTH = 256
#: ``x-gzip`` is gzip (RFC 9110 §8.4.1.3).
_ALIASES = {"x-gzip": "gzip"}


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_brotli = _optional("brotli")
_zstd = _optional("zstandard")


def available_codings() -> tuple[str, ...]:
    """The compressing codings this process can produce and read, best first."""
    present = {"gzip": True, "br": _brotli is not None, "zstd": _zstd is not None}
    return tuple(coding for coding in PREFERENCE if present[coding])


# -- Accept-Encoding ------------------------------------------------------------------------------


def parse_accept_encoding(value: str) -> tuple[tuple[str, float], ...]:
    """§12.5.3: ``(coding, q)`` pairs, lower-cased, bad members dropped (q outside 0..1, junk)."""
    pairs = []
    for member in split_list([value]):
        coding, _, params = member.partition(";")
        coding = _ALIASES.get(coding.strip().lower(), coding.strip().lower())
        if not coding:
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, raw = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(raw.strip())
                except ValueError:
                    weight = -1.0
        if 0.0 <= weight <= 1.0:
            pairs.append((coding, weight))
    return tuple(pairs)


def acceptable_weight(pairs: tuple[tuple[str, float], ...], coding: str) -> float:
    """The q a client gives ``coding``: named, else ``*``, else 1 for identity and 0 otherwise."""
    star = None
    for name, weight in pairs:
        if name == coding:
            return weight
        if name == "*":
            star = weight
    if star is not None:
        return star
    # Unnamed identity is acceptable but ranks below any coding the client named (§12.5.3).
    return IMPLICIT_IDENTITY if coding == IDENTITY else 0.0


def negotiate(accept_encoding: str | None, offered: tuple[str, ...]) -> str | None:
    """The best of the ``offered`` codings the client accepts (§12.5.3), or None.

    A missing field means any coding is acceptable (we still prefer identity then, as the
    client gave no sign of decoding anything); ties go to the order of ``offered``.
    """
    if accept_encoding is None:
        return IDENTITY if IDENTITY in offered else (offered[0] if offered else None)
    pairs = parse_accept_encoding(accept_encoding)
    best, best_weight = None, 0.0
    for coding in offered:
        weight = acceptable_weight(pairs, coding)
        if weight > best_weight:
            best, best_weight = coding, weight
    return best


def normalise_accept_encoding(values: Iterable[str]) -> str:
    """The one coding this cache would serve for a client's ``Accept-Encoding`` field lines.

    Used as the request's value for ``Vary: Accept-Encoding`` (§4.1 lets a cache normalise),
    so every spelling of the same preference selects the same stored variant.
    """
    joined = ", ".join(values) if values else None
    return negotiate(joined, (*available_codings(), IDENTITY)) or "none"


def upstream_accept_encoding() -> str:
    """What the cache asks the origin for: every coding it can read, so it stores fewer bytes."""
    return ", ".join(available_codings())


# -- transforms -----------------------------------------------------------------------------------


class CodingError(ValueError):
    """A body that does not decode in its declared coding, or decodes past the size limit."""


@functools.cache
def _zstd_compressor() -> object:
    """One compression context, reused, rather than one of over a megabyte per body."""
    assert _zstd is not None
    return _zstd.ZstdCompressor(level=3, write_content_size=True)


def encode(coding: str, body: bytes) -> bytes:
    """Compress ``body`` in ``coding``; levels chosen for cheap, once-per-response work.

    The result is copied into a bytes object of its own size: compressors allocate for the
    worst case and shrink, which leaves holes between long-lived bodies (measured: 10,000
    stored responses took twice the RSS of their bytes without the copy).
    """
    if coding == "gzip":
        compressed: bytes = gzip.compress(body, compresslevel=6, mtime=0)
    elif coding == "br" and _brotli is not None:
        compressed = _brotli.compress(body, quality=5)
    elif coding == "zstd" and _zstd is not None:
        compressed = _zstd_compressor().compress(body)  # type: ignore[attr-defined]
    else:
        raise CodingError(f"cannot encode {coding}")
    return bytes(memoryview(compressed))


def decode(coding: str, body: bytes, limit: int) -> bytes:
    """Decompress ``body``; at most ``limit`` bytes out, so a bomb cannot exhaust memory."""
    try:
        if coding == "gzip":
            decoder = zlib.decompressobj(wbits=31)
            out = decoder.decompress(body, limit + 1)
            if not decoder.eof or decoder.unconsumed_tail:
                raise CodingError("gzip body truncated or larger than the limit")
        elif coding == "br" and _brotli is not None:
            br = _brotli.Decompressor()
            out = br.process(body, output_buffer_limit=limit + 1)
            if not br.is_finished():
                raise CodingError("brotli body truncated or larger than the limit")
        elif coding == "zstd" and _zstd is not None:
            with _zstd.ZstdDecompressor().stream_reader(body) as reader:
                out = reader.read(limit + 1)
        else:
            raise CodingError(f"cannot decode {coding}")
    except CodingError:
        raise
    except Exception as error:  # zlib.error, brotli.error, zstd.ZstdError: all "not that coding"
        raise CodingError(f"invalid {coding} body") from error
    if len(out) > limit:
        raise CodingError("decoded body larger than the limit")
    return bytes(out)


# -- representations ------------------------------------------------------------------------------


def coded_etag(etag: str | None, coding: str) -> str | None:
    """§8.8.3: a derived representation's own validator: the origin's tag, weak, coding-suffixed.

    Weak because our compressor's bytes are not promised identical across versions and replicas;
    suffixed so that even weak comparison never confuses it with the origin's representation.
    """
    tag = parse_entity_tag(etag)
    if tag is None:
        return None
    opaque = tag[2:] if tag.startswith("W/") else tag
    return f'W/"{opaque[1:-1]}-{coding}"'


@dataclass(frozen=True, slots=True)
class Representation:
    """One content coding of a stored response: its bytes and its validator.

    ``derived`` is False for the body as the origin sent it, True for one this cache computed.
    """

    coding: str
    body: bytes
    etag: str | None
    derived: bool


@dataclass(frozen=True, slots=True)
class CodingPolicy:
    """The operator's choices: what to compress, from what size, within which size limit."""

    compress_types: tuple[str, ...] = DEFAULT_COMPRESS_TYPES
    min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES
    max_bytes: int = 8 * 1024 * 1024
    codings: tuple[str, ...] = field(default_factory=available_codings)

    def offered(self) -> tuple[str, ...]:
        return self.codings


def compressible_type(content_type: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether a media type matches one of nginx-style ``gzip_types`` patterns (``*`` = any)."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    for pattern in patterns:
        if pattern == "*" or pattern == media:
            return True
        if pattern.endswith("/*") and media.startswith(pattern[:-1]):
            return True
    return False


def content_coding(content_encoding: Iterable[str]) -> str | None:
    """The single coding a body is in (``identity`` when none), None for stacked or unknown ones."""
    codings = [
        _ALIASES.get(item.lower(), item.lower())
        for item in split_list(list(content_encoding))
        if item.lower() != IDENTITY
    ]
    if not codings:
        return IDENTITY
    if len(codings) == 1 and codings[0] in PREFERENCE:
        return codings[0]
    return None


def representations(
    *,
    body: bytes,
    etag: str | None,
    content_type: str | None,
    content_encoding: Iterable[str],
    no_transform: bool,
    policy: CodingPolicy,
) -> tuple[Representation, ...]:
    """Every representation of a stored response this cache serves, the origin's first.

    No transform at all under ``no-transform`` (RFC 9110 §7.7) or for an unknown or stacked
    coding; a coded body is decoded for clients that accept none; an identity body of a
    compressible type and size is compressed once per offered coding.
    """
    coding = content_coding(content_encoding)
    original = Representation(coding or "unknown", body, etag, derived=False)
    if no_transform or coding is None or not body:
        return (original,)
    result = [original]
    identity = body
    if coding != IDENTITY:
        try:
            identity = decode(coding, body, policy.max_bytes)
        except CodingError:
            return (original,)
        result.append(Representation(IDENTITY, identity, coded_etag(etag, IDENTITY), True))
    if len(identity) < policy.min_bytes or not compressible_type(
        content_type, policy.compress_types
    ):
        return tuple(result)
    for wanted in policy.offered():
        if wanted == coding:
            continue
        try:
            encoded = encode(wanted, identity)
        except CodingError:
            continue
        if len(encoded) < len(identity):
            result.append(Representation(wanted, encoded, coded_etag(etag, wanted), True))
    return tuple(result)


def choose(codings: tuple[str, ...], accept_encoding: str | None) -> int | None:
    """Which of a stored response's representations (by their ``codings``) to serve (§12.5.3).

    None when the client accepts none of them; identity when it rules out everything
    (§12.5.3 allows ignoring the field), unless only a coded body is there: that one the client
    could not read. Cached: a fleet has a handful of spellings and stored responses a handful
    of coding sets, so a hit costs one dictionary lookup here (short fields only, so hostile
    clients cannot fill memory with long ones).
    """
    if accept_encoding is not None and len(accept_encoding) > _CACHED_FIELD_LENGTH:
        return _choose(codings, accept_encoding)
    return _cached_choose(codings, accept_encoding)


def _choose(codings: tuple[str, ...], accept_encoding: str | None) -> int | None:
    if codings == (IDENTITY,):
        return 0
    chosen = negotiate(accept_encoding, _ordered(frozenset(codings)))
    if chosen is None:
        return codings.index(IDENTITY) if IDENTITY in codings else None
    return codings.index(chosen)


_cached_choose = functools.lru_cache(maxsize=1024)(_choose)


@functools.lru_cache(maxsize=256)
def _ordered(codings: frozenset[str]) -> tuple[str, ...]:
    order = {name: index for index, name in enumerate((*PREFERENCE, IDENTITY))}
    return tuple(sorted(codings, key=lambda name: order.get(name, len(order))))


Fields = tuple[tuple[str, str], ...]


def could_hold(coding: str, accept_encoding: str | None) -> bool:
    """Could a client have received a representation in ``coding``, and read it (§12.5.3)?

    Identity always; another coding only if the client's ``Accept-Encoding`` names it (or
    ``*``) with a non-zero weight. A client sending no ``Accept-Encoding`` is served identity
    here, so it holds no coded representation of ours.
    """
    if coding == IDENTITY:
        return True
    if accept_encoding is None:
        return False
    return acceptable_weight(parse_accept_encoding(accept_encoding), coding) > 0


def accepts(content_encoding: Iterable[str], accept_encoding: str | None) -> bool:
    """Whether a client accepts a body in this ``Content-Encoding`` (identity always, §12.5.3)."""
    token = ", ".join(value.strip().lower() for value in content_encoding if value.strip())
    if token in ("", IDENTITY):
        return True
    token = _ALIASES.get(token, token)
    return negotiate(accept_encoding, (token,)) is not None


def readable(
    headers: Fields, body: bytes, accept_encoding: str | None, limit: int
) -> tuple[Fields, bytes]:
    """An unstored answer (asked for in the cache's codings) as this client can read it.

    Decoded when the client does not accept its coding and it decodes within ``limit``;
    otherwise as it is (an error body the client may still show; no-transform is not decoded).
    """
    values = [value for name, value in headers if name.lower() == "content-encoding"]
    if accepts(values, accept_encoding):
        return headers, body
    no_transform = any(
        name.lower() == "cache-control" and "no-transform" in value.lower()
        for name, value in headers
    )
    coding = content_coding(values)
    if no_transform or coding is None or coding == IDENTITY:
        return headers, body
    try:
        decoded = decode(coding, body, limit)
    except CodingError:
        return headers, body
    dropped = ("content-encoding", "etag", "content-length")
    return tuple((k, v) for k, v in headers if k.lower() not in dropped), decoded
