"""One frozen ``Settings``, built from command-line arguments and an environment mapping.

Every option ``--some-option`` can also be given as ``PROXY_SOME_OPTION``; the command line wins.
A bad value raises ``ConfigError`` with a one-line message that names the option.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from yarl import URL

from proxy.core.coding import (
    DEFAULT_COMPRESS_MIN_BYTES,
    DEFAULT_COMPRESS_TYPES,
    PREFERENCE,
    available_codings,
)
from proxy.ops.redis_url import is_multi_node, parse_redis_nodes


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


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


def _option(
    default: Any, parse: Callable[[str], Any], help: str, metavar: str = "", *, secret: bool = False
) -> Any:
    """A setting; a ``secret`` one stays out of the ``Settings`` repr (and so out of logs)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"parse": parse, "help": help, "metavar": metavar},
    )


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


@dataclass(frozen=True)
class Settings:
    """All configuration of one proxy process."""

    upstream: str = _option(
        "https://api.aitronos.com", parse_upstream, "origin to forward to", "URL"
    )
    host: str = _option("127.0.0.1", str, "address to listen on", "HOST")
    port: int = _option(8080, _bounded(int, 0, 65535), "port to listen on", "PORT")
    public_host: str = _option(
        "",
        parse_public_host,
        "the host[:port] clients use for the proxy (e.g. the load balancer's), sent upstream as "
        "X-Forwarded-Host (a constant: it splits no cache entry)",
        "HOST",
    )
    forward_host: bool = _option(
        False,
        parse_bool,
        "send the client's Host upstream as X-Forwarded-Host, for origins that build links from "
        "it; it then becomes part of the cache key (--public-host, when set, is sent instead)",
        "BOOL",
    )
    cache_scope: str = _option(
        "credential",
        _choice("credential", "shared"),
        "credential: callers only share entries with the same credentials; shared: everyone "
        "shares (single-tenant deployments only)",
        "SCOPE",
    )
    credential_headers: tuple[str, ...] = _option(
        ("authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"),
        parse_header_list,
        "request headers that identify a caller (comma-separated; the official aitronos client "
        "sends api-key)",
        "NAMES",
    )
    scope_secret: str = _option(
        "",
        str,
        "key for hashing credentials into cache keys (same on all replicas)",
        "SECRET",
        secret=True,
    )
    cache_max_bytes: int = _option(
        256 * 1024**2, _bounded(parse_size, 1024), "byte budget of the in-process cache", "SIZE"
    )
    max_entry_bytes: int = _option(
        8 * 1024**2, _bounded(parse_size, 0), "largest body the cache stores", "SIZE"
    )
    compress_types: tuple[str, ...] = _option(
        DEFAULT_COMPRESS_TYPES,
        parse_media_types,
        "media types the cache compresses when the origin sent them uncompressed (like nginx's "
        "gzip_types; text/* for any text, empty: none)",
        "TYPES",
    )
    compress_codings: tuple[str, ...] = _option(
        ("gzip",),
        parse_codings,
        "codings the cache prepares for each compressible stored response, best first (each "
        "costs memory: gzip, which every common client accepts, by default; br and zstd need "
        "the compression extra; empty: none)",
        "CODINGS",
    )
    compress_min_bytes: int = _option(
        DEFAULT_COMPRESS_MIN_BYTES,
        _bounded(parse_size, 0),
        "smallest body the cache compresses",
        "SIZE",
    )
    upstream_connect_timeout: float = _option(
        5.0, _bounded(float, 0.001), "seconds to connect to the upstream", "SECONDS"
    )
    upstream_timeout: float = _option(
        30.0, _bounded(float, 0.001), "seconds to wait for the upstream's answer", "SECONDS"
    )
    upstream_max_connections: int = _option(
        256, _bounded(int, 1), "connections kept to the upstream", "N"
    )
    upstream_pool_timeout: float = _option(
        60.0,
        _bounded(float, 0.001),
        "seconds a request may wait for one of the pooled upstream connections to become free "
        "(apart from --upstream-connect-timeout)",
        "SECONDS",
    )
    stale_grace: float = _option(
        300.0,
        _bounded(float, 0),
        "seconds past expiry a stored entry stands in for an upstream error",
        "SECONDS",
    )
    keep_stale: float = _option(
        3600.0,
        _bounded(float, 0),
        "seconds an expired entry with a validator is kept for conditional revalidation",
        "SECONDS",
    )
    heuristic_max: float = _option(
        3600.0, _bounded(float, 0), "cap on heuristic freshness (RFC 9111 §4.2.2)", "SECONDS"
    )
    drain_seconds: float = _option(
        25.0,
        _bounded(float, 0.001),
        "on SIGTERM, seconds in-flight requests get to finish before they are cut",
        "SECONDS",
    )
    workers: int = _option(
        1,
        parse_workers,
        "processes serving the port together (SO_REUSEPORT); auto: one per CPU. Without "
        "--redis-url they share a private redis-server, which must be on PATH",
        "N",
    )
    max_wait: float = _option(
        30.0,
        _bounded(float, 0),
        "longest a request with 'Prefer: wait=N' is held for a change (RFC 7240); 0 disables "
        "long polling",
        "SECONDS",
    )
    max_waiters: int | None = _option(
        None,
        parse_optional_limit,
        "held long-poll requests per replica; past it, requests are answered at once "
        "(default: the connection cap, --max-connections)",
        "N",
    )
    sse_heartbeat: float = _option(
        15.0,
        _bounded(float, 0.01),
        "seconds between heartbeat comments on an idle event stream (Accept: text/event-stream)",
        "SECONDS",
    )
    redis_url: str = _option(
        "",
        parse_redis_url,
        "Redis shared by all replicas as a second cache tier, for coalescing and invalidation "
        "(empty: in-process cache only)",
        "URL",
        secret=True,
    )
    redis_prefix: str = _option(
        "acp", parse_redis_prefix, "namespace of the proxy's keys and channels in Redis", "PREFIX"
    )
    redis_timeout_ms: float = _option(
        100.0,
        _bounded(float, 1),
        "milliseconds a Redis call may take before the proxy goes on without it",
        "MS",
    )
    redis_local_ttl: float = _option(
        1.0,
        _bounded(float, 0),
        "seconds a replica keeps its in-process copy of a shared entry before reading Redis again",
        "SECONDS",
    )
    redis_lock_ttl: float = _option(
        3.0,
        _bounded(float, 0.01),
        "seconds a replica that died while fetching keeps the others waiting (renewed while alive)",
        "SECONDS",
    )
    redis_max_connections: int = _option(
        64, _bounded(int, 1), "connections kept to Redis (besides the subscription)", "N"
    )
    max_request_line: int = _option(
        8 * 1024,
        _bounded(parse_size, 64, 1024**2),
        "longest request-target (path and query) accepted; longer is answered 414",
        "SIZE",
    )
    max_header_bytes: int = _option(
        32 * 1024,
        _bounded(parse_size, 256, 16 * 1024**2),
        "largest request header section accepted; larger is answered 431",
        "SIZE",
    )
    max_body_bytes: int = _option(
        64 * 1024**2,
        _bounded(parse_size, 0),
        "largest request body forwarded; larger is answered 413",
        "SIZE",
    )
    client_header_timeout: float = _option(
        30.0,
        _bounded(float, 0.01),
        "seconds a connection may take to send a request head, counted from its opening or its "
        "previous response (also the keep-alive idle limit)",
        "SECONDS",
    )
    client_body_timeout: float = _option(
        30.0,
        _bounded(float, 0.01),
        "seconds a client may pause while sending a request body; then 408",
        "SECONDS",
    )
    client_send_timeout: float = _option(
        60.0,
        _bounded(float, 0.01),
        "seconds a client may leave a response unread (between two writes, like nginx's "
        "send_timeout); then the connection is closed",
        "SECONDS",
    )
    max_connections: int | None = _option(
        None,
        parse_optional_count,
        "client connections served at once; past it the longest-waiting idle ones are closed "
        "and new ones refused (default: RLIMIT_NOFILE less a reserve for the upstream pool, "
        "Redis, the admin port and logs)",
        "N",
    )
    tls_cert: str = _option(
        "", str, "PEM certificate chain: serve HTTPS on --port (needs --tls-key)", "PATH"
    )
    tls_key: str = _option("", str, "PEM private key of --tls-cert", "PATH")
    front: str = _option(
        "own",
        parse_front,
        "client-facing HTTP/1.1 server: own (httptools, prepared responses), the only one",
        "FRONT",
    )
    admin_token: str = _option(
        "",
        str,
        "bearer token for PURGE and DELETE /_cache/...; empty disables purging (prefer the "
        "environment variable: arguments are visible to other local users)",
        "TOKEN",
        secret=True,
    )
    admin_host: str = _option(
        "127.0.0.1", str, "address of the admin listener (with --admin-port)", "HOST"
    )
    admin_port: int | None = _option(
        None,
        parse_optional_port,
        "serve /metrics and purging only on this port, not on the public one",
        "PORT",
    )
    access_log: bool = _option(True, parse_bool, "one JSON access-log line per request", "BOOL")
    event_loop: str = _option(
        "auto",
        _choice("auto", "asyncio", "uvloop"),
        "event loop to serve on; auto picks uvloop (the speedups extra) when it is installed",
        "LOOP",
    )
    log_level: str = _option(
        "info", _choice("debug", "info", "warning", "error"), "log level", "LEVEL"
    )

    @property
    def shared_scope(self) -> bool:
        return self.cache_scope == "shared"

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key: give both or neither")

    @property
    def host_keyed(self) -> bool:
        """The client's Host is forwarded as X-Forwarded-Host, so it must be part of the key.

        Only on request: the origin is a third-party API, and keying on the Host would keep
        replicas reached under other names from sharing.
        """
        return self.forward_host and not self.public_host


