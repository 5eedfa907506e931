"""Serving against peers: the same artifact's top-k served by our service, by Ray Serve and by LitServe,
driven by the same open-loop load generator at the same offered rates in one run.

What each server answers: a user id -> the top-20 item ids (with scores and ranks) from the user's stored
history, seen items excluded, in one JSON answer of the same shape. The peers serve ``_peer_model.TopK``
(``model/`` only: ``read_artifact``, ``model.score`` of the stored history and its stored fold-in state,
``mask_items``, ``top_k``) with the histories in their own process; ours is ``python -m service`` as
bench/serve_load.py launches it, with its defaults (no ``LD4MREC_MAX_BATCH`` & co: what a user gets, the
worker count included) and a throw-away redis-server as its history store (``--ours-store memory``: its
in-process store; the service then runs one worker). No request writes, so every server answers from the
training history. Before the load, each server's answers for ``--check-users`` users are compared with
``model.api``'s. The peers serve the precision ours reports in ``GET /model`` (``--peer-precision``).
Requests: ours and Ray ``GET /recommend/{user}?k=20``; LitServe ``POST /recommend``
``{"user_id": ..., "k": 20}`` (its endpoints take a JSON body); the same users in the same order for every
server.

The peers, each as its documentation recommends for throughput (see their launchers and BENCHMARKS.md):

- **Ray Serve** (``_peer_ray.py``): ``@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)``,
  ``num_replicas`` = cores with one CPU each, ``max_ongoing_requests=256``,
  ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` and the HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``;
  ``--ray-no-haproxy``: its Python proxy).
- **LitServe** (``_peer_litserve.py``): ``LitAPI(max_batch_size=64, batch_timeout=0.002)``,
  ``workers_per_device`` = cores on the CPU, ``fast_queue=True``, ``num_api_servers`` at its default.

Method, per server in turn (``--servers``, default all three; a peer whose package is not installed is
skipped and says so): start it, check its answers, warm it up (closed loop, 8 clients), measure its idle
CPU, then the **open-loop ladder** ``--rates`` (the same for every server; request i scheduled at
t0 + i/rate, latency from the scheduled time: no coordinated omission; ``bench/_httpload.py`` in its own
process, on the same cores) until ``--patience`` steps in a row no longer keep up (an error, p50 > 50 ms
or < 95 % of the offered rate answered), then ``--refine`` bisection steps between its highest rate with
p99 <= 50 ms and the next one; for ours one more step under py-spy (``--profile``); then stop it (the
whole process tree). Per step: p50/p95/p99, achieved req/s, errors, and the CPU of the server's
**process tree** (every process it started: Ray's GCS, raylet, proxy, replicas, HAProxy; LitServe's API
servers and workers; our service and its workers, plus its redis-server) in cores (CPU seconds / wall)
and ms per request, and the load generator's.

Per server: ``max_rps_p99_under_50ms`` (the highest achieved req/s of a step with p99 <= 50 ms and no
error), ``max_rps_p50_under_50ms`` (the looser bar), p50/p99, errors and CPU at the **common rate** (the
highest ladder rate every server passed; else the lowest ladder rate), ``errors`` over all its steps
(overload steps included), idle CPU, memory (PSS of the tree after the warm-up). Headline:
``ratio_to_best_peer`` = ours' ``max_rps_p99_under_50ms`` / the best peer's (null when no peer ran), and
``ratio_to_best_peer_p50`` on the looser bar.

    python bench/serve_peers.py --artifact DIR          # full -> bench/results/serve_peers_full.json
    python bench/serve_peers.py --quick --artifact DIR  # < 15 min (2 cores) -> bench/results/serve_peers.json
    python bench/serve_peers.py --quick --servers ours  # ours only (what CI can run without the extras)

Without ``--artifact`` the artifact is serve_load's (cached trained sports one, else an untrained one of
that shape in ``--quick``). The peers need ``pip install -e '.[bench-peers]'``. The last line of stdout
is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from _loadgen import Request, run_step, summarise
from _machine import display_path, load_start_mean_max, loadavg, machine_info, write_json
from _proctree import process_tree, tree_cpu_seconds, tree_pss_mib
from _profile import start_profiler, summarise_profile
from _serve_stack import free_port, start_redis, start_service
from model.artifact import read_artifact
from serve_load import SPORTS_DIR, code_state, resolve_artifact, utc_now

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"
SLO_MS = 50.0
K = 20
SERVERS = ("ours", "ray", "litserve")
PEERS = ("ray", "litserve")
PEER_MODULES = {"ray": "ray.serve", "litserve": "litserve"}
QUICK_RATES = (25, 40, 63, 100, 160, 250, 400, 630, 1000, 1600)  # x ~1.58 per step
FULL_RATES = (20, 30, 45, 68, 100, 150, 225, 340, 500, 750, 1100, 1700, 2500)  # x 1.5
PEER_MAX_BATCH = 64  # the same bound as our service's default LD4MREC_MAX_BATCH
PEER_WAIT_MS = 2.0  # and its default LD4MREC_MAX_WAIT_MS
RAY_MAX_ONGOING = 256
Log = Callable[[str], None]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peer_missing(name: str) -> str | None:
    """Why peer ``name`` cannot run here (its package is not installed), else None."""
    module = PEER_MODULES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{module} is not installed (pip install -e '.[bench-peers]')"


# -- the servers ---------------------------------------------------------------------------------------------
@dataclass
class Server:
    """A running server: its root process (whose tree is measured), base URL, how a request for a user
    looks, and how it is stopped."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    base_url: str
    settings: dict[str, Any]
    post_body: bool = False  # LitServe: POST /recommend {"user_id", "k"}; else GET /recommend/{user}?k=
    extra_pids: list[int] = field(default_factory=list)  # measured with the tree (ours' redis-server)
    stop_grace_s: float = 10.0
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    own_session: bool = False  # started with start_new_session=True: its process group is its own

    def request(self, user_id: str) -> Request:
        if self.post_body:
            return Request("get", "POST", "/recommend", {"user_id": user_id, "k": K})
        return Request("get", "GET", f"/recommend/{user_id}?k={K}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid) + sum(tree_cpu_seconds(p) for p in self.extra_pids)

    def pss_mib(self) -> float | None:
        parts = [tree_pss_mib(self.proc.pid), *(tree_pss_mib(p) for p in self.extra_pids)]
        known = [p for p in parts if p is not None]
        return round(sum(known), 1) if known else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> list[int]:
        """SIGTERM the root, wait ``stop_grace_s``, then SIGKILL whatever of its tree is left; returns the
        pids the tree had (for the caller's check that they are gone)."""
        pids = process_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=self.stop_grace_s)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.own_session:  # everything it started, also what its exit orphaned (LitServe's workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in set(pids) - {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for stop in self.stoppers:
            stop()
        return pids


