"""Soak: the service under a fixed rate of mixed traffic for a bounded time; memory must not grow.

Starts its own ``redis-server`` (free loopback port, no persistence) and the service (``python -m service``,
Redis history store) as subprocesses, then sends requests at a fixed rate (open loop: a request is sent
every 1/rate s whether or not the earlier ones have been answered) for ``--duration`` seconds:

- 60 % ``GET /recommend/{user_id}`` (training users, and users this run created),
- 20 % ``POST /users/{user_id}/interactions`` (one item; 70 % training users, 30 % new users),
- 15 % ``POST /recommend`` (cold start, 1-10 items),
- 5 % ``POST /recommend/batch`` (8 users).

Every few seconds it samples the service's resident memory (``VmRSS`` of ``/proc/<pid>/status``).
Reported: errors (any answer but 200, or no answer), latency percentiles per kind, and the RSS growth
from the end of the warm-up (mean of the samples in the first 10 s after it) to the end (mean of the
last 10 s). The service is stopped with SIGTERM at the end and must exit 0.

    python bench/soak.py                    # 10 minutes at 40 requests/s -> bench/results/soak.json
    python bench/soak.py --quick            # 60 s (20 s warm-up), for CI
    python bench/soak.py --artifact DIR --rate 80 --duration 300

The last stdout line is one JSON object (the headline). Without ``--artifact``, ``artifacts/demo`` is used
when it exists in the current artifact format, else a demo artifact is trained into a temporary directory
(about a minute). ``--artifact`` may be an artifact of any registered model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from _machine import display_path, loadavg, machine_info, write_json
from _serve_stack import is_current_artifact

__all__ = ["ServiceStack", "percentiles", "rss_kib"]

REPO = Path(__file__).resolve().parents[1]
KINDS = ("read", "write", "cold_start", "batch")
MIX = (0.60, 0.20, 0.15, 0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of a process (KiB), from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max in milliseconds of latencies in seconds."""
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * ordered[-1], 2),
    }


