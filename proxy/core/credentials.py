"""The credential scope: which callers may be served one stored response (RFC 9111 §3.5).

One rule, so that what decides and what acts see the same request: the scope is computed from
exactly the credential bytes that are forwarded, every line of every credential field, in the
order they arrived. An empty line is not the same as no line (an origin may tell them apart),
and a later line counts as much as the first (an origin may read the last line, or join them).
``Authorization`` and ``Proxy-Authorization`` are singletons (RFC 9110 §11.6.2, §11.7.2: one
credentials value, no list syntax), so a request carrying either on two lines is refused before
anything is forwarded (``repeated_singleton``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

#: Credential fields defined with a single value (RFC 9110 §11.6.2, §11.7.2).
SINGLETON_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})


def repeated_singleton(names: Iterable[str]) -> str | None:
    """The singleton credential field named on more than one line, if any (names as received)."""
    seen: set[str] = set()
    for name in names:
        lowered = name.lower()
        if lowered in SINGLETON_CREDENTIALS:
            if lowered in seen:
                return lowered
            seen.add(lowered)
    return None


def credential_lines(
    headers: Mapping[str, str], names: Sequence[str]
) -> tuple[tuple[str, ...], ...]:
    """Every line of each credential field ``names`` lists, in the order they arrived.

    ``headers`` is the request's multidict (the one the forwarded fields are made from); a
    plain mapping has one line per name.
    """
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return tuple(tuple(getall(name, ())) for name in names)
    lines = []
    for name in names:
        value = headers.get(name)
        lines.append(() if value is None else (value,))
    return tuple(lines)


def credential_scope(
    lines: Iterable[Sequence[str] | str | None], *, shared: bool, secret: bytes = b""
) -> str:
    """The credential scope of a request: a keyed hash of every line of its credential fields.

    ``lines`` holds, for each configured credential field in the configured order, the field's
    lines as forwarded (a single ``str`` is one line, ``None`` none). Stored responses are only
    reused within their scope, so one caller never receives another caller's response;
    ``shared`` turns that off for single-tenant deployments. The hash is stable across replicas
    (they share entries) and never the credential itself. ``anonymous`` means no credential
    line at all.
    """
    if shared:
        return ""
    fields = [
        () if field is None else (field,) if isinstance(field, str) else tuple(field)
        for field in lines
    ]
    if not any(fields):
        return "anonymous"
    if all(len(field) <= 1 and all(field) for field in fields):
        # One non-empty line per field (the usual request): the material of earlier releases,
        # so entries shared through Redis keep their scope across an upgrade.
        material = "".join(f"{len(v)}:{v}" for v in (field[0] if field else "" for field in fields))
    else:
        # Several lines or an empty one: a count of lines per field, each line length-prefixed.
        # It starts with "*", which the material above (a digit first) never does.
        material = "*" + "".join(
            f"{len(field)}#" + "".join(f"{len(v)}:{v}" for v in field) for field in fields
        )
    digest = hashlib.blake2b(
        material.encode("utf-8", "surrogateescape"), digest_size=16, key=secret
    )
    return digest.hexdigest()