def _spawn(
    name: str, cmd: list[str], workdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return proc, log_path


def _peer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD4MREC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_until_answers(server: Server, user_id: str, timeout_s: float) -> None:
    """Until the server answers a recommendation for ``user_id`` with 200 (or its process dies)."""
    deadline = time.monotonic() + timeout_s
    req = server.request(user_id)
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited at start (rc {server.proc.returncode}):\n{server.log_tail()}"
            )
        try:
            resp = httpx.request(req.method, server.base_url + req.url, json=req.body, timeout=5.0)
            if resp.status_code == 200 and resp.json().get("items"):
                return
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise RuntimeError(
        f"{server.name} did not answer within {timeout_s:.0f} s (last: {last}):\n{server.log_tail()}"
    )


def start_ours(artifact: Path, store: str, workdir: Path, extra_env: dict[str, str]) -> Server:
    """Our service as serve_load starts it, with its own defaults (no batching settings, no API key)
    unless ``extra_env`` (``--ours-env``) sets some."""
    redis = None
    redis_url = None
    if store == "redis":
        redis, redis_url = start_redis(workdir)
    try:
        service, base_url = start_service(artifact, redis_url, None, "", workdir, extra_env=extra_env)
    except BaseException:
        if redis is not None:
            redis.stop()
        raise
    settings: dict[str, Any] = {
        "store": store,
        "defaults": "the service's own (no LD4MREC_MAX_BATCH / _MAX_WAIT_MS / ...)",
        "env": extra_env,
    }
    with contextlib.suppress(httpx.HTTPError, ValueError):
        info = httpx.get(f"{base_url}/model", timeout=5.0).json()
        settings["precision"] = info.get("precision")
    server = Server("ours", service.proc, service.log_path, base_url, settings, stop_grace_s=10.0)
    if redis is not None:
        server.extra_pids.append(redis.pid)
        server.stoppers.append(redis.stop)
    return server