class ServiceStack:
    """redis-server + ``python -m service`` on free loopback ports, in ``workdir`` (a context manager)."""

    def __init__(self, artifact: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.artifact = artifact
        self.workdir = workdir
        self.extra_env = env or {}
        self.redis_port, self.port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis: subprocess.Popen[bytes] | None = None
        self.service: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceStack:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.redis = subprocess.Popen(
            [redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")} | {
            "LD4MREC_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "LD4MREC_DEVICE": "cpu",
            "LD4MREC_TORCH_THREADS": "1",
        }
        self.log_path = self.workdir / "service.log"
        with self.log_path.open("wb") as log:
            self.service = subprocess.Popen(
                [sys.executable, "-m", "service", "--artifact", str(self.artifact), "--port", str(self.port)]
                + ["--no-access-log", "--log-level", "warning"],
                cwd=REPO,
                env=env | self.extra_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.service is not None
            if self.service.poll() is not None:
                raise SystemExit(f"the service exited ({self.service.returncode}):\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"the service was not ready within {timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.service is not None
        return self.service.pid

    def stop_service(self) -> int:
        """SIGTERM (graceful), SIGKILL after 30 s; the exit code."""
        assert self.service is not None
        if self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                return self.service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.service.kill()
        return self.service.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        for proc in (self.service, self.redis):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def demo_artifact(workdir: Path) -> Path:
    """``artifacts/demo`` when it exists in the current format, else a demo artifact trained into
    ``workdir`` (LD4MRec, 5 epochs)."""
    existing = REPO / "artifacts" / "demo"
    if is_current_artifact(existing):
        return existing
    out = workdir / "demo"
    print(f"training a demo artifact into {out} ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "training", "--data", "demo", "--out", str(out), "--epochs", "5", "--quiet"],
        cwd=REPO,
        check=True,
    )
    return out


@dataclass
class Load:
    """What the load generator saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)
    sent: int = 0


async def drive(
    base: str, user_ids: list[str], item_ids: list[str], rate: float, duration_s: float, seed: int
) -> Load:
    """Open-loop load at ``rate`` requests/s for ``duration_s``; every request is awaited at the end."""
    rng = random.Random(seed)
    load = Load()
    created: list[str] = []
    # idle connections expire before the server's 5 s keep-alive timeout: no reuse of a closing one
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(kind: str, n: int) -> None:
            if kind == "read":
                user = rng.choice(created) if created and rng.random() < 0.2 else rng.choice(user_ids)
                call = client.get(f"/recommend/{user}", params={"k": 20})
            elif kind == "write":
                user = rng.choice(user_ids) if rng.random() < 0.7 else f"soak-{seed}-{n}"
                call = client.post(f"/users/{user}/interactions", json={"item_ids": [rng.choice(item_ids)]})
            elif kind == "cold_start":
                history = rng.sample(item_ids, rng.randint(1, min(10, len(item_ids))))
                call = client.post("/recommend", json={"history": history, "k": 20})
            else:
                call = client.post("/recommend/batch", json={"user_ids": rng.sample(user_ids, 8), "k": 10})
            started = time.perf_counter()
            try:
                response = await call
            except httpx.HTTPError as exc:
                load.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                return
            load.latencies[kind].append(time.perf_counter() - started)
            if response.status_code != 200:
                load.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            elif kind == "write" and user.startswith("soak-"):
                created.append(user)  # later reads ask for it too

        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        interval = 1.0 / rate
        n = 0
        while loop.time() < start + duration_s:
            kind = rng.choices(KINDS, MIX)[0]
            tasks.append(asyncio.create_task(one(kind, n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - loop.time()))
            if len(tasks) > 2048:
                tasks = [t for t in tasks if not t.done()]
        load.sent = n
        await asyncio.gather(*tasks)
    return load


async def sample_rss(pid: int, every_s: float, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        samples.append((round(time.monotonic() - start, 2), rss_kib(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def growth(samples: list[tuple[float, int]], warmup_s: float, window_s: float = 10.0) -> dict[str, float]:
    """RSS (MiB) just after the warm-up and at the end (means over ``window_s``), and the growth (%)."""
    end_t = samples[-1][0]
    after = [kib for t, kib in samples if warmup_s <= t < warmup_s + window_s]
    last = [kib for t, kib in samples if t > end_t - window_s]
    warm, end = statistics.mean(after), statistics.mean(last)
    return {
        "rss_after_warmup_mib": round(warm / 1024, 1),
        "rss_end_mib": round(end / 1024, 1),
        "rss_max_mib": round(max(kib for _, kib in samples) / 1024, 1),
        "rss_growth_pct": round(100 * (end - warm) / warm, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="artifact directory (default: demo)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is baselined")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--quick", action="store_true", help="60 s with a 20 s warm-up (for CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON output (default bench/results/soak.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.sample_every = 60.0, 20.0, 1.0
    if args.duration < args.warmup + 20:
        parser.error("--duration must exceed --warmup by at least 20 s")
    out = args.out or REPO / "bench" / "results" / ("soak_quick.json" if args.quick else "soak.json")
    command = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_info(torch.device("cpu"))

    with tempfile.TemporaryDirectory(prefix="ld4mrec-soak-") as tmp:
        workdir = Path(tmp)
        artifact = args.artifact or demo_artifact(workdir)
        user_ids = json.loads((artifact / "user_ids.json").read_text())
        item_ids = json.loads((artifact / "item_ids.json").read_text())
        with ServiceStack(artifact, workdir) as stack:
            samples: list[tuple[float, int]] = []

            async def run() -> Load:
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_rss(stack.pid, args.sample_every, samples, stop))
                try:
                    return await drive(stack.base, user_ids, item_ids, args.rate, args.duration, args.seed)
                finally:
                    stop.set()
                    await sampler

            started = time.time()
            load = asyncio.run(run())
            elapsed = time.time() - started
            exit_code = stack.stop_service()
            log_tail = stack.log()[-2000:]

    answered = sum(len(v) for v in load.latencies.values())
    memory = growth(samples, args.warmup)
    headline = {
        "duration_s": args.duration,
        "rate_per_s": args.rate,
        "requests": load.sent,
        "answered": answered,
        "errors": len(load.errors),
        **memory,
        "p50_ms": percentiles([x for v in load.latencies.values() for x in v])["p50_ms"],
        "p99_ms": percentiles([x for v in load.latencies.values() for x in v])["p99_ms"],
        "service_exit_code": exit_code,
    }
    payload: dict[str, Any] = {
        "headline": headline,
        "latency_by_kind": {kind: {"n": len(v), **percentiles(v)} for kind, v in load.latencies.items()},
        "first_errors": load.errors[:20],
        "rss_samples_s_kib": samples,
        "warmup_s": args.warmup,
        "elapsed_s": round(elapsed, 1),
        "artifact": display_path(artifact) if args.artifact else "demo",
        "loadavg_1_5_15_at_end": loadavg(),
        "machine": machine,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "service_log_tail": log_tail if exit_code != 0 or load.errors else "",
    }
    write_json(payload, out)
    print(
        f"soak: {load.sent} requests in {args.duration:.0f} s at {args.rate:g}/s, {len(load.errors)} errors; "
        f"RSS {memory['rss_after_warmup_mib']} MiB after warm-up -> {memory['rss_end_mib']} MiB "
        f"({memory['rss_growth_pct']:+.2f} %); p50 {headline['p50_ms']} ms, p99 {headline['p99_ms']} ms"
    )
    for kind, stats in payload["latency_by_kind"].items():
        print(
            f"  {kind:<10} n={stats['n']:<6} p50 {stats['p50_ms']} ms  p95 {stats['p95_ms']} ms  "
            f"p99 {stats['p99_ms']} ms"
        )
    print(f"results: {display_path(out)}")
    print(json.dumps(headline))
    return 0 if not load.errors and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