def env_backed_options(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], prefix: str
) -> Callable[[str, Callable[[str], Any], Any, str], None]:
    """``option(flag, type, default, help)`` adding flags whose default comes from ``PREFIX_FLAG``.

    For the ``demo`` and ``simulate`` commands, whose options are not proxy ``Settings``.
    """

    def option(flag: str, kind: Callable[[str], Any], default: Any, text: str) -> None:
        name = prefix + flag.lstrip("-").replace("-", "_").upper()
        parser.add_argument(
            flag, type=kind, default=environ.get(name, default), help=f"{text} (${name})"
        )

    return option


def env_name(name: str) -> str:
    return "PROXY_" + name.upper()


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for spec in fields(Settings):
        default = spec.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            option_name(spec.name),
            dest=spec.name,
            metavar=spec.metadata["metavar"] or None,
            default=None,
            help=f"{spec.metadata['help']} (env {env_name(spec.name)}, default {shown})",
        )


def build_settings(values: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Settings from parsed argument strings (``None`` when absent) and the environment."""
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in fields(Settings):
        raw = values.get(spec.name)
        source = option_name(spec.name)
        if raw is None:
            raw = environ.get(env_name(spec.name))
            source = env_name(spec.name)
        if raw is None:
            continue
        try:
            chosen[spec.name] = spec.metadata["parse"](raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        sources[spec.name] = source
    settings = Settings(**chosen)
    if not settings.shared_scope and not settings.credential_headers:
        # Every caller would fall into one scope and receive every other caller's entries.
        raise ConfigError(
            f"{sources.get('credential_headers', '--credential-headers')}: empty under "
            "--cache-scope credential, so every caller would share every entry; name the "
            "headers that identify a caller, or choose --cache-scope shared deliberately"
        )
    return settings


class _Parser(argparse.ArgumentParser):
    """Turns argparse's usage-and-exit into a ``ConfigError``, so every bad option is one line."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    parser = _Parser(prog="aitronos-cache-proxy")
    add_arguments(parser)
    namespace = parser.parse_args(list(argv))
    return build_settings(vars(namespace), environ)