def start_ray(artifact: Path, workdir: Path, n: int, haproxy: bool, precision: str) -> Server:
    port = free_port()
    env = _peer_env() | {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if haproxy:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    cmd = [sys.executable, str(BENCH_DIR / "_peer_ray.py"), "--artifact", str(artifact), "--port", str(port)]
    cmd += ["--replicas", str(n), "--max-batch", str(PEER_MAX_BATCH), "--wait-ms", str(PEER_WAIT_MS)]
    cmd += ["--max-ongoing", str(RAY_MAX_ONGOING), "--precision", precision]
    proc, log_path = _spawn("ray", cmd, workdir, env)
    settings = {
        "num_replicas": n,
        "ray_actor_options": {"num_cpus": 1},
        "torch_threads_per_replica": 1,
        "max_ongoing_requests": RAY_MAX_ONGOING,
        "serve.batch": {"max_batch_size": PEER_MAX_BATCH, "batch_wait_timeout_s": PEER_WAIT_MS / 1e3},
        "env": {
            k: env[k] for k in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY") if k in env
        },
        "ingress": "HAProxy" if haproxy else "Ray Serve's Python proxy",
        "precision": precision,
    }
    return Server(
        "ray", proc, log_path, f"http://127.0.0.1:{port}", settings, stop_grace_s=40.0, own_session=True
    )


def start_litserve(artifact: Path, workdir: Path, n: int, precision: str) -> Server:
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "_peer_litserve.py"), "--artifact", str(artifact)]
    cmd += ["--port", str(port), "--workers", str(n), "--max-batch", str(PEER_MAX_BATCH)]
    cmd += ["--wait-ms", str(PEER_WAIT_MS), "--precision", precision]
    proc, log_path = _spawn("litserve", cmd, workdir, _peer_env())
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "workers_per_device": n,
        "torch_threads_per_worker": 1,
        "fast_queue": True,
        "num_api_servers": f"default (= inference workers, {n})",
        "LitAPI": {"max_batch_size": PEER_MAX_BATCH, "batch_timeout": PEER_WAIT_MS / 1e3},
        "precision": precision,
    }
    return Server(
        "litserve",
        proc,
        log_path,
        f"http://127.0.0.1:{port}",
        settings,
        post_body=True,
        stop_grace_s=8.0,
        own_session=True,
    )


def reference_answers(artifact: Path, users: Sequence[str], precision: str) -> dict[str, list[str]]:
    """Top-20 item ids of ``users`` from ``model.api`` (the model layer's public API, another code path
    than the peers' and ours), in ``precision``."""
    from model.api import TrainedRecommender

    art = read_artifact(artifact)
    art.model = art.model.with_precision(precision)
    rec = TrainedRecommender(art)
    return {u: [item.item_id for item in rec.recommend(u, k=K)] for u in users}


def agreement(server: Server, reference: dict[str, list[str]]) -> dict[str, Any]:
    """How far the server's top-20 matches ``reference``: mean overlap of the item sets (|a & b| / 20) and
    the share of users with the identical ranked list; any non-200 answer counts as no overlap."""
    overlaps, identical = [], 0
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for user, expected in reference.items():
            req = server.request(user)
            resp = client.request(req.method, req.url, json=req.body)
            got = [i["item_id"] for i in resp.json()["items"]] if resp.status_code == 200 else []
            overlaps.append(len(set(got) & set(expected)) / max(1, len(expected)))
            identical += got == expected
    n = len(reference)
    return {
        "users": n,
        "mean_overlap": round(float(np.mean(overlaps)), 4) if n else None,
        "identical_share": round(identical / n, 4) if n else None,
    }


# -- steps ---------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Step lengths and the load."""

    step_s: float  # shortest open-loop step
    min_requests: int  # an open-loop step lasts min_requests / rate, between step_s and 3 * step_s
    warmup_s: float
    idle_s: float
    timeout_s: float
    drain_s: float
    users: list[str]
    seed: int

    def open_step_s(self, rate: float) -> float:
        return min(3 * self.step_s, max(self.step_s, self.min_requests / rate))

    def user_stream(self, n: int, salt: int) -> list[str]:
        """``n`` users drawn uniformly (the same for every server at the same rate and salt)."""
        rng = np.random.default_rng([self.seed, salt])
        return [self.users[i] for i in rng.integers(len(self.users), size=n).tolist()]


def passes_slo(step: dict[str, Any]) -> bool:
    """p99 <= 50 ms and no error: the figure the issue asks for."""
    return step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= SLO_MS


def keeps_up(step: dict[str, Any]) -> bool:
    """The looser bar that ends a ladder: no error, p50 <= 50 ms and >= 95 % of the offered rate answered
    (on a loaded machine p99 breaks long before the server saturates; the ladder goes on to show where)."""
    return (
        step["errors"] == 0
        and step["p50_ms"] is not None
        and step["p50_ms"] <= SLO_MS
        and step["achieved_rps"] >= 0.95 * step["offered_rps"]
    )


