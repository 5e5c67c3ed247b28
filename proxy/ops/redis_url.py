"""Where the shared Redis is: one server, a Sentinel-managed primary, or a Redis Cluster.

``--redis-url`` takes redis-py's own URLs for one server (``redis://``, ``rediss://``,
``unix://``) and two forms for several nodes, which redis-py has no URL syntax for:

- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``: the
  sentinels (port 26379 by default) and the name of the primary they watch (as in the
  ``redis-sentinel-url`` package and Celery's Sentinel transport). The password is the primary's,
  as redis-py's ``Sentinel(..., password=...)``; sentinels that require one of their own take
  ``?sentinel_password=...``.
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``: some of the cluster's nodes
  (port 6379 by default); the client learns the rest from them. A cluster has only database 0.

Parsing is hand-written because yarl and urllib cannot read a comma-separated host list.
Stdlib only: the configuration is checked without redis-py; making the clients is
``proxy.stores.redis_clients``'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
_DEFAULT_PORT = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379}
_HOST_RE = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>\d{1,5}))?$"
)
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^@/?#]*@")


@dataclass(frozen=True)
class RedisNodes:
    """Several nodes of one Redis deployment and the credentials to use with them."""

    kind: Literal["sentinel", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_multi_node(url: str) -> bool:
    return url.lower().startswith((SENTINEL_SCHEME + "://", CLUSTER_SCHEME + "://"))


def parse_redis_nodes(url: str) -> RedisNodes:
    """The nodes a ``redis+sentinel://`` or ``redis+cluster://`` URL names.

    Raises ``ValueError`` with a message that never repeats the URL, which may hold a password.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORT:
        raise ValueError("expected redis+sentinel:// or redis+cluster://")
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise ValueError("a Redis URL has no fragment")
    userinfo, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts, _, path = rest.partition("/")
    nodes = tuple(_node(text, _DEFAULT_PORT[scheme]) for text in hosts.split(","))
    options = _options(query)
    parts = [part for part in path.split("/") if part]
    if scheme == CLUSTER_SCHEME:
        if parts not in ([], ["0"]) or options:
            raise ValueError("a Redis Cluster URL takes no service, no database but 0, no options")
        return RedisNodes("cluster", nodes, username=username, password=password)
    if not parts or len(parts) > 2 or not _SERVICE_RE.fullmatch(parts[0]):
        raise ValueError("expected redis+sentinel://host:port[,host:port...]/service[/db]")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError("the database after the service name must be a number")
    return RedisNodes(
        "sentinel",
        nodes,
        service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password"),
    )


def _node(text: str, default_port: int) -> tuple[str, int]:
    match = _HOST_RE.match(text)
    if match is None:
        raise ValueError("expected host[:port] for every node, separated by commas")
    port = int(match["port"]) if match["port"] else default_port
    if not 0 < port < 65536:
        raise ValueError("a node's port must be between 1 and 65535")
    return match["v6"] or match["name"], port


def _options(query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError("the URL's options are not name=value pairs") from None
    unknown = set(parsed) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}: only sentinel_password")
    return {name: values[-1] for name, values in parsed.items()}


def redacted_url(url: str) -> str:
    """The URL without user, password or option values, fit for a log line."""
    without_user = _USERINFO_RE.sub(r"\1", url)
    base, question, query = without_user.partition("?")
    if not question:
        return base
    names = [pair.partition("=")[0] for pair in query.split("&") if pair]
    return base + "?" + "&".join(f"{name}=***" for name in names)
