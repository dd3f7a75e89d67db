"""The machine a benchmark ran on, reported beside its figures: int8's gain depends on the CPU's VNNI support."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from postlens.runtime.cores import usable_cores


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model and its flags that speed up int8 or bf16 dot products (VNNI, AVX-512 BF16, AMX) from
    /proc/cpuinfo."""
    model, flags = platform.processor(), []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = [flag for flag in value.split() if "vnni" in flag or "bf16" in flag or flag.startswith("amx")]
            break
    return model, flags


def machine() -> dict[str, object]:
    cpu_model, dot_product_flags = cpu_info()
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu_model": cpu_model,
        "dot_product_flags": dot_product_flags,
        "memory_gb": round(memory_kb / 2**20, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