async def measured_step(server: Server, rate: float, plan: Plan, workdir: Path) -> dict[str, Any]:
    """One open-loop step at ``rate`` req/s, with the server tree's and the load generator's CPU."""
    users = plan.user_stream(max(1, round(rate * plan.open_step_s(rate))), salt=int(rate * 10))
    requests = [server.request(u) for u in users]
    cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
    step, gen_cpu_s = await asyncio.to_thread(
        run_step,
        server.base_url,
        {},
        requests,
        "open",
        rate,
        drain_s=plan.drain_s,
        timeout_s=plan.timeout_s,
        workdir=workdir,
    )
    wall = time.perf_counter() - wall0
    used = server.cpu_seconds() - cpu0
    out = {"offered_rps": rate, **summarise(step)}
    out.pop("per_kind", None)  # one kind of request
    answered = max(1, out["sent"] - step.unfinished)
    out["cpu_cores"] = {"server": round(used / wall, 3), "loadgen": round(gen_cpu_s / wall, 3)}
    out["cpu_ms_per_request"] = {
        "server": round(1e3 * used / answered, 3),
        "loadgen": round(1e3 * gen_cpu_s / answered, 3),
    }
    out["wall_s"] = round(wall, 2)
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    await asyncio.to_thread(settle, server, plan.users[0])
    return out


def settle(server: Server, user_id: str, max_s: float = 10.0) -> None:
    """Until one recommendation comes back within 25 ms (an overloaded step leaves a backlog)."""
    req = server.request(user_id)
    deadline = time.monotonic() + max_s
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                client.request(req.method, req.url, json=req.body)
            if time.perf_counter() - t0 < 0.025:
                return
            time.sleep(0.3)


def step_line(name: str, s: dict[str, Any]) -> str:
    p50 = f"{s['p50_ms']:.1f}" if s["p50_ms"] is not None else "-"
    p99 = f"{s['p99_ms']:.1f}" if s["p99_ms"] is not None else "-"
    return (
        f"  {name:<8} {s['offered_rps']:>7.1f} rps: achieved {s['achieved_rps']:>7.1f}/s  p50 {p50:>7} ms  "
        f"p99 {p99:>7} ms  errors {s['errors']:>4}  cpu server/gen {s['cpu_cores']['server']:.2f}/"
        f"{s['cpu_cores']['loadgen']:.2f} cores  load {s['loadavg_1m']}" + ("" if passes_slo(s) else "  FAIL")
    )


async def ladder(
    server: Server, rates: Sequence[float], patience: int, refine: int, plan: Plan, workdir: Path, log: Log
) -> list[dict[str, Any]]:
    """The common rates upwards until ``patience`` steps in a row fail to keep up (:func:`keeps_up`), then
    ``refine`` bisections between the highest rate that passed the SLO and the next one run."""
    steps: list[dict[str, Any]] = []
    misses = 0
    for rate in rates:
        step = await measured_step(server, float(rate), plan, workdir)
        steps.append(step)
        log(step_line(server.name, step))
        misses = 0 if keeps_up(step) else misses + 1
        if misses >= patience:
            break
    passed = [s["offered_rps"] for s in steps if passes_slo(s)]
    best = max(passed) if passed else None
    above = [s["offered_rps"] for s in steps if best is not None and s["offered_rps"] > best]
    fail = min(above) if above else None  # the first rate above the best passing one (it failed)
    for _ in range(refine):
        if best is None or fail is None or fail / best < 1.08:
            break
        rate = round(float(np.sqrt(best * fail)), 1)
        step = await measured_step(server, rate, plan, workdir)
        step["refine"] = True
        steps.append(step)
        log(step_line(server.name, step) + "  (refine)")
        if passes_slo(step):
            best = rate
        else:
            fail = rate
    return sorted(steps, key=lambda s: s["offered_rps"])


