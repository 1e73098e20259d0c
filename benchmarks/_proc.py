"""Shared by the benchmarks (not one itself): CPU time of a process tree from Linux /proc."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU seconds of a process and, optionally, its live descendants (a gateway
    started with gateway.workers > 1 is a parent and its worker processes)."""
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if descendants:
                for task in Path(f"/proc/{p}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited between the listing and the read
    return total
