"""Memory of a process and everything it started, as benchmarks report it."""

from __future__ import annotations

import psutil


def tree_rss_bytes(process: psutil.Process) -> int:
    """RSS of ``process`` and all its descendants (workers, decode pools), bytes; a process
    that ends while being listed counts 0. Shared pages count once per process: an upper bound
    on the physical memory, which is what a machine must be sized for."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total
