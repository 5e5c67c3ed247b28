"""Which podman storage tests/system/test_deploy.py uses, chosen once per session by trying it.

podman's default storage driver, ``overlay``, refuses a graph root that is itself on overlayfs
(``'overlay' is not supported over overlayfs, a mount_program is required``): that is the case
inside a container (a CI job, a dev container), where the root file system is an overlay. There,
the tests give podman a storage of their own (a private graph root and run root in a temporary
directory, named by ``CONTAINERS_STORAGE_CONF``), never touching the machine's: ``overlay`` with
``fuse-overlayfs`` as its mount program when ``/dev/fuse`` is there, else the ``vfs`` driver (a
full copy per layer: slower, works on any file system). Each candidate is tried for real: a tiny
image is imported into it and a container run from it, so a storage that podman accepts but
cannot mount, or a runtime that cannot start a container at all (no privileges for its mounts, no
user namespaces), is found here, once, and reported in one line that says what to provide.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PROBE_TIMEOUT = 120
#: Where the probes' errors go when no storage works (the report shows one line naming it).
LOG = Path("/var/tmp/cacheproxy-podman-probe.log")
#: Names the only storage to try: default, fuse-overlayfs or vfs.
FORCE = "CACHEPROXY_TEST_PODMAN_STORAGE"
#: The storage tests/system/test_deploy.py chose this session, for the test report's summary:
#: which path a run took (the machine's default or a tests-owned one) shows there, not only that
#: it passed.
CHOSEN: list[str] = []


class StorageUnusable(Exception):
    """No storage podman can run a container with here; the message is one line to show as is."""


@dataclass
class PodmanStorage:
    """The chosen storage: its name, the environment podman needs for it (nothing for the
    machine's default), and the tests-owned directory holding it (removed by ``release``)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    directory: Path | None = None

    def release(self, base_env: dict[str, str]) -> None:
        """Remove the tests-owned storage: podman unmounts and deletes what is left in it."""
        if self.directory is None:
            return
        if (self.directory / "graph").exists() or (self.directory / "run").exists():
            subprocess.run(
                ["podman", "system", "reset", "--force"],
                env={**base_env, **self.env},
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


def choose(base_env: dict[str, str]) -> PodmanStorage:
    """The machine's default storage if a container runs with it, else a tests-owned one
    (fuse-overlayfs, then vfs); ``StorageUnusable`` with one line if none can. ``FORCE`` in
    the environment names the one storage to try (to test each path, or to keep the tests off
    the machine's storage)."""
    forced = base_env.get(FORCE, "")
    candidates = [PodmanStorage("default"), *private_candidates()]
    names = [candidate.name for candidate in candidates]
    if forced and forced not in names:
        for candidate in candidates:
            candidate.release(base_env)
        raise StorageUnusable(f"{FORCE}={forced}: not one of {', '.join(names)} here")
    failures = {}
    chosen = None
    for candidate in candidates:
        if chosen is not None or (forced and candidate.name != forced):
            candidate.release(base_env)
            continue
        failure = probe({**base_env, **candidate.env})
        if failure is None:
            chosen = candidate
        else:
            failures[candidate.name] = failure
            candidate.release(base_env)
    if chosen is None:
        raise StorageUnusable(explain(failures))
    return chosen


def private_candidates() -> list[PodmanStorage]:
    """The tests-owned storages worth trying here, best first."""
    candidates = []
    mount_program = shutil.which("fuse-overlayfs")
    if mount_program and Path("/dev/fuse").exists():
        candidates.append(
            private("fuse-overlayfs", "overlay", f'mount_program = "{mount_program}"')
        )
    candidates.append(private("vfs", "vfs", ""))
    return candidates


def private(name: str, driver: str, overlay_options: str) -> PodmanStorage:
    """A storage.conf of the tests' own, in a new directory under /var/tmp (not a tmpfs /tmp:
    image layers are hundreds of MB)."""
    directory = Path(tempfile.mkdtemp(prefix="cacheproxy-podman-", dir="/var/tmp"))
    options = f"\n[storage.options.overlay]\n{overlay_options}\n" if overlay_options else ""
    conf = directory / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "{driver}"\n'
        f'graphroot = "{directory / "graph"}"\nrunroot = "{directory / "run"}"\n{options}'
    )
    return PodmanStorage(name, {"CONTAINERS_STORAGE_CONF": str(conf)}, directory)


def probe(env: dict[str, str]) -> str | None:
    """Import a tiny image and run a container from it; None if that works, else podman's error
    (its last line). The image is a skeleton whose /usr is the host's, mounted read-only: no
    registry, no download."""
    tag = f"localhost/cacheproxy-test-probe:{secrets.token_hex(4)}"

    def podman(*args: str, stdin: bytes | None = None) -> str | None:
        try:
            done = subprocess.run(
                ["podman", *args],
                input=stdin,
                capture_output=True,
                env=env,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
        if done.returncode == 0:
            return None
        return last_error(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"

    failure = podman("import", "-", tag, stdin=skeleton())
    if failure is None:
        failure = podman(
            "run", "--rm", "--network", "host", "-v", "/usr:/usr:ro", tag, "/usr/bin/true"
        )
        podman("rmi", "--force", tag)
    return failure


def skeleton() -> bytes:
    """A tar of a root file system with nothing but merged-/usr links and mount points."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("usr", "proc", "sys", "dev", "etc", "tmp"):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for link in ("bin", "lib", "lib64", "sbin"):
            entry = tarfile.TarInfo(link)
            entry.type, entry.linkname = tarfile.SYMTYPE, f"usr/{link}"
            tar.addfile(entry)
    return buffer.getvalue()


def last_error(stderr: str) -> str:
    """podman's final ``Error: ...`` line (it may log warnings and a stack of causes before)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1].removeprefix("Error: ")


def explain(failures: dict[str, str]) -> str:
    """One line: what is missing and how to provide it. podman's own errors (long stacks of
    causes) go to a file the line names, not into the test report."""
    LOG.write_text("".join(f"{name}: {error}\n" for name, error in failures.items()))
    errors = " ".join(failures.values()).lower()
    if os.geteuid() != 0 and not user_namespaces():
        need = (
            "rootless podman needs user namespaces (sysctl user.max_user_namespaces > 0, "
            f"ranges for {os.environ.get('USER', 'this user')} in /etc/subuid and /etc/subgid, "
            "Debian package uidmap); or run the tests as root"
        )
    elif lacking := privileges_lacking(errors):
        need = (
            f"{' and '.join(lacking)} in this container: run the container with --privileged "
            "(docker run --privileged, podman run --privileged)"
        )
    elif "no space left" in errors:
        need = "no space left for its images: free about 2 GB under /var/tmp"
    else:
        need = "no storage driver works here (default, fuse-overlayfs, vfs)"
    missing = [
        what
        for what, there in (
            ("/dev/fuse (--device /dev/fuse)", Path("/dev/fuse").exists()),
            ("the Debian package fuse-overlayfs", shutil.which("fuse-overlayfs") is not None),
        )
        if not there
    ]
    if missing:
        need += f"; fuse-overlayfs storage (faster than vfs) also needs {' and '.join(missing)}"
    return (
        f"podman cannot run a container here: {need} (see docs/containers.md; "
        f"podman's errors: {LOG})"
    )


def privileges_lacking(errors: str) -> list[str]:
    """What the probes' (lower-cased) errors say this container forbids podman."""
    lacking = []
    if "not permitted" in errors or "permission denied" in errors:
        lacking.append("its mounts are not permitted")
    if "cgroup" in errors and "read-only file system" in errors:
        lacking.append("the cgroup file system is read-only")
    return lacking


def user_namespaces() -> bool:
    """Whether this process may make a user namespace (what rootless podman starts with)."""
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 1
    unshare = shutil.which("unshare")
    if limit == 0 or unshare is None:
        return limit != 0
    done = subprocess.run([unshare, "--user", "true"], capture_output=True, check=False)
    return done.returncode == 0
