"""The process tree of a server started by a benchmark (bench/serve_peers.py): which processes it is, the
CPU seconds and memory they use, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_tree", "tree_cpu_seconds", "tree_pss_mib"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # gone (or not ours to read)


def process_tree(root: int) -> list[int]:
    """``root``, its descendants, and (when ``root`` leads a session, e.g. a process started with
    ``start_new_session=True``) every process of that session, from /proc."""
    parent: dict[int, int] = {}
    session: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parent[int(entry.name)] = int(fields[1])  # ppid (field 4 of stat)
            session[int(entry.name)] = int(fields[3])  # session id (field 6)
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    tree |= {pid for pid, sid in session.items() if sid == root}
    return sorted(tree)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of :func:`process_tree` (``root``): user + system of each process, plus those of its
    exited and reaped children (so a worker that exits during a step is not lost)."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def tree_pss_mib(root: int) -> float | None:
    """Proportional set size of :func:`process_tree` (``root``) in MiB (shared pages split between the
    processes that map them, so the sum is the tree's real footprint); None if /proc does not say."""
    total_kib, seen = 0, False
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    seen = True
                    break
        except OSError:
            continue
    return round(total_kib / 1024, 1) if seen else None
