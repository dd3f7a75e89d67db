"""ONNX Runtime's threads follow the container's CPU limit (cgroup quota), never more than the CPUs it may run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postlens.runtime.cpus import available_cpus

VISIBLE = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: str, period: str = "100000") -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return tmp_path


@pytest.mark.parametrize("cpu_max, expected", [("100000 100000", 1), ("50000 100000", 1), ("150000 100000", 2)])
def test_a_cgroup_v2_limit_caps_the_threads(tmp_path: Path, cpu_max: str, expected: int) -> None:
    assert available_cpus(cgroup_v2(tmp_path, cpu_max)) == min(expected, VISIBLE)


def test_a_cgroup_v1_limit_caps_the_threads(tmp_path: Path) -> None:
    assert available_cpus(cgroup_v1(tmp_path, "100000")) == 1


def test_no_limit_means_the_cpus_the_process_may_run_on(tmp_path: Path) -> None:
    assert available_cpus(cgroup_v2(tmp_path, "max 100000")) == VISIBLE
    (tmp_path / "v1").mkdir()
    assert available_cpus(cgroup_v1(tmp_path / "v1", "-1")) == VISIBLE
    assert available_cpus(tmp_path / "no-cgroup-here") == VISIBLE


def test_a_limit_above_the_visible_cpus_is_capped_by_them(tmp_path: Path) -> None:
    assert available_cpus(cgroup_v2(tmp_path, f"{(VISIBLE + 8) * 100000} 100000")) == VISIBLE
