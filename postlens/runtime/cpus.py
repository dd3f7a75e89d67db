"""How many CPUs this process may use: the container's CPU limit, not the node's core count.

ONNX Runtime sizes its thread pool by the cores it sees, which in a container with a CPU limit (a cgroup quota) are
the node's: a pod limited to 4 CPUs on a 64-core node would start 64 threads and be throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_*``)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(root: Path) -> float | None:
    """Quota ÷ period in CPUs, or None for no limit (or no cgroup file to read)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()  # v2: "max 100000" or "400000 100000"
    except (OSError, ValueError):
        try:  # v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1: no limit
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)
