"""How many CPU cores this process may use: its affinity mask, capped by its cgroup's CPU quota.

A container limited to 2 CPUs on a 64-core node sees 64 cores in ``os.cpu_count()`` (and ONNX Runtime sizes its
default thread pool from the node), so 64 threads would take turns on 2 cores' worth of quota: sizing thread pools
from the quota avoids that throttling.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process may run on (affinity), at most its CPU quota rounded up; at least 1."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup_root, proc_cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota is not None else cores)


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in cores) of this process's cgroup and its ancestors, cgroup v2 or v1; None: none."""
    quotas = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":  # v2: cpu.max holds "quota period" or "max period"
            files: list[tuple[Path, Path | None]] = [
                (directory / "cpu.max", None) for directory in _ancestors(cgroup_root, path)
            ]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mount = cgroup_root / controllers
            files = [
                (directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us")
                for directory in _ancestors(mount, path)
            ]
        else:
            continue
        quotas += [quota for quota_file, period_file in files if (quota := _read_quota(quota_file, period_file))]
    return min(quotas, default=None)


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup directory of ``path`` under ``mount`` and every parent up to the mount (what exists of them)."""
    parts = [part for part in path.strip("/").split("/") if part]
    return [directory for n in range(len(parts), -1, -1) if (directory := mount.joinpath(*parts[:n])).is_dir()]


def _read_quota(quota_file: Path, period_file: Path | None) -> float | None:
    try:
        if period_file is None:
            quota, period = quota_file.read_text().split()
        else:
            quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)
