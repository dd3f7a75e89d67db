"""Thread pools are sized to the cores a container's CPU quota allows, not to the node's core count."""

from __future__ import annotations

import os
from pathlib import Path

from postlens.runtime.cores import cpu_quota, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, cpu_max: str) -> tuple[Path, Path]:
    """A cgroup v2 tree with this process in /pod/app, its parent /pod limited by ``cpu_max``."""
    (tmp_path / "pod" / "app").mkdir(parents=True)
    (tmp_path / "pod" / "cpu.max").write_text(cpu_max + "\n")
    (tmp_path / "pod" / "app" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/pod/app\n")
    return tmp_path, proc


def test_a_v2_quota_on_an_ancestor_caps_the_cores(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "150000 100000")
    assert cpu_quota(root, proc) == 1.5
    assert usable_cores(root, proc) == min(AFFINITY, 2)  # 1.5 cores: two threads, each partly


def test_a_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct" / "docker" / "abc").mkdir(parents=True)
    (tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cpu_quota(tmp_path, proc) == 1.0
    assert usable_cores(tmp_path, proc) == 1


def test_without_a_quota_every_core_of_the_affinity_mask_counts(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, "max 100000")
    assert cpu_quota(root, proc) is None
    assert usable_cores(root, proc) == AFFINITY
    assert usable_cores(tmp_path, tmp_path / "no-such-file") == AFFINITY
