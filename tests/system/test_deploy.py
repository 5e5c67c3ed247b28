"""The image and the compose stack, built and run for real with podman, as users deploy them.

No registry is reachable here, so the Dockerfile's base images are swapped by build argument for a
local Debian 12 base (``scripts/container-base``: debootstrap plus Debian's python3), built once per
session; nothing else in the Dockerfile changes. The compose stack runs ``docker-compose.yml`` with
``.ci/compose.ci.yml`` on top: the same images, stand-ins for redis and prometheus from Debian's
packages, host networking on 127.0.0.1. The upstream is the simulator (``python -m proxy
simulate``) on the host. podman runs with ``.ci/containers.conf`` (runc, permitted ulimits).
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.podman_storage import CHOSEN, PodmanStorage, StorageUnusable, choose
from tests.support.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci"
RUN_ID = secrets.token_hex(4)
TOKEN = "deploy-test-token"
#: The host's CA bundle, mounted read-only into builds: TLS may be intercepted on these machines,
#: and the bundle must not be baked into an image.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 600
PROXIES = ("proxy-1", "proxy-2")
#: Loopback only: never through an HTTP proxy the environment may name.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


#: The storage podman uses for this session (``podman_storage`` below): the machine's default,
#: or in a container a tests-owned one, whose environment (CONTAINERS_STORAGE_CONF) goes here.
STORAGE_ENV: dict[str, str] = {}


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CI / "containers.conf"), **STORAGE_ENV}


def run(*command: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or podman_env(),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(command)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def podman(*args: str, timeout: float = 120) -> str:
    return run("podman", *args, timeout=timeout)


def logs(name: str) -> str:
    """A container's output; the proxy logs to stderr, which ``podman logs`` keeps apart."""
    done = subprocess.run(
        ["podman", "logs", name], capture_output=True, text=True, env=podman_env(), check=False
    )
    return done.stdout + done.stderr


def build(tag: str, *args: str) -> str:
    """``podman build`` as CI needs it: Docker format (keeps HEALTHCHECK), no layer cache (podman
    4.3 mishandles ``RUN --mount=type=bind,from=…`` with it), the host's CA bundle read-only, and
    the host's network (the build fetches from the package registries only)."""
    mounts = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    before = dangling_images()
    podman(
        "build",
        "--format",
        "docker",
        "--no-cache",
        "--network",
        "host",
        *mounts,
        "-t",
        tag,
        *args,
        timeout=BUILD_TIMEOUT,
    )
    LEFT_BY_BUILDS.update(dangling_images() - before)
    return tag


#: Untagged images our builds left (the build stage and its layers), removed with the images.
LEFT_BY_BUILDS: set[str] = set()


def dangling_images() -> set[str]:
    return set(podman("images", "--all", "--quiet", "--filter", "dangling=true").split())


