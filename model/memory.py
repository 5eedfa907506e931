"""How much memory a fit may use: what the device has available now (models refuse, before allocating
anything, a fit that would not fit, and say what would)."""

from __future__ import annotations

import torch

__all__ = ["available_bytes", "gib"]


def available_bytes(device: torch.device | None = None) -> int | None:
    """Free bytes of a CUDA device (``torch.cuda.mem_get_info``), else the host's ``MemAvailable``
    (/proc/meminfo, Linux); None when unknown."""
    if device is not None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n_bytes: float) -> str:
    """``n_bytes`` as e.g. ``"7.6 GiB"``."""
    return f"{n_bytes / 2**30:.1f} GiB"