async def profile_step(
    server: Server,
    steps: Sequence[dict[str, Any]],
    rates: Sequence[float],
    plan: Plan,
    workdir: Path,
    log: Log,
) -> dict[str, Any]:
    """One more open-loop step under py-spy (``_profile``; one profiler per process of the server's tree),
    at the server's highest passing ladder rate (else the lowest ladder rate): where its CPU goes, by
    thread and by layer of the stack, per process."""
    passing = [s["offered_rps"] for s in steps if passes_slo(s) and not s.get("refine")]
    rate = max(passing) if passing else float(min(rates))
    seconds = plan.open_step_s(rate)
    files = {pid: workdir / f"profile-{server.name}-{pid}.txt" for pid in process_tree(server.proc.pid)}
    profilers = {pid: start_profiler(pid, seconds, path) for pid, path in files.items()}
    if any(p is None for p in profilers.values()):
        return {"error": "py-spy not found next to the Python executable (pip install py-spy)"}
    try:
        step = await measured_step(server, rate, plan, workdir)
        for prof in profilers.values():
            if prof is not None:
                prof.communicate(timeout=seconds + 30)
    finally:
        for prof in profilers.values():
            if prof is not None and prof.poll() is None:
                prof.kill()
                prof.wait()
    log(step_line(server.name, step) + "  (profiled)")
    out: dict[str, Any] = {"rate": rate, "step": step, "processes": {}}
    for pid, path in files.items():
        if not path.is_file():
            out["processes"][str(pid)] = {"error": "py-spy wrote nothing"}
            continue
        keep = CACHE_DIR / f"serve_peers_profile_{server.name}_{len(out['processes'])}.txt"
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(path.read_bytes())
        summary = summarise_profile(path, seconds)
        out["processes"][str(pid)] = {"folded_stacks": display_path(keep), **summary}
        if summary.get("samples"):
            log(
                "    busy % of one core: "
                + ", ".join(f"{k} {v}" for k, v in summary["thread_busy_pct_of_one_core"])
            )
            log("    by layer %:         " + "; ".join(f"{k} {v}" for k, v in summary["by_layer_pct"]))
    return out


async def warm_up(server: Server, plan: Plan, workdir: Path) -> None:
    requests = [server.request(u) for u in plan.user_stream(4000, salt=1)]
    await asyncio.to_thread(
        run_step,
        server.base_url,
        {},
        requests,
        "closed",
        8,
        duration_s=plan.warmup_s,
        timeout_s=plan.timeout_s,
        workdir=workdir,
    )


async def run_server(
    name: str,
    args: argparse.Namespace,
    artifact: Path,
    plan: Plan,
    peer_precision: str,
    reference_for: Callable[[str], dict[str, list[str]]],
    workdir: Path,
    log: Log,
) -> dict[str, Any]:
    """Start one server, warm it, measure its idle CPU and the ladder, stop it (always)."""
    n = args.workers or cores()
    t0 = time.perf_counter()
    log(f"\n[{name}] starting")
    if name == "ours":
        server = start_ours(artifact, args.ours_store, workdir, args.ours_env)
    elif name == "ray":
        server = start_ray(artifact, workdir, n, not args.ray_no_haproxy, peer_precision)
    else:
        server = start_litserve(artifact, workdir, n, peer_precision)
    record: dict[str, Any] = {"server": name, "settings": server.settings}
    try:
        await asyncio.to_thread(wait_until_answers, server, plan.users[0], args.start_timeout_s)
        record["start_s"] = round(time.perf_counter() - t0, 1)
        precision = str(server.settings.get("precision") or "fp32")
        reference = await asyncio.to_thread(reference_for, precision)
        record["top20_vs_model_api"] = {
            "precision": precision,
            **await asyncio.to_thread(agreement, server, reference),
        }
        await warm_up(server, plan, workdir)
        cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(plan.idle_s)
        record["idle_cpu_cores"] = round((server.cpu_seconds() - cpu0) / (time.perf_counter() - wall0), 3)
        record["pss_mib"] = server.pss_mib()
        record["processes"] = len(process_tree(server.proc.pid)) + len(server.extra_pids)
        agree = record["top20_vs_model_api"]
        log(
            f"  ready in {record['start_s']:.1f} s, warmed up; {record['processes']} processes, "
            f"PSS {record['pss_mib']} MiB, idle CPU {record['idle_cpu_cores']} cores; top-20 vs model.api "
            f"on {agree['users']} users: overlap {agree['mean_overlap']}, "
            f"identical {agree['identical_share']}"
        )
        record["open_loop"] = await ladder(server, args.rates, args.patience, args.refine, plan, workdir, log)
        if name == "ours" and args.profile:
            record["profile"] = await profile_step(
                server, record["open_loop"], args.rates, plan, workdir, log
            )
    finally:
        record["pids"] = server.stop()
        record["pids"] += server.extra_pids
    return record


# -- summary -------------------------------------------------------------------------------------------------
def max_passing(
    steps: Sequence[dict[str, Any]], bar: Callable[[dict[str, Any]], bool] = passes_slo
) -> dict[str, Any] | None:
    passing = [s for s in steps if bar(s)]
    return max(passing, key=lambda s: s["achieved_rps"]) if passing else None


