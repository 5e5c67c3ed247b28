"""``python -m proxy demo``: the same polling fleet without and with the proxy, side by side.

The simulated API (``proxy.tools.simulator``) runs in this process; the proxy runs as
``python -m proxy`` with its default settings (``process``); the polling fleet is the one the
benchmarks use (``proxy.tools.fleet``). Three phases (``run``): without the proxy, through it,
and long-polling through it (``Prefer: wait``); then a table with what each figure means
(``table``), from the simulator's ``/_sim/stats`` and the proxy's ``/metrics`` (``stats``).
"""

from proxy.tools.demo.cli import build_parser, main
from proxy.tools.demo.process import ProxyProcessError, RunningProxy, running_proxy
from proxy.tools.demo.run import (
    COMPRESSING_FRONT,
    DemoEndpoints,
    DemoOptions,
    demo_simulator_config,
    run_demo,
    run_phase,
)
from proxy.tools.demo.stats import (
    ProxyStats,
    UpstreamStats,
    fetch_proxy_stats,
    fetch_simulator_stats,
    parse_proxy_metrics,
    reset_simulator_stats,
)
from proxy.tools.demo.table import (
    FleetSetting,
    PhaseResult,
    format_notes,
    format_table,
    human_bytes,
    notes,
    table_rows,
)

__all__ = [
    "COMPRESSING_FRONT",
    "DemoEndpoints",
    "DemoOptions",
    "FleetSetting",
    "PhaseResult",
    "ProxyProcessError",
    "ProxyStats",
    "RunningProxy",
    "UpstreamStats",
    "build_parser",
    "demo_simulator_config",
    "fetch_proxy_stats",
    "fetch_simulator_stats",
    "format_notes",
    "format_table",
    "human_bytes",
    "main",
    "notes",
    "parse_proxy_metrics",
    "reset_simulator_stats",
    "run_demo",
    "run_phase",
    "running_proxy",
    "table_rows",
]
