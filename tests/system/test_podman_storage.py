"""The deploy tests' choice of podman storage (tests/support/podman_storage.py), with real podman.

A tests-owned storage is a real one (a tiny image imported into it, a container run from it) and is
removed afterwards; the machine's own storage is never touched by it; and where no storage works
the report gets one line naming what to provide, whatever podman printed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import podman_storage
from tests.support.podman_storage import FORCE, PodmanStorage, StorageUnusable, choose, explain

CONTAINERS_CONF = Path(__file__).resolve().parents[2] / ".ci" / "containers.conf"


def base_env(**extra: str) -> dict[str, str]:
    """The environment tests/system/test_deploy.py gives podman (runc, ulimits permitted here)."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **extra}
    env.pop("CONTAINERS_STORAGE_CONF", None)
    return env


def images(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["podman", "images", "--all", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=podman_storage.PROBE_TIMEOUT,
        check=True,
    )
    return done.stdout.split()


def test_a_tests_owned_vfs_storage_runs_a_container_and_is_removed_by_release() -> None:
    """vfs works on any file system (an overlay root included), so it is the fallback that must
    always work where podman can run a container at all."""
    env = base_env(**{FORCE: "vfs"})
    try:
        storage = choose(env)
    except StorageUnusable as error:
        unusable = str(error)
    else:
        unusable = ""
    if unusable:  # as the deploy tests: the one line, not a traceback (docs/containers.md)
        pytest.fail(unusable, pytrace=False)
    try:
        assert storage.name == "vfs"
        assert storage.directory is not None
        conf = Path(storage.env["CONTAINERS_STORAGE_CONF"])
        assert conf.parent == storage.directory
        assert 'driver = "vfs"' in conf.read_text()
        # The probe ran in it (its graph root exists) and removed its image afterwards.
        assert (storage.directory / "graph").is_dir()
        own = {**env, **storage.env}
        assert not [name for name in images(own) if "cacheproxy-test-probe" in name]
    finally:
        storage.release(env)
    assert not storage.directory.exists()


def test_a_forced_name_that_is_not_a_storage_here_fails_in_one_line_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[PodmanStorage] = []
    real_private = podman_storage.private

    def recording_private(name: str, driver: str, overlay_options: str) -> PodmanStorage:
        storage = real_private(name, driver, overlay_options)
        made.append(storage)
        return storage

    monkeypatch.setattr(podman_storage, "private", recording_private)
    with pytest.raises(StorageUnusable) as raised:
        choose(base_env(**{FORCE: "btrfs"}))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{FORCE}=btrfs: not one of default, ")
    assert "vfs" in message
    assert made, "the tests-owned candidates were made (and must be removed)"
    left = [
        storage.directory for storage in made if storage.directory and storage.directory.exists()
    ]
    assert left == []


# podman's last error lines, as the probes report them, in a container started without
# --privileged (scripts/check-in-container --unprivileged) and with only some capabilities.
NOT_PERMITTED = (
    "runc: runc create failed: unable to start container process: error during container init: "
    'error mounting "proc" to rootfs at "/proc": mount proc:/proc (via /proc/self/fd/6), '
    "flags: 0xe: operation not permitted: OCI permission denied"
)
READ_ONLY_CGROUP = (
    "runc: runc create failed: unable to start container process: unable to apply cgroup "
    "configuration: mkdir /sys/fs/cgroup/libpod_parent: read-only file system: OCI runtime error"
)


@pytest.mark.parametrize(
    ("failures", "says"),
    [
        (
            {
                "default": "'overlay' is not supported over overlayfs, a mount_program is required",
                "fuse-overlayfs": NOT_PERMITTED,
                "vfs": NOT_PERMITTED,
            },
            "its mounts are not permitted in this container: run the container with --privileged",
        ),
        (
            {"default": READ_ONLY_CGROUP, "vfs": READ_ONLY_CGROUP},
            "the cgroup file system is read-only in this container: run the container with "
            "--privileged",
        ),
        (
            {"default": "write /var/tmp/x: no space left on device"},
            "no space left for its images: free about 2 GB under /var/tmp",
        ),
    ],
)
def test_where_no_storage_works_the_report_gets_one_line_naming_what_to_provide(
    failures: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        # Rootless without user namespaces names those first; the tests run as root here.
        monkeypatch.setattr(podman_storage, "user_namespaces", lambda: True)
    monkeypatch.setattr(podman_storage, "LOG", tmp_path / "probe.log")
    line = explain(failures)
    assert "\n" not in line
    assert line.startswith("podman cannot run a container here: ")
    assert says in line
    assert line.endswith(f"(see docs/containers.md; podman's errors: {tmp_path / 'probe.log'})")
    # podman's own errors are kept, whole, in the file the line names.
    assert (tmp_path / "probe.log").read_text().splitlines() == [
        f"{name}: {error}" for name, error in failures.items()
    ]