def common_rate(records: Sequence[dict[str, Any]], rates: Sequence[float]) -> float:
    """The highest ladder rate every server passed (p99 SLO); else the highest every server kept up with
    (:func:`keeps_up`); else the lowest ladder rate."""
    for bar in (passes_slo, keeps_up):
        passed = [
            {s["offered_rps"] for s in r["open_loop"] if bar(s) and not s.get("refine")} for r in records
        ]
        every = set.intersection(*passed) if passed else set()
        if every:
            return max(every)
    return float(min(rates))


def server_figures(record: dict[str, Any], common: float) -> dict[str, Any]:
    steps = record["open_loop"]
    best = max_passing(steps)
    at = next((s for s in steps if s["offered_rps"] == common and not s.get("refine")), None)
    up = max_passing(steps, keeps_up)
    return {
        "max_rps_p99_under_50ms": best["achieved_rps"] if best else 0.0,
        "max_rps_p50_under_50ms": up["achieved_rps"] if up else 0.0,
        "offered_rps_at_max": best["offered_rps"] if best else None,
        "p50_ms_at_max": best["p50_ms"] if best else None,
        "p99_ms_at_max": best["p99_ms"] if best else None,
        "cpu_cores_at_max": best["cpu_cores"]["server"] if best else None,
        "cpu_ms_per_request_at_max": best["cpu_ms_per_request"]["server"] if best else None,
        "p50_ms_at_common_rate": at["p50_ms"] if at else None,
        "p99_ms_at_common_rate": at["p99_ms"] if at else None,
        "errors_at_common_rate": at["errors"] if at else None,
        "cpu_cores_at_common_rate": at["cpu_cores"]["server"] if at else None,
        "cpu_ms_per_request_at_common_rate": at["cpu_ms_per_request"]["server"] if at else None,
        "errors": sum(s["errors"] for s in steps),
        "steps": len(steps),
        "idle_cpu_cores": record.get("idle_cpu_cores"),
        "top20_overlap_vs_model_api": (record.get("top20_vs_model_api") or {}).get("mean_overlap"),
        "pss_mib": record.get("pss_mib"),
        "start_s": record.get("start_s"),
    }


def print_table(
    records: Sequence[dict[str, Any]], figures: dict[str, dict[str, Any]], common: float, log: Log
) -> None:
    log(
        f"\n{'server':<9} {'max rps':>8} {'p50@max':>8} {'p99@max':>8} {'cpu@max':>8} "
        f"{'p50@' + format(common, 'g'):>9} {'p99@' + format(common, 'g'):>9} "
        f"{'cpu@' + format(common, 'g'):>9} "
        f"{'errors':>6} {'idle cpu':>8} {'PSS MiB':>8}"
    )
    for r in records:
        f = figures[r["server"]]

        def num(v: Any, fmt: str = ".1f") -> str:
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        log(
            f"{r['server']:<9} {num(f['max_rps_p99_under_50ms']):>8} {num(f['p50_ms_at_max']):>8} "
            f"{num(f['p99_ms_at_max']):>8} {num(f['cpu_cores_at_max'], '.2f'):>8} "
            f"{num(f['p50_ms_at_common_rate']):>9} {num(f['p99_ms_at_common_rate']):>9} "
            f"{num(f['cpu_cores_at_common_rate'], '.2f'):>9} {f['errors']:>6} "
            f"{num(f['idle_cpu_cores'], '.2f'):>8} {num(f['pss_mib'], '.0f'):>8}"
        )


