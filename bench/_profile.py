"""Sampling profile of the running service for bench/serve_load.py: py-spy attached to its pid, and a
summary of the samples by thread, by layer of the stack (HTTP server, framework, Redis client, model...)
and by function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["RATE_HZ", "start_profiler", "summarise_profile"]

RATE_HZ = 100

# Innermost frames of a thread that waits (py-spy's own idle detection is not reliable in every VM, so
# these samples are dropped here): a pool worker waiting for work, the event loop waiting for sockets.
IDLE_LEAVES = frozenset(
    {
        ("Condition.wait", "threading.py"),
        ("Event.wait", "threading.py"),
        ("_worker", "concurrent/futures/thread.py"),
        ("EpollSelector.select", "selectors.py"),
        ("_wait_for_tstate_lock", "threading.py"),
    }
)

# Layers, matched on the normalised file path of a frame (see _frame). A sample is charged to the layer of
# its innermost frame that matches one (C code such as a torch kernel is charged to the Python line that
# called it, since py-spy runs without --native).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model forward (model/, torch)", ("model/", "torch/")),
    ("numpy / scipy", ("numpy/", "scipy/")),
    ("service engine (service/engine.py)", ("service/engine.py",)),
    ("redis client", ("redis/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("pydantic (validation, serialisation)", ("pydantic/", "pydantic_core/")),
    ("json", ("json/",)),
    ("FastAPI / Starlette / anyio", ("fastapi/", "starlette/", "anyio/")),
    ("uvicorn + h11 (HTTP protocol)", ("uvicorn/", "h11/", "httptools/")),
    ("service code (other)", ("service/",)),
    ("asyncio event loop, sockets", ("asyncio/", "selectors.py", "socket.py")),
    ("threads, futures", ("threading.py", "concurrent/", "queue.py")),
)


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` for ``seconds`` at RATE_HZ, raw collapsed stacks per thread, into
    ``out``; ``None`` when py-spy is not installed next to this Python. Non-blocking: the service is not
    paused to take a sample (less overhead, a few inconsistent stacks)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.is_file():
        return None
    cmd = [str(exe), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    cmd += ["--rate", str(RATE_HZ), "--format", "raw", "--threads", "--nonblocking", "--subprocesses"]
    cmd += ["--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame(frame: str) -> tuple[str, str]:
    """``"score (/x/site-packages/torch/nn/f.py:12)"`` -> ``("score", "torch/nn/f.py")``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/", "python3.12/", "python3.13/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return name, path


def _layer(frames: list[tuple[str, str]]) -> str:
    for _, path in reversed(frames):
        for layer, prefixes in LAYERS:
            if any(path.startswith(p) for p in prefixes):
                return layer
    return "other"


def _thread_name(frame: str) -> str:
    """``"thread (0x7f..): MainThread"`` -> ``"MainThread"``; thread-pool suffixes (``_0``) kept."""
    return frame.split(": ", 1)[1] if ": " in frame else frame


def summarise_profile(folded: Path, seconds: float, top: int = 12) -> dict[str, Any]:
    """Busy samples per thread (as % of one core over ``seconds``; threads of one name, e.g. a pool, are
    summed), and shares (% of all busy samples) per layer (all threads, and the event-loop thread alone)
    and per innermost function. Waiting samples (IDLE_LEAVES) are counted apart."""
    per_thread: dict[str, int] = {}
    layers: dict[str, int] = {}
    loop_layers: dict[str, int] = {}
    own: dict[str, int] = {}
    total = idle = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        at = next((i for i, f in enumerate(raw) if f.startswith("thread ")), -1)
        thread = _thread_name(raw[at]) if at >= 0 else "?"
        frames = [_frame(f) for f in raw[at + 1 :]]
        if frames and frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        layer = _layer(frames)
        per_thread[thread] = per_thread.get(thread, 0) + count
        layers[layer] = layers.get(layer, 0) + count
        if thread == "MainThread":
            loop_layers[layer] = loop_layers.get(layer, 0) + count
        leaf = f"{frames[-1][0]} ({frames[-1][1]})" if frames else "?"
        own[leaf] = own.get(leaf, 0) + count
        total += count

    def shares(d: dict[str, int], of: int, n: int | None = None) -> list[list[Any]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])
        return [[k, round(100 * v / max(of, 1), 1)] for k, v in ranked[:n]]

    loop_total = per_thread.get("MainThread", 0)
    return {
        "samples": total,
        "idle_samples_dropped": idle,
        "rate_hz": RATE_HZ,
        "seconds": seconds,
        "thread_busy_pct_of_one_core": shares(per_thread, int(RATE_HZ * seconds)),
        "by_layer_pct": shares(layers, total),
        "event_loop_thread_by_layer_pct": shares(loop_layers, loop_total),
        "self_pct": shares(own, total, top),
    }
