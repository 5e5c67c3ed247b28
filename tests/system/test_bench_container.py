"""How the image's benchmark row finds and reads a container's CPU time (``bench/container.py``).

The layouts are those of real machines: cgroup v2 alone, and the hybrid v1 setup of the benchmark
VM (where podman's cgroup has a ``cpu.stat`` in the unified hierarchy too). The last test reads
this process's own cgroup for real.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.container import cgroup_cpu_file, cgroup_cpu_seconds, context_digest
from bench.processes import Unavailable

SCOPE = "/libpod_parent/libpod-b6e858b3"
HYBRID_CGROUP = f"""\
9:name=systemd:{SCOPE}
2:cpuacct:{SCOPE}
1:cpu:{SCOPE}
0::{SCOPE}
"""
HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V1_MOUNTS = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"


def test_cgroup_v2_reads_cpu_stat_under_the_unified_mount() -> None:
    found = cgroup_cpu_file(
        "0::/machine.slice/libpod-1.scope/container\n",
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev 0 0\n",
    )

    assert found == Path("/sys/fs/cgroup/machine.slice/libpod-1.scope/container/cpu.stat")


def test_hybrid_setup_prefers_the_unified_cpu_stat() -> None:
    assert cgroup_cpu_file(HYBRID_CGROUP, HYBRID_MOUNTS) == Path(
        f"/sys/fs/cgroup/unified{SCOPE}/cpu.stat"
    )


def test_cgroup_v1_alone_reads_cpuacct_usage_of_a_joined_controller_mount() -> None:
    found = cgroup_cpu_file(f"3:cpu,cpuacct:{SCOPE}\n1:name=systemd:/\n", V1_MOUNTS)

    assert found == Path(f"/sys/fs/cgroup/cpu,cpuacct{SCOPE}/cpuacct.usage")


def test_no_cpu_accounting_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        cgroup_cpu_file("1:name=systemd:/\n", "proc /proc proc rw 0 0\n")


def test_usage_is_seconds_from_usage_usec_or_nanoseconds() -> None:
    stat = "usage_usec 246752\nuser_usec 202250\nsystem_usec 44501\n"

    assert cgroup_cpu_seconds(stat, kind="cpu.stat") == pytest.approx(0.246752)
    assert cgroup_cpu_seconds("246765835\n", kind="cpuacct.usage") == pytest.approx(0.246765835)
    with pytest.raises(ValueError):
        cgroup_cpu_seconds("user_usec 1\n", kind="cpu.stat")


def test_this_process_cgroup_counts_at_least_the_cpu_it_burns() -> None:
    path = cgroup_cpu_file(
        Path("/proc/self/cgroup").read_text(), Path("/proc/self/mounts").read_text()
    )
    before = cgroup_cpu_seconds(path.read_text(), kind=path.name)
    own_before = time.process_time()
    while time.process_time() - own_before < 0.2:
        pass
    burned = time.process_time() - own_before

    after = cgroup_cpu_seconds(path.read_text(), kind=path.name)

    assert after - before >= burned * 0.9


def test_the_image_tag_changes_with_the_build_context_and_the_base(tmp_path: Path) -> None:
    (tmp_path / "proxy").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "proxy" / "a.py").write_text("x = 1\n")
    first = context_digest(tmp_path, "base-1")
    (tmp_path / "proxy" / "__pycache__").mkdir()
    (tmp_path / "proxy" / "__pycache__" / "a.pyc").write_bytes(os.urandom(8))

    assert context_digest(tmp_path, "base-1") == first, "bytecode is not in the context"
    assert context_digest(tmp_path, "base-2") != first
    (tmp_path / "proxy" / "a.py").write_text("x = 2\n")
    assert context_digest(tmp_path, "base-1") != first
