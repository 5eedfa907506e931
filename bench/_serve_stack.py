"""The processes bench/serve_load.py measures: a throw-away redis-server and the service (``python -m
service``) on loopback, plus what is read from them between steps (CPU time, Prometheus counters), and
whether a cached artifact is one the service can load (:func:`is_current_artifact`).

Both are started as subprocesses on free ports and must be stopped with :meth:`ManagedProcess.stop`
(SIGTERM, then SIGKILL after a grace period), which the caller does in a ``finally`` block.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from model.artifact import FORMAT_VERSION
from model.precision import PRECISIONS

__all__ = [
    "ManagedProcess",
    "ServiceConfig",
    "cpu_seconds",
    "free_port",
    "process_tree",
    "is_current_artifact",
    "scrape_histograms",
    "start_redis",
    "start_service",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_current_artifact(path: Path) -> bool:
    """Whether ``path`` holds an artifact manifest of the format this code reads (a cached or demo artifact
    may be older; the service would refuse it). Only the manifest's format is checked: the service verifies
    the rest when it loads."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format_version") == FORMAT_VERSION


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (e.g. the service's supervisor and its worker processes)."""
    pids, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    frontier += [int(c) for c in (task / "children").read_text().split()]
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its live descendants (all their
    threads; the service's worker processes), from /proc."""
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLOCK_TICKS


@dataclass
class ManagedProcess:
    """A subprocess with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait ``grace_s``, then SIGKILL; a process already gone is fine."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace_s)


def _spawn(name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    log_file = log_path.open("wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    finally:
        log_file.close()  # the child holds its own descriptor
    return ManagedProcess(name, proc, log_path)


def start_redis(workdir: Path, timeout_s: float = 10.0) -> tuple[ManagedProcess, str]:
    """redis-server on a free loopback port, no persistence; returns the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--daemonize", "no"]
    redis = _spawn("redis-server", cmd, workdir / "redis.log")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if redis.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited at start:\n{redis.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return redis, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    redis.stop()
    raise RuntimeError(f"redis-server did not answer PING within {timeout_s} s:\n{redis.log_tail()}")


@dataclass(frozen=True)
class ServiceConfig:
    """The service settings the benchmark varies (``LD4MREC_MAX_BATCH``, ``_MAX_WAIT_MS``,
    ``_TORCH_THREADS``, ``_PRECISION``; 0 threads = torch's default, one per core)."""

    max_batch: int
    max_wait_ms: float
    torch_threads: int
    precision: str = "fp32"

    @classmethod
    def parse(cls, text: str) -> ServiceConfig:
        """``"MAX_BATCH:MAX_WAIT_MS:TORCH_THREADS[:PRECISION]"``, e.g. ``"64:2:1"`` (fp32) or
        ``"64:0:1:int8"``; PRECISION is one of :data:`model.precision.PRECISIONS`."""
        usage = f"--config wants MAX_BATCH:MAX_WAIT_MS:TORCH_THREADS[:PRECISION], got {text!r}"
        fields = text.split(":")
        if len(fields) not in (3, 4):
            raise ValueError(usage)
        precision = fields[3].strip() if len(fields) == 4 else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"{usage}: PRECISION is one of {', '.join(PRECISIONS)}")
        try:
            return cls(int(fields[0]), float(fields[1]), int(fields[2]), precision)
        except ValueError:
            raise ValueError(usage) from None

    @property
    def spec(self) -> str:
        """The ``--config`` text of this configuration, precision always included (``"64:2:1:fp32"``)."""
        return f"{self.max_batch}:{self.max_wait_ms:g}:{self.torch_threads}:{self.precision}"

    @property
    def label(self) -> str:
        return (
            f"max_batch={self.max_batch} max_wait_ms={self.max_wait_ms:g} torch_threads={self.torch_threads} "
            f"precision={self.precision}"
        )

    def env(self) -> dict[str, str]:
        return {
            "LD4MREC_MAX_BATCH": str(self.max_batch),
            "LD4MREC_MAX_WAIT_MS": str(self.max_wait_ms),
            "LD4MREC_TORCH_THREADS": str(self.torch_threads),
            "LD4MREC_PRECISION": self.precision,
        }


def start_service(
    artifact: Path,
    redis_url: str | None,
    config: ServiceConfig | None,
    api_key: str,
    workdir: Path,
    device: str = "cpu",
    timeout_s: float = 180.0,
    workers: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """``python -m service`` on a free loopback port with the Redis history store (``redis_url`` None: its
    in-process store), ``config``'s settings (None: the service's own defaults), ``api_key`` ("" = none)
    and ``extra_env`` on top; waits until ``/readyz`` says ``ready`` (with several workers: every worker has
    loaded the model). ``workers``: ``LD4MREC_WORKERS`` (``None``: the service's default,
    one per usable CPU with Redis). Returns the process (the supervisor of the workers; :func:`cpu_seconds`
    counts them all) and its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")}
    env |= (config.env() if config is not None else {}) | {
        "LD4MREC_DEVICE": device,
        "LD4MREC_API_KEY": api_key,
        "PYTHONUNBUFFERED": "1",
    }
    if redis_url is not None:
        env["LD4MREC_REDIS_URL"] = redis_url
    if workers is not None:
        env["LD4MREC_WORKERS"] = str(workers)
    env |= extra_env or {}
    cmd = [sys.executable, "-m", "service", "--artifact", str(artifact), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    service = _spawn("service", cmd, workdir / f"service-{port}.log", env)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    try:
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited at start (rc {service.proc.returncode}):\n{service.log_tail()}"
                )
            try:
                resp = httpx.get(f"{base_url}/readyz", timeout=2.0)
                status = resp.json().get("status")
                if resp.status_code == 200 and status == "ready":
                    return service, base_url
                if status == "failed":
                    raise RuntimeError(f"the service refused the artifact: {resp.text}")
                last = resp.text
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
        raise RuntimeError(f"the service was not ready within {timeout_s} s (last /readyz: {last})")
    except BaseException:
        service.stop()
        raise


HISTOGRAMS = ("ld4mrec_batch_size", "ld4mrec_batch_queue_wait_seconds", "ld4mrec_model_forward_seconds")


def scrape_histograms(base_url: str) -> dict[str, tuple[float, float]]:
    """``{name: (sum, count)}`` of the service's batching histograms, from ``GET /metrics``."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    out: dict[str, list[float]] = {name: [0.0, 0.0] for name in HISTOGRAMS}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        for name in HISTOGRAMS:
            for suffix, slot in (("_sum", 0), ("_count", 1)):
                if line.startswith(name + suffix + " ") or line.startswith(name + suffix + "{"):
                    out[name][slot] += float(line.rsplit(" ", 1)[1])
    return {name: (v[0], v[1]) for name, v in out.items()}
