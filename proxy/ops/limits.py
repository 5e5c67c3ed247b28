"""The descriptor limit (``RLIMIT_NOFILE``): raised at start, and the connection cap it allows.

Every held long poll is an open connection, so a replica meant for 100,000 of them needs as many
descriptors. Many systems start services with a soft limit of 1,024 under a far higher hard
limit; the soft limit may be raised to the hard one without privileges, so the proxy does that
at start (``raise_descriptor_limit``) and sizes ``--max-connections`` (and with it
``--max-waiters``) from the result. Past the hard limit only the operator can help: the start-up
log says so in one line (``limit_report``).
"""

from __future__ import annotations

import resource
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from proxy.ops.config import Settings

#: Descriptors kept besides client connections: listeners, admin connections, logs, Redis.
RESERVE = 64
#: The most a process may open on Linux unless the system says otherwise (``fs.nr_open``).
NR_OPEN = 1_048_576


@dataclass(frozen=True, slots=True)
class DescriptorLimit:
    """The soft limit before and after raising it, and the hard limit."""

    before: int
    soft: int
    hard: int


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return NR_OPEN


def raise_descriptor_limit() -> DescriptorLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (capped at ``fs.nr_open`` when the
    hard limit is unlimited), where the system allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        with suppress(ValueError, OSError):  # else it stays; limit_report says what it allows
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    after, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return DescriptorLimit(soft, after, hard)


def reserve(settings: Settings) -> int:
    """Descriptors that are not client connections: the upstream pool, Redis's, a fixed rest."""
    kept = RESERVE + settings.upstream_max_connections
    if settings.redis_url:
        kept += settings.redis_max_connections + 2
    return kept


def default_max_connections(settings: Settings) -> int:
    """RLIMIT_NOFILE less the upstream pool, Redis's pool and a fixed reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = NR_OPEN
    return max(16, soft - reserve(settings))


def max_connections(settings: Settings) -> int:
    """The connection cap: ``--max-connections`` if the descriptor limit allows it, else what
    it allows (``limit_report`` says so at start)."""
    allowed = default_max_connections(settings)
    return min(settings.max_connections, allowed) if settings.max_connections else allowed


def max_waiters(settings: Settings) -> int:
    """``--max-waiters``, by default the connection cap: every connection may hold one."""
    return settings.max_waiters if settings.max_waiters is not None else max_connections(settings)


def limit_report(settings: Settings, limit: DescriptorLimit) -> tuple[bool, str]:
    """One start-up line: whether it is a warning, and what it says."""
    cap = max_connections(settings)
    wanted = settings.max_connections
    if wanted and wanted > cap:
        return True, (
            f"--max-connections {wanted} needs {wanted + reserve(settings)} file descriptors but "
            f"RLIMIT_NOFILE allows {limit.soft} (hard limit {limit.hard}): serving at most {cap} "
            "connections; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, "
            "docker run --ulimit nofile=N:N)"
        )
    raised = f"raised from {limit.before}, " if limit.soft > limit.before else ""
    return False, (
        f"descriptor limit (RLIMIT_NOFILE) {limit.soft}, {raised}hard limit {limit.hard}: "
        f"up to {cap} client connections, {max_waiters(settings)} held long polls"
    )
