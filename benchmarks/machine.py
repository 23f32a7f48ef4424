"""What machine a benchmark ran on: its figures are printed with the CPU model and cores."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """``/proc/cpuinfo``'s model name (e.g. "AMD EPYC"), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """Cores, CPU model, memory and OS in one line."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu_model()}), {memory:.0f} GiB RAM, {platform.platform()}"
