"""What the benchmarks read of their servers from ``/proc``: process trees, CPU time, RSS."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import redis

CLK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int, most: int = 1000) -> list[int]:
    """``pid`` and every process below it (at most ``most``)."""
    out, todo = [], [pid]
    while todo and len(out) < most:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def workers_of(pid: int) -> list[int]:
    """The worker processes under a ``serve`` supervisor (multiprocessing spawns)."""
    out = []
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) of one process, or None once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def rss_mb(pids: list[int]) -> float:
    return sum(rss_kib(p) or 0 for p in pids) / 1024


def valkey_memory(url: str, pid: int, n: int) -> str:
    """Valkey's ``used_memory`` and resident memory, per identifier of ``n``."""
    r = redis.Redis.from_url(url)
    try:
        used = int(r.info("memory")["used_memory"])
    finally:
        r.close()
    rss = rss_mb([pid]) * 2**20
    return (
        f"used_memory {used / n:.0f} B/identifier, VmRSS {rss / n:.0f} B/identifier "
        f"({rss / 2**20:,.0f} MiB)"
    )
