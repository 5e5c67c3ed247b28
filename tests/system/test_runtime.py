"""The composition root and the one server stack (issue 18): what they must not depend on.

``proxy.runtime`` builds the proxy and knows no server; aiohttp's server is gone from the
product (aiohttp stays as the upstream client), so the own front serves every listener.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from proxy.ops.config import Settings
from tests.conftest import ServeFront
from tests.support.rawkit import get_ok, serve_proxy

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_product_module_outside_the_tools_uses_aiohttps_server() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if "aiohttp.web" in m)
        for path in (ROOT / "proxy").rglob("*.py")
        if "tools" not in path.relative_to(ROOT).parts
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert not (ROOT / "proxy" / "app.py").exists()
    assert not (ROOT / "proxy" / "server.py").exists()


def test_the_runtime_imports_no_server() -> None:
    code = (
        "import sys, proxy.runtime; "
        "print(sorted(m for m in sys.modules if m.startswith(('proxy.front', 'aiohttp.web'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    names = imported_modules(ROOT / "proxy" / "runtime.py")
    assert not any(name.startswith(("proxy.front", "aiohttp")) for name in names), names


async def test_the_admin_listener_is_the_own_front_and_forwards_nothing() -> None:
    # Nothing listens on the discard port: a request the admin listener forwarded would be 502.
    settings = Settings(upstream="http://127.0.0.1:9", admin_port=0, admin_token="t")
    async with serve_proxy(settings) as proxy:
        assert await get_ok(proxy.admin_url, "/readyz") == 200
        assert await get_ok(proxy.admin_url, "/metrics") == 200
        assert await get_ok(proxy.admin_url, "/v1/audio/transcribe/x") == 405
        assert await get_ok(proxy.url, "/metrics") == 404
        assert await get_ok(proxy.url, "/v1/audio/transcribe/x") == 502


async def test_a_runtime_closes_once_and_reports_a_closed_upstream_session(
    serve_front: ServeFront,
) -> None:
    client = await serve_front(Settings(upstream="http://127.0.0.1:9"))
    runtime = client.runtime
    await client.server.close(drain_seconds=0.1)
    await runtime.close()
    await runtime.close()
    readiness = await runtime.readiness()
    assert (readiness.ready, readiness.http_status) == (False, 503)
    assert readiness.body()["upstream_session"] == "closed"