# -- main ----------------------------------------------------------------------------------------------------
def parse_rates(text: str) -> list[float]:
    rates = sorted({float(r) for r in text.split(",") if r.strip()})
    if not rates or rates[0] <= 0:
        raise argparse.ArgumentTypeError(f"--rates wants positive req/s, comma-separated, got {text!r}")
    return rates


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--quick", action="store_true", help="short run (< 15 min on 2 cores): fewer rates, shorter steps"
    )
    p.add_argument("--artifact", type=Path, default=None, help="artifact directory (default: serve_load's)")
    p.add_argument("--data", type=Path, default=SPORTS_DIR, help="dataset of the default artifact")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, in run order, of {', '.join(SERVERS)} (a peer not installed is skipped)",
    )
    p.add_argument(
        "--rates", type=parse_rates, default=None, help="the open-loop ladder, req/s (same for all)"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="failing steps in a row that end a ladder (quick 1, full 2)",
    )
    p.add_argument(
        "--refine", type=int, default=None, help="bisection steps after the ladder (quick 1, full 2)"
    )
    p.add_argument("--step-s", type=float, default=None, help="shortest open-loop step, s (quick 4, full 8)")
    p.add_argument(
        "--min-requests", type=int, default=None, help="requests per step, at least (quick 400, full 1000)"
    )
    p.add_argument(
        "--warmup-s", type=float, default=None, help="closed-loop warm-up per server (quick 3, full 5)"
    )
    p.add_argument(
        "--idle-s", type=float, default=None, help="seconds of idle CPU measured per server (quick 3, full 5)"
    )
    p.add_argument("--timeout-s", type=float, default=5.0, help="client timeout per request (an error)")
    p.add_argument("--start-timeout-s", type=float, default=300.0, help="bound on a server's start")
    p.add_argument("--workers", type=int, default=0, help="Ray replicas / LitServe workers (0: the cores)")
    p.add_argument(
        "--ours-store",
        choices=("memory", "redis"),
        default="redis",
        help="our history store: a throw-away redis-server (default; the production setting, and the one "
        "with which the service runs its default worker count) or the in-process one",
    )
    p.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="LD4MREC_NAME=VALUE",
        help="a setting of our service on top of its defaults (repeatable; default: none)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="py-spy our service during one more step at its highest passing rate (default: on)",
    )
    p.add_argument(
        "--peer-precision",
        default=None,
        help="what the peers serve (Recommender.with_precision; default: what ours serves, per its "
        "GET /model, fp32 without ours)",
    )
    p.add_argument("--check-users", type=int, default=32, help="users of the top-20 check against model.api")
    p.add_argument(
        "--ray-no-haproxy", action="store_true", help="Ray Serve's Python proxy instead of HAProxy"
    )
    p.add_argument(
        "--train-timeout-s", type=float, default=1800, help="bound on building the default artifact"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/serve_peers.json; full: _full)",
    )
    args = p.parse_args(argv)
    args.rates = args.rates or list(QUICK_RATES if args.quick else FULL_RATES)
    try:
        args.ours_env = dict(kv.split("=", 1) for kv in args.ours_env)
    except ValueError:
        p.error("--ours-env wants LD4MREC_NAME=VALUE")
    args.patience = args.patience or (1 if args.quick else 2)
    args.refine = args.refine if args.refine is not None else (1 if args.quick else 2)
    args.step_s = args.step_s or (4.0 if args.quick else 8.0)
    args.min_requests = args.min_requests or (400 if args.quick else 1000)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (3.0 if args.quick else 5.0)
    args.idle_s = args.idle_s if args.idle_s is not None else (3.0 if args.quick else 5.0)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SERVERS]
    if unknown or not names:
        p.error(f"--servers: unknown {unknown} (known: {', '.join(SERVERS)})")
    args.server_names = list(dict.fromkeys(names))
    return args


