"""One frozen ``Settings``, built from command-line arguments and an environment mapping.

Every option ``--some-option`` can also be given as ``PROXY_SOME_OPTION``; the command line wins.
A bad value raises ``ConfigError`` with a one-line message that names the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from proxy.core.coding import (
    DEFAULT_COMPRESS_MIN_BYTES,
    DEFAULT_COMPRESS_TYPES,
)
from proxy.ops.values import (
    _bounded,
    _choice,
    parse_bool,
    parse_codings,
    parse_front,
    parse_header_list,
    parse_media_types,
    parse_optional_count,
    parse_optional_limit,
    parse_optional_port,
    parse_public_host,
    parse_redis_prefix,
    parse_redis_url,
    parse_size,
    parse_upstream,
    parse_workers,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Record = TypeVar("Record", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


def _option(
    default: Any, parse: Callable[[str], Any], help: str, metavar: str = "", *, secret: bool = False
) -> Any:
    """A setting; a ``secret`` one stays out of the ``Settings`` repr (and so out of logs)."""
    return field(
        default=default,
        repr=not secret,
        metadata={"parse": parse, "help": help, "metavar": metavar},
    )


def _seconds(default: float, help: str, *, least: float = 0) -> Any:
    """A duration in seconds, at least ``least``."""
    return _option(default, _bounded(float, least), help, "SECONDS")


def _size(default: int, help: str, *, least: int = 0, most: int | None = None) -> Any:
    """A byte size (``64k``, ``8m``...) between ``least`` and ``most``."""
    return _option(default, _bounded(parse_size, least, most), help, "SIZE")


def _count(default: int, help: str, *, least: int = 1, most: int | None = None) -> Any:
    """A whole number between ``least`` and ``most``."""
    return _option(default, _bounded(int, least, most), help, "N")


def _flag(default: bool, help: str) -> Any:
    """A yes/no option, which also gets a ``--no-...`` form."""
    return _option(default, parse_bool, help, "BOOL")


#: The most of ``--cache-max-bytes`` for decoded bodies (``Settings.decoded_bodies_bytes``).
DECODED_BODIES_MAX = 8 * 1024 * 1024


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
    forward_host: bool = _flag(
        False,
        "send the client's Host upstream as X-Forwarded-Host, for origins that build links from "
        "it; it then becomes part of the cache key (--public-host, when set, is sent instead)",
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
    cache_max_bytes: int = _size(256 * 1024**2, "byte budget of the in-process cache", least=1024)
    max_entry_bytes: int = _size(8 * 1024**2, "largest body the cache stores")
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
    compress_min_bytes: int = _size(
        DEFAULT_COMPRESS_MIN_BYTES, "smallest body the cache compresses"
    )
    upstream_connect_timeout: float = _seconds(
        5.0, "seconds to connect to the upstream", least=0.001
    )
    upstream_timeout: float = _seconds(
        30.0, "seconds to wait for the upstream's answer", least=0.001
    )
    upstream_max_connections: int = _count(256, "connections kept to the upstream")
    upstream_pool_timeout: float = _seconds(
        60.0,
        "seconds a request may wait for one of the pooled upstream connections to become free "
        "(apart from --upstream-connect-timeout)",
        least=0.001,
    )
    stale_grace: float = _seconds(
        300.0, "seconds past expiry a stored entry stands in for an upstream error"
    )
    keep_stale: float = _seconds(
        3600.0,
        "seconds an expired entry with a validator is kept for conditional revalidation",
        least=0,
    )
    revalidate_window: float = _seconds(
        1.0,
        "seconds within which the origin's answer for a stored response (its fetch or last "
        "revalidation) satisfies a request's Cache-Control: max-age=0 / no-cache, and a long "
        "poll asking that is held and answered from the proxy's own revalidations; 0: every "
        "such request revalidates upstream",
        least=0,
    )
    heuristic_max: float = _seconds(3600.0, "cap on heuristic freshness (RFC 9111 §4.2.2)")
    drain_seconds: float = _seconds(
        25.0,
        "on SIGTERM, seconds in-flight requests get to finish before they are cut",
        least=0.001,
    )
    workers: int = _option(
        1,
        parse_workers,
        "processes serving the port together (SO_REUSEPORT); auto: one per CPU. Without "
        "--redis-url they share a private redis-server, which must be on PATH",
        "N",
    )
    max_wait: float = _seconds(
        30.0,
        "longest a request with 'Prefer: wait=N' is held for a change (RFC 7240); 0 disables "
        "long polling",
        least=0,
    )
    max_waiters: int | None = _option(
        None,
        parse_optional_limit,
        "held long-poll requests per replica; past it, requests are answered at once "
        "(default: the connection cap, --max-connections)",
        "N",
    )
    sse_heartbeat: float = _seconds(
        15.0,
        "seconds between heartbeat comments on an idle event stream (Accept: text/event-stream)",
        least=0.01,
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
    redis_local_ttl: float = _seconds(
        1.0,
        "seconds a replica keeps its in-process copy of a shared entry before reading Redis again",
        least=0,
    )
    redis_lock_ttl: float = _seconds(
        3.0,
        "seconds a replica that died while fetching keeps the others waiting (renewed while alive)",
        least=0.01,
    )
    redis_max_connections: int = _count(64, "connections kept to Redis (besides the subscription)")
    max_request_line: int = _size(
        8 * 1024,
        "longest request-target (path and query) accepted; longer is answered 414",
        least=64,
        most=1024**2,
    )
    max_header_bytes: int = _size(
        32 * 1024,
        "largest request header section accepted; larger is answered 431",
        least=256,
        most=16 * 1024**2,
    )
    max_body_bytes: int = _size(
        64 * 1024**2, "largest request body forwarded; larger is answered 413"
    )
    client_header_timeout: float = _seconds(
        30.0,
        "seconds a connection may take to send a request head, counted from its opening or its "
        "previous response (also the keep-alive idle limit)",
        least=0.01,
    )
    client_body_timeout: float = _seconds(
        30.0, "seconds a client may pause while sending a request body; then 408", least=0.01
    )
    client_send_timeout: float = _seconds(
        60.0,
        "seconds a client may leave a response unread (between two writes, like nginx's "
        "send_timeout); then the connection is closed",
        least=0.01,
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
    http2: bool = _flag(
        True, "serve HTTP/2 besides HTTP/1.1: ALPN h2 with TLS, prior-knowledge h2c without"
    )
    http2_max_streams: int = _count(
        100,
        "streams an HTTP/2 connection may have open or still being answered at once "
        "(SETTINGS_MAX_CONCURRENT_STREAMS)",
        least=1,
        most=2**31 - 1,
    )
    front: str = _option(
        "own",
        parse_front,
        "client-facing server: own (HTTP/1.1 on httptools, HTTP/2 on h2), the only one",
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
    access_log: bool = _flag(True, "one JSON access-log line per request")
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
    def decoded_bodies_bytes(self) -> int:
        """The part of ``--cache-max-bytes`` that memoises identity bodies decoded from stored
        coded ones (``proxy.cache.bodies``): 1/32 of it, at most 8 MiB."""
        return min(self.cache_max_bytes // 32, DECODED_BODIES_MAX)

    @property
    def store_max_bytes(self) -> int:
        """The in-process store's budget: ``--cache-max-bytes`` less the decoded-body memo."""
        return self.cache_max_bytes - self.decoded_bodies_bytes

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


def from_attributes(kind: type[Record], source: object, **given: Any) -> Record:
    """A ``kind`` (a dataclass) with each field read from the attribute of the same name of
    ``source`` (``Settings``, an argparse namespace), except those ``given``; a field
    ``source`` lacks keeps its default."""
    names = {spec.name for spec in fields(kind) if spec.init} - given.keys()
    read = {name: getattr(source, name) for name in names if hasattr(source, name)}
    return kind(**read, **given)


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
        if spec.metadata["parse"] is parse_bool:
            parser.add_argument(
                "--no-" + option_name(spec.name)[2:], dest=spec.name, action="store_const",
                const="false", help=f"the same as {option_name(spec.name)} false",
            )  # fmt: skip


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
