"""The service's request path apart from the model: CPU time of the event-loop thread per request.

Starts the service (one worker, the Redis history store, ``LD4MREC_MAX_BATCH`` etc. as the service
defaults) on an artifact (``--artifact``, else the untrained sports-shaped one bench/serve_load.py builds),
drives it with ``--clients`` closed-loop clients for ``--seconds`` with serve_load's request mix, and reads
from /proc the CPU time of the worker's *event-loop thread* (everything but the forward thread: HTTP
parsing, middleware, routing, validation, Redis, JSON) and of its *forward thread* (fold-in, forward,
masking, top-k), each per answered request. CPU time per request is far less sensitive than latency to
other processes sharing the machine (it is not wall time), so it compares two versions of the code on a
busy machine. ``--in-process N`` also sends N reads straight into the ASGI app in this process (no HTTP
parsing or sockets; the Redis store live) and reports this thread's CPU per read, ``--cprofile`` its
cProfile top entries (deterministic, unlike a sampling profiler on a busy machine).

    PYTHONPATH=. python bench/request_path.py [--artifact DIR] [--clients 16] [--seconds 20]
        [--in-process 3000 [--cprofile]]

The last line of stdout is one JSON object: ``event_loop_cpu_ms_per_request``,
``forward_cpu_ms_per_request``, ``requests``, ``rps``, errors, the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from _loadgen import Mix, RequestFactory, run_step, summarise
from _machine import loadavg
from _serve_stack import CLOCK_TICKS, ServiceConfig, process_tree, start_redis, start_service
from model.artifact import read_artifact

BENCH_DIR = Path(__file__).resolve().parent


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``comm``) of process ``pid``: ``MainThread`` is the event loop."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = "MainThread" if int(task.name) == pid else comm
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def worker_pid(supervisor: int) -> int:
    """The process that serves: the supervisor's worker when there is one, else the supervisor."""
    tree = process_tree(supervisor)
    for pid in tree[1:]:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return supervisor


def default_artifact() -> Path:
    """The untrained sports-shaped artifact of bench/serve_load.py --quick (built there when missing)."""
    from serve_load import CACHE_DIR, build_untrained, write_sports_shaped_dataset

    out = CACHE_DIR / "sports-untrained"
    if not (out / "manifest.json").is_file():
        data = write_sports_shaped_dataset(CACHE_DIR / "sports-synthetic", 0)
        build_untrained(data, out, 0)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--mix", default="get=0.9,write=0.05,cold=0.05")
    p.add_argument("--config", default="64:2:1", help="MAX_BATCH:MAX_WAIT_MS:TORCH_THREADS[:PRECISION]")
    p.add_argument(
        "--in-process",
        type=int,
        default=0,
        help="also send this many reads straight into the ASGI app in this process (no HTTP parsing): "
        "event-loop CPU per read, deterministic",
    )
    p.add_argument("--cprofile", action="store_true", help="cProfile the --in-process reads (top entries)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    artifact = args.artifact or default_artifact()
    art = read_artifact(artifact, mmap=True)
    users = [art.user_ids[u] for u in np.flatnonzero(np.diff(art.train_histories.indptr) > 0).tolist()]
    weights = np.asarray(art.item_popularity, dtype=np.float64) + 1.0
    factory = RequestFactory(users, art.item_ids, weights, Mix.parse(args.mix), args.seed)
    api_key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="request-path-") as tmp:
        workdir = Path(tmp)
        redis, url = start_redis(workdir)
        service = None
        try:
            cfg = ServiceConfig.parse(args.config)
            service, base = start_service(artifact, url, cfg, api_key, workdir, workers=1)
            pid = worker_pid(service.pid)
            headers = {"X-API-Key": api_key}
            run_step(base, headers, factory.make(2000), "closed", 8, duration_s=3.0, workdir=workdir)  # warm
            before, t0 = thread_cpu(pid), time.perf_counter()
            step, _ = run_step(
                base,
                headers,
                factory.make(200_000),
                "closed",
                args.clients,
                duration_s=args.seconds,
                workdir=workdir,
            )
            after, wall = thread_cpu(pid), time.perf_counter() - t0
            summary = summarise(step)
            answered = max(1, summary["sent"] - step.unfinished)
            loop_s = after.get("MainThread", 0) - before.get("MainThread", 0)
            # every other thread: the forward thread and torch's intra-op pool (Python 3.11 names no threads)
            fwd_s = sum(after.values()) - sum(before.values()) - loop_s
            result: dict[str, Any] = {
                "event_loop_cpu_ms_per_request": round(1e3 * loop_s / answered, 3),
                "other_threads_cpu_ms_per_request": round(1e3 * fwd_s / answered, 3),
                "requests": answered,
                "rps": round(answered / wall, 1),
                "errors": summary["errors"],
                "p50_ms": summary["p50_ms"],
                "p99_ms": summary["p99_ms"],
                "clients": args.clients,
                "config": args.config,
                "loadavg_1_5_15": loadavg(),
            }
        finally:
            if service is not None:
                service.stop()
            redis.stop()
    if args.in_process:
        result |= asyncio.run(in_process(artifact, users, args.in_process, args.cprofile))
    profile = result.pop("cprofile_cumulative_top", None)
    for key, value in result.items():
        print(f"{key}: {value}")
    if profile:
        print(profile)
    print(json.dumps(result))
    return result


async def _asgi_get(app: Any, path: str, api_key: str) -> int:
    """One ``GET path?k=20`` straight into the ASGI app (no HTTP parsing, no socket); its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"k=20",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"x-api-key", api_key.encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def in_process(artifact: Path, users: list[str], n: int, profile: bool) -> dict[str, Any]:
    """``n`` reads (16 at a time) into the app in this process, the Redis store live: CPU of this (the
    event-loop) thread per read, and with ``profile`` cProfile's top entries (cumulative)."""
    from service.app import create_app
    from service.settings import Settings

    api_key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="request-path-") as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            settings = Settings(
                artifact=artifact,
                redis_url=url,
                api_key=SecretStr(api_key),
                device="cpu",
                torch_threads=1,
                precision="fp32",
                workers=1,
            )
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                while app.state.recommender is None:
                    await asyncio.sleep(0.05)
                gate = asyncio.Semaphore(16)

                async def one(i: int) -> int:
                    async with gate:
                        return await _asgi_get(app, f"/recommend/{users[i % len(users)]}", api_key)

                await asyncio.gather(*(one(i) for i in range(200)))  # warm-up
                profiler = cProfile.Profile() if profile else None
                cpu0 = time.thread_time()
                if profiler is not None:
                    profiler.enable()
                codes = await asyncio.gather(*(one(i) for i in range(n)))
                if profiler is not None:
                    profiler.disable()
                cpu = time.thread_time() - cpu0
        finally:
            redis.stop()
    out: dict[str, Any] = {
        "in_process_event_loop_cpu_ms_per_request": round(1e3 * cpu / n, 3),
        "in_process_requests": n,
        "in_process_ok": sum(c == 200 for c in codes),
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        out["cprofile_cumulative_top"] = text.getvalue()
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