def main(argv: Sequence[str] | None = None, log: Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out or RESULTS_DIR / ("serve_peers.json" if args.quick else "serve_peers_full.json")
    command = "python " + shlex.join(sys.argv if argv is None else ["bench/serve_peers.py", *argv])
    machine = machine_info(torch.device("cpu"))
    started, t_start = utc_now(), time.monotonic()
    log(
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']} cpus, {machine['memory_gib']} GiB, "
        f"load avg {machine['loadavg_1_5_15_at_start']}"
    )
    skipped = {n: why for n in args.server_names if n in PEERS and (why := peer_missing(n)) is not None}
    for name, why in skipped.items():
        log(f"[{name}] skipped: {why}")
    names = [n for n in args.server_names if n not in skipped]

    choice = resolve_artifact(args, log)
    art = read_artifact(choice.path)
    log(
        f"artifact: {choice.path} ({choice.origin}): {art.n_users} users, {art.n_items} items, "
        f"{art.model_version}"
    )
    if choice.note:
        log(f"NOTE: {choice.note}")
    users = [art.user_ids[u] for u in np.nonzero(np.diff(art.train_histories.indptr) > 0)[0].tolist()]
    n_items = art.n_items
    del art
    plan = Plan(
        args.step_s,
        args.min_requests,
        args.warmup_s,
        args.idle_s,
        args.timeout_s,
        args.timeout_s + 1.0,
        users,
        args.seed,
    )
    check_users = plan.user_stream(args.check_users, salt=2)
    references: dict[str, dict[str, list[str]]] = {}

    def reference_for(precision: str) -> dict[str, list[str]]:
        if precision not in references:
            references[precision] = reference_answers(choice.path, check_users, precision)
        return references[precision]

    records: list[dict[str, Any]] = []
    peer_precision = args.peer_precision or "fp32"
    with tempfile.TemporaryDirectory(prefix="serve-peers-") as tmp:
        for name in names:
            record = asyncio.run(
                run_server(name, args, choice.path, plan, peer_precision, reference_for, Path(tmp), log)
            )
            records.append(record)
            served = record["settings"].get("precision")
            if name == "ours" and args.peer_precision is None and served:
                peer_precision = str(served)  # the peers serve what ours serves
                log(f"  ours serves {served}: so will the peers")

    common = common_rate(records, args.rates)
    figures = {r["server"]: server_figures(r, common) for r in records}
    peers_run = [n for n in figures if n in PEERS]
    best_peer = max(peers_run, key=lambda n: figures[n]["max_rps_p99_under_50ms"], default=None)
    ours = figures.get("ours")
    ratio = None
    if ours is not None and best_peer is not None and figures[best_peer]["max_rps_p99_under_50ms"] > 0:
        ratio = round(ours["max_rps_p99_under_50ms"] / figures[best_peer]["max_rps_p99_under_50ms"], 3)
    ratio_p50 = None
    best_peer_p50 = max(peers_run, key=lambda n: figures[n]["max_rps_p50_under_50ms"], default=None)
    if (
        ours is not None
        and best_peer_p50 is not None
        and figures[best_peer_p50]["max_rps_p50_under_50ms"] > 0
    ):
        ratio_p50 = round(
            ours["max_rps_p50_under_50ms"] / figures[best_peer_p50]["max_rps_p50_under_50ms"], 3
        )
    loads = [s["loadavg_1m"] for r in records for s in r["open_loop"]]
    machine["loadavg_1_5_15_at_end"] = loadavg()
    headline: dict[str, Any] = {
        "ratio_to_best_peer": ratio,
        "best_peer": best_peer,
        "ours_max_rps_p99_under_50ms": ours["max_rps_p99_under_50ms"] if ours else None,
        "best_peer_max_rps_p99_under_50ms": figures[best_peer]["max_rps_p99_under_50ms"]
        if best_peer
        else None,
        "ratio_to_best_peer_p50": ratio_p50,
        "common_rate": common,
        "servers": figures,
        "skipped": skipped,
        "mode": "quick" if args.quick else "full",
        "artifact": choice.origin,
        "n_items": n_items,
        "loadavg_1m_start_mean_max": load_start_mean_max(machine, loads),
        "json": display_path(out),
    }
    if choice.note:
        headline["note"] = choice.note
    payload = {
        "benchmark": "serve_peers",
        "date": started,
        "command": command,
        "mode": headline["mode"],
        "seconds": round(time.monotonic() - t_start, 1),
        "code": code_state(),
        "machine": machine,
        "versions": versions(),
        "artifact": {"path": display_path(choice.path), "origin": choice.origin, "note": choice.note},
        "method": {
            "slo_ms": SLO_MS,
            "k": K,
            "rates": args.rates,
            "patience": args.patience,
            "refine": args.refine,
            "step_s": args.step_s,
            "open_step_s": f"min(3 * step_s, max(step_s, {args.min_requests} / rate))",
            "timeout_s": args.timeout_s,
            "requests": "ours and Ray: GET /recommend/{user}?k=20; LitServe: POST /recommend "
            '{"user_id": user, "k": 20}; users uniform over the training users with a history, the same '
            "sequence per rate for every server",
            "client": "bench/_httpload.py, one process per step, open loop, keep-alive pool "
            "max(16, min(256, rate/10)), on the same cores as the servers (not pinned)",
            "cpu": "per step: CPU seconds of the server's process tree (root, descendants, its session; "
            "utime+stime+cutime+cstime from /proc) / the step's wall time = cores used",
            "common_rate": "the highest ladder rate every server passed (p99 <= 50 ms, no error); else the "
            "lowest ladder rate",
            "top20_vs_model_api": f"per server, before the warm-up: the answers for {args.check_users} "
            "users vs model.api's recommend(user, k=20) (mean set overlap, identical ranked lists)",
        },
        "servers": records,
        "headline": headline,
    }
    write_json(payload, out)
    print_table(records, figures, common, log)
    log(
        f"\nours {ours['max_rps_p99_under_50ms'] if ours else '-'} req/s at p99 <= {SLO_MS:g} ms; best peer "
        f"{best_peer} {figures[best_peer]['max_rps_p99_under_50ms'] if best_peer else '-'}; "
        f"ratio_to_best_peer {ratio}"
    )
    log(f"wrote {display_path(out)} in {payload['seconds']:.0f} s")
    log(json.dumps(headline))
    return payload


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "fastapi", "uvicorn", "ray", "litserve", "starlette", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    main()
