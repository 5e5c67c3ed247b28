"""The value parsers of ``proxy.ops.config``'s options: sizes, booleans, lists, URLs, bounds.

Each takes the option's text and returns its value or raises ``ValueError`` with a message that
``proxy.ops.config`` prefixes with the option's name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from yarl import URL

from proxy.core.coding import PREFERENCE, available_codings
from proxy.ops.redis_url import is_multi_node, parse_redis_nodes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip


def parse_size(text: str) -> int:
    """``"256MiB"``, ``"10MB"``, ``"4096"`` as a number of bytes."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 4096, 64KiB or 256MiB, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_upstream(text: str) -> str:
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    if url.query_string or url.fragment:
        raise ValueError("the upstream URL must not have a query or fragment")
    return str(url).rstrip("/")


def parse_header_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    for name in names:
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", name):
            raise ValueError(f"{name!r} is not a header name")
    return names


def parse_media_types(text: str) -> tuple[str, ...]:
    """``text/*, application/json``: media types or ``type/*`` patterns, ``*`` for all."""
    types = tuple(item.strip().lower() for item in text.split(",") if item.strip())
    for item in types:
        if item != "*" and not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/(\*|[a-z0-9!#$&^_.+-]+)", item):
            raise ValueError(f"{item!r} is not a media type")
    return types


def parse_codings(text: str) -> tuple[str, ...]:
    """``zstd,br,gzip``: content codings this install can produce, in the cache's order."""
    wanted = {item.strip().lower() for item in text.split(",") if item.strip()}
    unknown = wanted - set(PREFERENCE)
    if unknown:
        raise ValueError(f"unknown coding {sorted(unknown)[0]!r}: expected {', '.join(PREFERENCE)}")
    missing = wanted - set(available_codings())
    if missing:
        extra = "pip install 'aitronos-cache-proxy[compression]'"
        raise ValueError(f"{sorted(missing)[0]} needs its package: {extra}")
    return tuple(coding for coding in PREFERENCE if coding in wanted)


def parse_public_host(text: str) -> str:
    """A host[:port] as clients name the proxy; empty means "whatever the client sends"."""
    text = text.strip()
    if text and not re.fullmatch(
        r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", text
    ):
        raise ValueError(f"expected a host or host:port, got {text!r}")
    return text


def _bounded(
    kind: Callable[[str], Any], low: float, high: float | None = None
) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as error:
            raise ValueError(
                str(error) if kind not in (int, float) else f"expected a number, got {text!r}"
            ) from None
        if value < low or (high is not None and value > high):
            upper = f" and {high:g}" if high is not None else ""
            raise ValueError(f"expected a value between {low:g}{upper}, got {text!r}")
        return value

    return convert


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return convert


def parse_front(text: str) -> str:
    """``--front``: kept so that ``own`` still starts; aiohttp's server left the product."""
    if text == "aiohttp":
        raise ValueError(
            "aiohttp's server was removed; the proxy serves on its own front only "
            "(drop the option, or say own)"
        )
    return _choice("own")(text)


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def parse_redis_url(text: str) -> str:
    """A URL redis-py accepts, or one naming sentinels or cluster nodes (``proxy.ops.redis_url``);
    the message never repeats the URL, which may hold a password.
    """
    if not text:
        return ""
    expected = (
        "expected redis://[[user]:password@]host[:port][/db], rediss://..., unix:///path, "
        "redis+sentinel://host[:port],.../service[/db] or redis+cluster://host[:port],..."
    )
    multi_node = is_multi_node(text)
    if not multi_node:
        try:
            url = URL(text)
        except ValueError:
            raise ValueError(expected) from None
        if url.scheme not in _REDIS_SCHEMES or not (url.host or url.path.strip("/")):
            raise ValueError(expected)
    try:
        from redis.asyncio.connection import parse_url
    except ImportError:
        raise ValueError(
            "redis-py is not installed: pip install 'aitronos-cache-proxy[redis]'"
        ) from None
    if multi_node:
        parse_redis_nodes(text)
        return text
    try:
        parse_url(text)
    except (ValueError, TypeError):
        raise ValueError("not a URL redis-py can use (check the port and the options)") from None
    return text


def parse_redis_prefix(text: str) -> str:
    if not _REDIS_PREFIX_RE.fullmatch(text):
        raise ValueError(f"expected 1 to 64 of A-Z a-z 0-9 _ . : -, got {text!r}")
    return text


def parse_optional_count(text: str) -> int | None:
    """A positive count, or empty for "work it out"."""
    if not text.strip():
        return None
    return int(_bounded(int, 1)(text))


def parse_optional_limit(text: str) -> int | None:
    """A count from 0, or empty for "work it out"."""
    if not text.strip():
        return None
    return int(_bounded(int, 0)(text))


#: Most worker processes ``--workers`` starts; more would only add context switches.
MAX_WORKERS = 256


def parse_workers(text: str) -> int:
    """A number of worker processes, or ``auto``: the CPUs this process may run on."""
    if text.strip().lower() == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected auto or a number between 1 and {MAX_WORKERS}, got {text!r}")
    return value


def parse_optional_port(text: str) -> int | None:
    if not text.strip():
        return None
    return int(_bounded(int, 0, 65535)(text))