def remove_images(*images: str) -> None:
    """Remove the given images and whatever untagged images the builds left behind."""
    subprocess.run(
        ["podman", "rmi", "--force", "--ignore", *images, *LEFT_BY_BUILDS],
        env=podman_env(),
        capture_output=True,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with DIRECT.open(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def post_json(url: str, payload: object) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with DIRECT.open(request, timeout=10) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        return get(url, timeout=2).status == 200
    except OSError:
        return False


# --- the images, built once per session -------------------------------------------------------


@pytest.fixture(scope="session")
def podman_storage() -> Iterator[PodmanStorage]:
    """The storage podman can run containers with here, tried once: the machine's default, or
    (inside a container, where overlay refuses overlayfs) a tests-owned fuse-overlayfs or vfs
    storage, removed at the end. Where none works, the tests fail with one line saying why."""
    for tool in ("podman", "runc", "debootstrap"):
        if not shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
            pytest.fail(
                f"{tool} is missing: scripts/test installs it (Debian package {tool})",
                pytrace=False,
            )
    try:
        storage = choose(podman_env())
    except StorageUnusable as error:
        unusable = str(error)
    else:
        unusable = ""
    if unusable:  # outside the except: the report shows this line, not a chain of exceptions
        pytest.fail(unusable, pytrace=False)
    STORAGE_ENV.update(storage.env)
    CHOSEN.append(storage.name)
    yield storage
    STORAGE_ENV.clear()
    storage.release(podman_env())


@pytest.fixture(scope="session")
def base_image(podman_storage: PodmanStorage) -> Iterator[str]:
    """The local Debian 12 base with Python 3.11 (no registry): built once, removed at the end."""
    tag = run(
        str(ROOT / "scripts" / "container-base"),
        f"localhost/cacheproxy-test-base:{RUN_ID}",
        timeout=BUILD_TIMEOUT,
    ).strip()
    yield tag
    remove_images(tag)


@pytest.fixture(scope="session")
def proxy_image(base_image: str) -> Iterator[str]:
    """The unmodified Dockerfile, only its base images swapped for the local base."""
    tag = build(
        f"localhost/cacheproxy-test:{RUN_ID}",
        "--build-arg",
        f"BUILD_IMAGE={base_image}",
        "--build-arg",
        f"RUNTIME_IMAGE={base_image}",
        str(ROOT),
    )
    yield tag
    remove_images(tag)


@pytest.fixture(scope="session")
def standin_images(base_image: str) -> Iterator[dict[str, str]]:
    """redis and prometheus from Debian's packages, for the images no registry can give here."""
    tags = {
        name: build(
            f"localhost/cacheproxy-test-{name}:{RUN_ID}",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "-f",
            str(CI / "images" / f"{name}.Containerfile"),
            str(CI / "images"),
        )
        for name in ("redis", "prometheus")
    }
    yield tags
    remove_images(*tags.values())


# --- the upstream ------------------------------------------------------------------------------


@dataclass
class Simulator:
    url: str
    transcriptions: list[str]

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(get(self.url + "/_sim/stats").body)
        return stats

    def reset_stats(self) -> None:
        post_json(self.url + "/_sim/reset-stats", {})


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    """``python -m proxy simulate`` on a free loopback port, transcriptions seeded for TOKEN."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "simulate",
            "--port",
            "0",
            "--seed-tokens",
            TOKEN,
            "--seed-count",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def forward() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=forward, daemon=True).start()
    url, seeded = "", []
    try:
        while not url.endswith("/_sim/stats"):
            line = lines.get(timeout=15)
            seeded += re.findall(r"seeded (\S+) for token", line)
            url = line.split("curl -s ", 1)[-1].strip() if "stats: curl" in line else url
        yield Simulator(url.removesuffix("/_sim/stats"), seeded)
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- the image on its own ----------------------------------------------------------------------


@dataclass
class Container:
    name: str
    url: str

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).strip()


def start_proxy(image: str, upstream: str, settings: dict[str, str] | None = None) -> Container:
    """The image run as users run it, configured by PROXY_* variables (``settings`` adds some)."""
    port = free_port()
    name = f"cacheproxy-test-{RUN_ID}-{secrets.token_hex(3)}"
    extra = [f"--env={key}={value}" for key, value in (settings or {}).items()]
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        "PROXY_HOST=127.0.0.1",
        "-e",
        f"PROXY_PORT={port}",
        "-e",
        f"PROXY_UPSTREAM={upstream}",
        *extra,
        image,
    )
    container = Container(name, f"http://127.0.0.1:{port}")
    eventually_sync(
        lambda: answers(container.url + "/healthz"),
        within=30,
        what=lambda: logs(name),
    )
    return container


def remove(container: Container) -> None:
    subprocess.run(
        ["podman", "rm", "-f", "-t", "0", container.name],
        env=podman_env(),
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="module")
def container(proxy_image: str, simulator: Simulator) -> Iterator[Container]:
    started = start_proxy(proxy_image, simulator.url)
    yield started
    remove(started)


def test_the_image_keeps_its_healthcheck_and_unprivileged_user(proxy_image: str) -> None:
    (image,) = json.loads(podman("image", "inspect", proxy_image))

    assert image["Config"]["User"] == "10001:10001"
    assert image["Healthcheck"]["Test"][0] == "CMD", "--format docker keeps HEALTHCHECK"
    assert image["Config"]["Entrypoint"] == ["python", "-m", "proxy"]


def test_the_container_answers_healthz_and_collapses_two_gets_into_one_upstream_request(
    container: Container, simulator: Simulator
) -> None:
    path = f"/v1/audio/transcribe/{simulator.transcriptions[0]}"
    simulator.reset_stats()

    health = get(container.url + "/healthz")
    first = get(container.url + path, {"Authorization": f"Bearer {TOKEN}"})
    second = get(container.url + path, {"Authorization": f"Bearer {TOKEN}"})

    assert health.status == 200
    assert json.loads(health.body)["status"] == "ok"
    assert first.status == second.status == 200
    assert second.body == first.body
    assert "hit" in second.headers["Cache-Status"]
    assert simulator.stats()["requests"] == 1


def test_the_image_healthcheck_passes_in_the_container(container: Container) -> None:
    podman("healthcheck", "run", container.name)

    assert container.inspect("{{.State.Health.Status}}") == "healthy"


def test_the_proxy_process_does_not_run_as_root(container: Container) -> None:
    pid = container.inspect("{{.State.Pid}}")
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)

    assert uids is not None
    assert set(uids.group(1).split()) == {"10001"}, uids.group(1)
    assert "-m proxy" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_the_proxy_in_the_image_serves_on_uvloop(container: Container) -> None:
    """The image carries uvloop (a default dependency, in the lock), so the default
    ``--event-loop auto`` serves on it: the proxy imports uvloop only to make its loop, hence
    uvloop's extension mapped into the process means the loop is uvloop's."""
    pid = container.inspect("{{.State.Pid}}")
    mapped = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}

    assert any("/uvloop/loop." in path for path in mapped), sorted(p for p in mapped if ".so" in p)


def test_the_image_serves_br_and_zstd_when_configured_for_them(
    proxy_image: str, simulator: Simulator
) -> None:
    """The image carries the compression codecs: with ``--compress-codings zstd,br,gzip`` a
    stored JSON answer is served in each coding a client prefers, decoding to the same bytes."""
    brotli = importlib.import_module("brotli")  # the dev extra has both codecs
    zstandard = importlib.import_module("zstandard")
    compressing = start_proxy(
        proxy_image,
        simulator.url,
        # Any size: a transcription still processing is a short answer.
        {"PROXY_COMPRESS_CODINGS": "zstd,br,gzip", "PROXY_COMPRESS_MIN_BYTES": "0"},
    )
    try:
        path = f"/v1/audio/transcribe/{simulator.transcriptions[3]}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        identity = get(compressing.url + path, {**auth, "Accept-Encoding": "identity"})
        served = {
            coding: get(compressing.url + path, {**auth, "Accept-Encoding": coding})
            for coding in ("br", "zstd")
        }

        assert identity.status == 200
        assert identity.headers.get("Content-Encoding") is None
        for coding, reply in served.items():
            assert reply.status == 200, coding
            assert reply.headers.get("Content-Encoding") == coding, (coding, reply.headers)
            assert "Accept-Encoding" in reply.headers["Vary"]
        assert brotli.decompress(served["br"].body) == identity.body
        zstd_body = zstandard.ZstdDecompressor().decompressobj().decompress(served["zstd"].body)
        assert zstd_body == identity.body
    finally:
        remove(compressing)


def test_podman_stop_lets_a_slow_request_finish_and_the_container_exit_0(
    proxy_image: str, simulator: Simulator
) -> None:
    stopping = start_proxy(proxy_image, simulator.url)
    try:
        simulator.reset_stats()
        post_json(simulator.url + "/_sim/faults", {"delay": 2.0, "count": 1})
        path = f"/v1/audio/transcribe/{simulator.transcriptions[1]}"
        replies: list[Reply] = []
        slow = threading.Thread(
            target=lambda: replies.append(
                get(stopping.url + path, {"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            )
        )
        slow.start()
        # The request is in flight once the upstream holds it (the fault is taken on arrival).
        eventually_sync(lambda: simulator.stats()["faults_applied"] == 1, within=10)

        podman("stop", "--time", "30", stopping.name, timeout=60)
        slow.join(timeout=30)

        assert [reply.status for reply in replies] == [200]
        assert (
            json.loads(replies[0].body)["data"]["transcription_id"] == simulator.transcriptions[1]
        )
        assert stopping.inspect("{{.State.Status}}") == "exited"
        assert stopping.inspect("{{.State.ExitCode}}") == "0"
        assert "draining" in logs(stopping.name)
    finally:
        remove(stopping)


# --- the compose stack -------------------------------------------------------------------------


@dataclass
class Stack:
    project: str
    proxies: dict[str, str]
    prometheus: str

    def container(self, service: str) -> str:
        names = podman(
            "ps",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).split()
        assert len(names) == 1, names
        return names[0]


def ci_prometheus_config(directory: Path, targets: list[str]) -> None:
    """The repository's scrape configuration with loopback targets, its rules by absolute path."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [f"/etc/prometheus/{rule}" for rule in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["scrape_interval"] = "1s"
        job["static_configs"] = [{"targets": targets}]
    directory.mkdir()
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    directory.chmod(0o755)
    (directory / "prometheus.yml").chmod(0o644)


@pytest.fixture(scope="module")
def stack(
    proxy_image: str,
    standin_images: dict[str, str],
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """docker-compose.yml's replicas, Redis and Prometheus, with the CI override, in front of the
    simulator; shut down (and its containers removed) at the end."""
    ports = {name: free_port() for name in (*PROXIES, "redis", "prometheus")}
    config_dir = tmp_path_factory.mktemp("compose") / "prometheus"
    ci_prometheus_config(config_dir, [f"127.0.0.1:{ports[name]}" for name in PROXIES])
    project = f"cacheproxy-test-{RUN_ID}"
    env = {
        **podman_env(),
        "PROXY_UPSTREAM": simulator.url,
        "PROXY_SCOPE_SECRET": secrets.token_hex(16),
        "CI_PROXY_IMAGE": proxy_image,
        "CI_REDIS_IMAGE": standin_images["redis"],
        "CI_PROMETHEUS_IMAGE": standin_images["prometheus"],
        "CI_PROXY_1_PORT": str(ports["proxy-1"]),
        "CI_PROXY_2_PORT": str(ports["proxy-2"]),
        "CI_REDIS_PORT": str(ports["redis"]),
        "CI_PROMETHEUS_PORT": str(ports["prometheus"]),
        "CI_PROMETHEUS_CONFIG_DIR": str(config_dir),
    }
    compose = [
        sys.executable,
        "-m",
        "podman_compose",
        "--project-name",
        project,
        "-f",
        str(ROOT / "docker-compose.yml"),
        "-f",
        str(CI / "compose.ci.yml"),
    ]
    try:
        run(
            *compose,
            "up",
            "--detach",
            "--no-build",
            *PROXIES,
            "redis",
            "prometheus",
            env=env,
            timeout=180,
        )
        yield Stack(
            project,
            {name: f"http://127.0.0.1:{ports[name]}" for name in PROXIES},
            f"http://127.0.0.1:{ports['prometheus']}",
        )
    finally:
        subprocess.run(
            [*compose, "down", "--timeout", "5"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )


def test_compose_replicas_are_healthy(stack: Stack) -> None:
    for name, url in stack.proxies.items():
        eventually_sync(lambda url=url: answers(url + "/healthz"), within=30, what=name)  # type: ignore[misc]
        podman("healthcheck", "run", stack.container(name))


def test_compose_replicas_share_redis_a_miss_on_one_is_a_hit_on_the_other(
    stack: Stack, simulator: Simulator
) -> None:
    path = f"/v1/audio/transcribe/{simulator.transcriptions[2]}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for url in stack.proxies.values():
        eventually_sync(lambda url=url: answers(url + "/readyz"), within=30)  # type: ignore[misc]
    simulator.reset_stats()

    first = get(stack.proxies["proxy-1"] + path, auth)
    second = get(stack.proxies["proxy-2"] + path, auth)

    assert first.status == second.status == 200
    assert "fwd=uri-miss" in first.headers["Cache-Status"]
    assert "hit" in second.headers["Cache-Status"], second.headers["Cache-Status"]
    assert second.body == first.body
    assert simulator.stats()["requests"] == 1


def test_compose_prometheus_scrapes_both_replicas(stack: Stack) -> None:
    query = urllib.parse.urlencode({"query": 'up{job="cacheproxy"} == 1'})
    targets = {f"127.0.0.1:{url.rsplit(':', 1)[1]}" for url in stack.proxies.values()}

    def scraped() -> set[str]:
        try:
            reply = json.loads(get(f"{stack.prometheus}/api/v1/query?{query}").body)
        except (OSError, ValueError):
            return set()
        return {series["metric"]["instance"] for series in reply["data"]["result"]}

    eventually_sync(lambda: scraped() == targets, within=60, what=lambda: scraped())
    rules = json.loads(get(f"{stack.prometheus}/api/v1/rules").body)
    assert rules["data"]["groups"], "the repository's alert rules are loaded"
