"""The project's container image as a benchmark system: built (or reused) and run with podman.

The image is the repository's ``Dockerfile``, unchanged but for its base images: no registry is
reachable on CI or on the benchmark machine, so, as ``tests/system/test_deploy.py`` does, both
stages build on a local Debian 12 base with Debian's Python 3.11 (``scripts/container-base``,
built once and kept as ``BASE_TAG``). The proxy image is tagged by a digest of its build context
and that base, so an unchanged tree reuses it and a changed one builds anew (removing the image of
the earlier tree and the build stage it leaves untagged).

The container runs as users run it, with the settings the image ships (uvloop, the JSON access
log at ``info`` to stderr, which podman's ``k8s-file`` log driver writes to a file); only where it
listens and what it forwards to are set. Host networking, ``--cpuset-cpus`` for its processes and
``taskset`` for ``podman run`` itself, so that ``conmon``, which carries the container's output to
the log file, shares the server's CPU. Its CPU time is the container cgroup's usage (every process
in it) plus conmon's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import processes
from bench.processes import READY_TIMEOUT, REPO_ROOT, Pinning, Unavailable

BASE_TAG = "localhost/cacheproxy-bench-base:bookworm"
IMAGE_REPOSITORY = "localhost/cacheproxy-bench"
#: What the Dockerfile copies (its .dockerignore admits nothing else), and the Dockerfile.
CONTEXT = ("Dockerfile", "requirements.lock", "pyproject.toml", "README.md", "proxy")
#: runc and permitted ulimits, as for the deployment tests (crun fails on these machines).
CONTAINERS_CONF = REPO_ROOT / ".ci" / "containers.conf"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 900


def podman(*args: str, timeout: float = 120, pinning: Pinning | None = None) -> str:
    """Run podman (pinned like a server with ``pinning``) to completion; ``Unavailable`` with its
    command and error if it fails."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    command = ["podman", *args]
    try:
        done = subprocess.run(
            pinning.wrap(command) if pinning else command, capture_output=True, text=True,
            timeout=timeout, env=env, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"podman {args[0]}: {error}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-400:]
        raise Unavailable(f"podman {' '.join(args[:2])} failed ({done.returncode}): {tail}")
    return done.stdout


def image_exists(tag: str) -> bool:
    try:
        podman("image", "exists", tag)
    except Unavailable:
        return False
    return True


def context_digest(root: Path, base_id: str) -> str:
    """SHA-256 over the base image's ID and every file of the build context, path and bytes."""
    digest = hashlib.sha256(base_id.encode())
    files: list[Path] = []
    for name in CONTEXT:
        path = root / name
        files += [path] if path.is_file() else sorted(path.rglob("*"))
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(b"\0" + str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_image(log: Callable[[str], None]) -> str:
    """The proxy image of this tree: reused when its tag exists, else built on the local base."""
    for tool in ("podman", "runc"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise Unavailable(f"{tool} is not installed (apt-get install -y podman runc uidmap)")
    if not image_exists(BASE_TAG):
        log(f"image: building the Debian 12 base {BASE_TAG} (scripts/container-base)")
        script = REPO_ROOT / "scripts" / "container-base"
        env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        done = subprocess.run(
            [str(script), BASE_TAG], capture_output=True, text=True, env=env,
            timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise Unavailable(f"scripts/container-base failed: {done.stderr.strip()[-400:]}")
    base_id = podman("image", "inspect", "--format", "{{.Id}}", BASE_TAG).strip()
    tag = f"{IMAGE_REPOSITORY}:{context_digest(REPO_ROOT, base_id)[:16]}"
    if image_exists(tag):
        log(f"image: reusing {tag}")
        return tag
    log(f"image: building {tag} from the Dockerfile")
    mounts = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    before = dangling_images()
    podman(
        "build", "--format", "docker", "--no-cache", "--network", "host", *mounts,
        "--build-arg", f"BUILD_IMAGE={BASE_TAG}", "--build-arg", f"RUNTIME_IMAGE={BASE_TAG}",
        "-t", tag, str(REPO_ROOT), timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    # The build stage this build left untagged, and the images of earlier trees: one image kept.
    earlier = podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPOSITORY).split()
    stale = [*(dangling_images() - before), *(image for image in earlier if image != tag)]
    if stale:
        with contextlib.suppress(Unavailable):
            podman("rmi", "--force", "--ignore", *stale)
    return tag


def dangling_images() -> set[str]:
    return set(podman("images", "--all", "--quiet", "--filter", "dangling=true").split())


# -- the container's CPU time ---------------------------------------------------------------------


def cgroup_cpu_file(proc_cgroup: str, mounts: str) -> Path:
    """The file counting a process's cgroup CPU time, from ``/proc/PID/cgroup`` and
    ``/proc/self/mounts``: cgroup v2's ``cpu.stat`` (present in every cgroup, also in the unified
    hierarchy of a hybrid setup), else cgroup v1's ``cpuacct.usage``."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpuacct" in controllers.split(","):
            v1 = path
    found: dict[str, Path] = {}
    for line in mounts.splitlines():
        _, point, kind, options = line.split()[:4]
        if kind == "cgroup2" and v2 is not None:
            found["v2"] = Path(point + v2.rstrip("/")) / "cpu.stat"
        if kind == "cgroup" and v1 is not None and "cpuacct" in options.split(","):
            found["v1"] = Path(point + v1.rstrip("/")) / "cpuacct.usage"
    if found:
        return found.get("v2") or found["v1"]
    raise Unavailable("no cgroup CPU accounting found for the container")


def cgroup_cpu_seconds(text: str, *, kind: str) -> float:
    """CPU seconds from a ``cpu.stat`` (its ``usage_usec``) or a ``cpuacct.usage`` (ns)."""
    if kind == "cpuacct.usage":
        return int(text.strip()) / 1e9
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError("cpu.stat has no usage_usec")


@dataclass
class Container:
    """A running container of the image: its name, port, processes and CPU accounting."""

    name: str
    port: int
    pid: int
    conmon_pid: int
    cpu_file: Path
    log_path: Path
    log: Callable[[str], None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cgroup_seconds(self) -> float:
        return cgroup_cpu_seconds(self.cpu_file.read_text(), kind=self.cpu_file.name)

    def cpu_seconds(self) -> float:
        """Every process in the container, and conmon, which writes its log."""
        return self.cgroup_seconds() + processes.own_cpu_seconds(self.conmon_pid)

    def stop(self) -> None:
        """Log where its CPU went and keep its log next to the others', then SIGTERM (SIGKILL
        after 10 s)."""
        with contextlib.suppress(OSError, ValueError):
            self.log(
                f"image: CPU over the container's life: cgroup {self.cgroup_seconds():.2f} s "
                f"(the proxy's process tree {processes.cpu_seconds(self.pid):.2f} s), conmon "
                f"{processes.own_cpu_seconds(self.conmon_pid):.2f} s"
            )
        remove(self.name, self.log_path)
        # Seen once: the record removed, the proxy still running (and holding CPU 0): what is
        # left in the container's own cgroup is killed (conmon exits with it).
        with contextlib.suppress(OSError, ValueError):
            for line in (self.cpu_file.parent / "cgroup.procs").read_text().split():
                os.kill(int(line), signal.SIGKILL)


def remove(name: str, log_path: Path) -> str:
    """Write the end of a container's output (the proxy logs to stderr) to ``log_path``, remove
    the container, and return that output's last lines."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    with log_path.open("wb") as output:
        subprocess.run(
            ["podman", "logs", "--tail", "50", name], stdout=output, stderr=subprocess.STDOUT,
            env=env, timeout=30, check=False,
        )  # fmt: skip
    with contextlib.suppress(Unavailable):
        podman("rm", "--force", "--time", "10", name, timeout=60)
    return "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])


def start_image(
    workdir: Path, upstream: str, pinning: Pinning, *, log: Callable[[str], None]
) -> Container:
    """The image in a container on a free loopback port, forwarding to ``upstream``."""
    tag = ensure_image(log)
    port = processes.free_port()
    name = f"cacheproxy-bench-{secrets.token_hex(4)}"
    log_path = workdir / "container-image.log"
    cpus = ["--cpuset-cpus", pinning.server] if pinning.server is not None else []
    try:
        podman(
            "run", "--detach", "--name", name, "--network", "host", *cpus,
            "--log-driver", "k8s-file", "-e", "PROXY_HOST=127.0.0.1", "-e", f"PROXY_PORT={port}",
            "-e", f"PROXY_UPSTREAM={upstream}", tag, pinning=pinning,
        )  # fmt: skip
    except Unavailable as error:
        raise Unavailable(f"{error}\n{remove(name, log_path)}") from None
    state = podman("inspect", "--format", "{{.State.Pid}} {{.State.ConmonPid}}", name).split()
    pid, conmon_pid = int(state[0]), int(state[1])
    if pid == 0:
        raise Unavailable(f"the container exited at once: {remove(name, log_path)}")
    cpu_file = cgroup_cpu_file(Path(f"/proc/{pid}/cgroup").read_text(), mounts())
    container = Container(name, port, pid, conmon_pid, cpu_file, log_path, log)
    wait_answering(container)
    return container


def mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def wait_answering(container: Container, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``/healthz`` until the container answers; ``Unavailable`` if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{container.pid}").exists():
            raise Unavailable(f"the container exited: {remove(container.name, container.log_path)}")
        try:
            with urllib.request.urlopen(container.url + "/healthz", timeout=2) as response:
                response.read()
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    raise Unavailable(
        f"the container did not answer /healthz within {timeout:.0f}s: "
        f"{remove(container.name, container.log_path)}"
    )


def event_loop(container: Container) -> str:
    """The loop the proxy serves on: uvloop's extension is mapped only when it makes the loop."""
    maps = Path(f"/proc/{container.pid}/maps").read_text()
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


#: Printed inside the container: its Python and the versions of what a hit's speed depends on.
CONTENTS = """\
import importlib.metadata as m, platform
found = []
for name in ("uvloop", "brotli", "zstandard"):
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        found.append(f"no {name}")
print(platform.python_implementation(), platform.python_version() + ",", ", ".join(found))
"""


def contents(container: Container) -> str:
    """The image's Python and its uvloop and codecs, e.g. ``CPython 3.11.2, uvloop 0.23.0, …``."""
    return podman("exec", container.name, "python", "-c", CONTENTS).strip()
