"""What every bench script records next to its figures: the machine, and atomic JSON output.

Shared by the scripts in ``bench/`` (they run as ``python bench/<script>.py``, so this module is imported
as ``_machine`` from the scripts' own directory).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["display_path", "loadavg", "machine_info", "write_json"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_start_mean_max(machine: dict[str, Any], loads: list[float]) -> list[float | None]:
    """[1-min load average at the start, mean and max of the per-step readings ``loads``] for a headline."""
    mean = round(sum(loads) / len(loads), 2) if loads else None
    return [machine["loadavg_1_5_15_at_start"][0], mean, max(loads, default=None)]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(device: torch.device) -> dict[str, Any]:
    """Cores, memory, CPU model, GPU, torch version and threads (of this process), load average."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_1_5_15_at_start": loadavg(),
    }


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(resolved)


def write_json(payload: dict[str, Any], path: Path) -> None:
    """Write atomically (``path.tmp``, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
