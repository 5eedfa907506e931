"""Serving under load: the HTTP service with a real Redis, driven by an open- and a closed-loop load
generator, next to the model's own limit measured in the same run.

What runs (all on loopback, every process stopped in a ``finally`` block):

1. The artifact: ``--artifact DIR`` (of any registered model), else a cached one under ``bench/.cache/``
   at the ``sports`` shape (35,598 users, 18,357 items, hidden 1000): LD4MRec trained 1 epoch on
   ``/work/shared/datasets/sports`` (``python -m training --epochs 1 --patience 1``; minutes, done once),
   or on a synthetic dataset of that size and history-length distribution when the dataset is absent.
   ``--quick`` without that cache uses an *untrained* (random-init) artifact of the same shape, built in
   seconds, and says so: the service does the same work for any weights. A cached artifact of an older
   format is rebuilt.
2. The model limit: the service path (``model.score``; LD4MRec's sparse first layer) forward + history
   masking + top-20 of a batch of 32 users (and of 1 user, what the service runs at low rates), exactly as
   ``bench/model_forward.py`` measures it (its functions are reused: ``service_variant``,
   ``measure_batch_size``), at fp32 and at every precision a configuration serves (int8:
   ``model.with_precision("int8")``, what ``LD4MREC_PRECISION=int8`` serves), the precisions interleaved
   on the same requests, in this process, before and after the load (pooled), with 1 torch thread,
   torch's default and every count the service configurations use; the ratios take the best thread
   count. With int8 served, the top-20 overlap int8 vs fp32 on the served artifact
   (``compare_precisions``, ``--overlap-users`` users) is reported too.
3. For each service configuration (``--config MAX_BATCH:MAX_WAIT_MS:TORCH_THREADS[:PRECISION]``, precision
   ``fp32`` by default or ``int8``, passed as ``LD4MREC_PRECISION`` and checked in ``GET /model``): a fresh
   ``redis-server`` database (``--save "" --appendonly no``) and ``python -m service`` (uvicorn) with
   ``LD4MREC_REDIS_URL``; a short warm-up; then **open-loop** steps: requests scheduled at a fixed rate
   whatever the answers do, latency measured from the scheduled send time (no coordinated omission),
   rates rising by ``--rate-factor`` from 30 % of the model's batch-1 users/s *at the configuration's
   precision* until p99 > 50 ms or an error, then ``--refine`` bisection steps between the last passing
   and the first failing rate. A step lasts long enough for ``--min-requests`` requests (a p99 needs
   samples), between 1 and 3 x ``--step-s``. With several configurations the sweep stops early enough to
   leave the closed loop its time.
4. On the best configuration: **closed-loop** steps with N = 1, 4, 16, 64 clients sending back to back;
   and (``--profile``, on in the full run) a py-spy profile of the service during one more closed-loop step
   (16 clients: the service saturated), summarised by thread, by layer of the stack and by function.

Requests: ``--mix`` of ``GET /recommend/{user}?k=20`` over random training users (default 90 %),
``POST /users/{user}/interactions`` with one popularity-drawn item (5 %) and cold-start ``POST /recommend``
with a 5-item history (5 %); per-kind figures are reported. Every request carries ``X-API-Key`` (the
service runs with ``LD4MREC_API_KEY`` set). An error is any answer other than 2xx, a timeout
(``--timeout-s``) or a transport failure.

Reported per step: p50 / p95 / p99 / max latency, achieved throughput (2xx answers per second of the
step), errors, and the CPU used by the service, Redis and the load generator (which share the cores;
in % of one core and in ms per request),
the service's mean batch size, queue wait and forward time (from its ``/metrics``). Per configuration:
``max_rps_p99_under_50ms`` = the highest achieved throughput among open-loop steps with p99 <= 50 ms and
no error (all request kinds counted); ``ratio_service_to_model_same_precision`` = that / the model's users
per second at batch 32 *at the configuration's precision* (best thread count); ``ratio_service_to_model``
= that / the **fp32** model's users per second at batch 32 (ratio (a) as worded: service throughput at
p99 <= 50 ms over the raw model's at batch 32). Headline: the configuration with the highest
``max_rps_p99_under_50ms`` (``best_config``, its ``--config`` text, and ``best_precision``), its
``max_rps_p99_under_50ms``, ``ratio_service_to_model`` (vs fp32), ``ratio_service_to_model_same_precision``,
``ratio_service_to_model_batch1`` (vs the fp32 model at batch 1), ``p50_ms`` / ``p99_ms`` of that step;
``errors`` = errors over every step of the run, overload steps included; ``per_config`` repeats the three
figures of every configuration; ``top20_overlap_int8_vs_fp32`` when int8 is served.

Default configurations: full ``64:2:0 64:2:1 64:0:0 64:0:1:int8 64:2:1:int8 32:1:1:int8 64:8:0`` (fp32
then int8; 64:8:0 last, the first cut when the time budget runs short); quick ``64:2:0``, the service
defaults (fp32, the product's default precision): ``--quick --config 64:0:1:int8`` for a quick int8 run.

    python bench/serve_load.py            # full run (~9-10 min) -> bench/results/serve_load.{json,png}
    python bench/serve_load.py --quick    # < 3 min -> bench/results/serve_load_quick.{json,png}
    python bench/serve_load.py --quick --config 64:0:1:int8   # the same, int8 served

The last line of stdout is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from _loadgen import Mix, RequestFactory, run_step, summarise
from _machine import display_path, load_start_mean_max, loadavg, machine_info, write_json
from _profile import start_profiler, summarise_profile
from _serve_stack import (
    ManagedProcess,
    ServiceConfig,
    cpu_seconds,
    is_current_artifact,
    scrape_histograms,
    start_redis,
    start_service,
)
from model.artifact import Artifact, read_artifact
from model.precision import PRECISIONS
from model.registry import DEFAULT_MODEL
from model_forward import (
    SPORTS_DIR,
    SPORTS_ITEMS,
    SPORTS_USERS,
    TimingPlan,
    Variant,
    Workload,
    compare_precisions,
    measure_batch_size,
    request_pool,
    service_variant,
    synthetic_histories,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"
SLO_MS = 50.0
MODEL_BATCH = 32  # the ratio's reference
MODEL_BATCHES = (1, MODEL_BATCH)  # batch 1: what the service runs at low rates
CLOSED_CLIENTS = (1, 4, 16, 64)
# fp32 (3 fields) and int8; 64:8:0 last: the first cut if the time budget runs short (worst in earlier runs)
FULL_CONFIGS = ("64:2:0", "64:2:1", "64:0:0", "64:0:1:int8", "64:2:1:int8", "32:1:1:int8", "64:8:0")
QUICK_CONFIGS = ("64:2:0",)  # the service defaults (LD4MREC_PRECISION defaults to fp32)
OVERLAP_BATCH = 256
Log = Callable[[str], None]


# -- artifact ------------------------------------------------------------------------------------------------
@dataclass
class ArtifactChoice:
    """The artifact served, how it came about, and a note for the output when it is not the 18k sports one."""

    path: Path
    origin: str
    build_s: float | None = None
    note: str | None = None


def write_sports_shaped_dataset(directory: Path, seed: int) -> Path:
    """A synthetic dataset in the MMRec layout at the sports size: train histories as in model_forward
    (length min 3, mean ~6, Zipf-like popularity), plus one valid and one test click per user."""
    rng = np.random.default_rng(seed)
    train = synthetic_histories(SPORTS_USERS, SPORTS_ITEMS, rng)
    held_out = rng.integers(SPORTS_ITEMS, size=(SPORTS_USERS, 2))
    lines = ["userID\titemID\tx_label"]
    coo = train.tocoo()
    lines += [f"{u}\t{i}\t0" for u, i in zip(coo.row.tolist(), coo.col.tolist(), strict=True)]
    for u, (valid, test) in enumerate(held_out.tolist()):
        if not train[u, valid] and valid != test:
            lines.append(f"{u}\t{valid}\t1")
        if not train[u, test]:
            lines.append(f"{u}\t{test}\t2")
    unseen = np.setdiff1d(np.arange(SPORTS_ITEMS), coo.col)  # every item id occurs at least once
    lines += [f"{int(rng.integers(SPORTS_USERS))}\t{i}\t0" for i in unseen.tolist()]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{directory.name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def build_untrained(data_dir: Path, out: Path, seed: int) -> Path:
    """A random-init LD4MRec artifact (default hyperparameters) for ``data_dir``: the model as ``create``
    builds it (signal basis and user states fixed as the trainer fixes them), no epoch, no metrics."""
    from model.base import FitContext
    from model.registry import get_model
    from training.config import RunConfig
    from training.dataset import load_dataset
    from training.export import export_artifact
    from training.trainer import TrainResult, training_data

    data = load_dataset(data_dir)
    run = RunConfig(seed=seed, epochs=1)
    cls = get_model(DEFAULT_MODEL)
    model = cls.create(cls.config_class(), training_data(data), FitContext(seed=seed))
    return export_artifact(TrainResult(model=model, best_epoch=0, metrics={}), data, run, out)


def resolve_artifact(args: argparse.Namespace, log: Log) -> ArtifactChoice:
    if args.artifact is not None:
        return ArtifactChoice(args.artifact, f"given (--artifact {args.artifact})")
    if (args.data / f"{args.data.name}.inter").is_file():
        data_dir, data_name = args.data, args.data.name
    else:
        data_name = "synthetic-sports-shape"
        data_dir = CACHE_DIR / data_name
        if not (data_dir / f"{data_name}.inter").is_file():
            log(f"{args.data} not found: writing a synthetic dataset at the sports size to {data_dir}")
            write_sports_shaped_dataset(data_dir, args.seed)
    trained = CACHE_DIR / f"{data_name}-e1"
    build_note = CACHE_DIR / f"{data_name}-e1.build.json"
    if is_current_artifact(trained):
        built = json.loads(build_note.read_text()) if build_note.is_file() else {}
        return ArtifactChoice(
            trained, f"{data_name}, trained 1 epoch (cached {display_path(trained)})", built.get("seconds")
        )
    if args.quick:
        untrained = CACHE_DIR / f"{data_name}-untrained"
        t0 = time.perf_counter()
        if not is_current_artifact(untrained):
            log(f"quick: no cached trained artifact; building an untrained one at {display_path(untrained)}")
            build_untrained(data_dir, untrained, args.seed)
        note = (
            f"quick run: UNTRAINED (random-init) artifact at the {data_name} shape, as no trained one is "
            f"cached yet (the full run trains {display_path(trained)} once); the service does the same work"
        )
        return ArtifactChoice(untrained, f"{data_name}, untrained", time.perf_counter() - t0, note)
    cmd = [sys.executable, "-m", "training", "--data", str(data_dir), "--out", str(trained)]
    cmd += ["--epochs", "1", "--patience", "1", "--quiet"]
    log(f"building the benchmark artifact once (minutes on 2 cores): {shlex.join(cmd)}")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=args.train_timeout_s)
    seconds = round(time.perf_counter() - t0, 1)
    write_json({"command": shlex.join(cmd), "seconds": seconds, "date": utc_now()}, build_note)
    log(f"artifact built in {seconds:.0f} s")
    return ArtifactChoice(trained, f"{data_name}, trained 1 epoch (built now)", seconds)


# -- model limit ---------------------------------------------------------------------------------------------
def model_workload(art: Artifact) -> Workload:
    """The artifact's model (as read, on the CPU), its stored user states and training histories."""
    histories = art.train_histories
    return Workload(
        model=art.model,
        histories=histories,
        states=art.user_states,
        users=np.nonzero(np.diff(histories.indptr) > 0)[0],
        source=f"artifact {art.path}",
        weights=f"artifact {art.model_version}",
        user_ids=art.user_ids,
    )


def model_precisions(configs: Sequence[ServiceConfig]) -> list[str]:
    """The precisions whose model limit is measured: fp32 (the reference of ``ratio_service_to_model``)
    and every precision a configuration serves, in the order of ``PRECISIONS``."""
    served = {"fp32"} | {c.precision for c in configs}
    return [p for p in PRECISIONS if p in served]


ModelLatencies = dict[tuple[str, int, int], list[float]]  # (precision, torch threads, batch) -> seconds


def measure_model(
    variants: Sequence[Variant], work: Workload, thread_counts: Sequence[int], plan: TimingPlan, seed: int
) -> ModelLatencies:
    """Latencies (s) of the service path's requests (``service_variant``) per (precision, torch threads,
    batch) for MODEL_BATCHES; the precisions are interleaved on the same requests (``measure_batch_size``)."""
    rng = np.random.default_rng(seed)
    pools = {b: request_pool(work, b, n_batches=16, rng=rng) for b in MODEL_BATCHES}
    out = {}
    default_threads = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch, pool in pools.items():
                measured = measure_batch_size(variants, pool, batch, plan, torch.device("cpu"))
                for v, m in zip(variants, measured, strict=True):
                    out[v.precision, threads, batch] = m.latencies_s
    finally:
        torch.set_num_threads(default_threads)
    return out


def model_summary(latencies_s: Sequence[float], precision: str, threads: int, batch: int) -> dict[str, Any]:
    lat = np.asarray(latencies_s)
    p50, p99 = np.percentile(lat, [50, 99])
    return {
        "precision": precision,
        "threads": threads,
        "batch": batch,
        "repeats": int(lat.size),
        "median_ms": round(float(p50) * 1e3, 3),
        "p99_ms": round(float(p99) * 1e3, 3),
        "users_per_s": round(batch / float(p50), 1),
    }


def model_rows(model_lat: ModelLatencies) -> list[dict[str, Any]]:
    """One summary per (precision, threads, batch), ordered by precision, batch, threads."""
    order = sorted(model_lat, key=lambda k: (PRECISIONS.index(k[0]), k[2], k[1]))
    return [model_summary(model_lat[p, t, b], p, t, b) for p, t, b in order]


def model_best(rows: Sequence[dict[str, Any]], precision: str, batch: int) -> dict[str, Any]:
    """The row of ``precision`` at ``batch`` with the most users/s (the best thread count)."""
    return max(
        (r for r in rows if r["precision"] == precision and r["batch"] == batch),
        key=lambda r: r["users_per_s"],
    )


def model_line(model_lat: ModelLatencies) -> str:
    return "; ".join(
        f"{r['precision']} batch {r['batch']} {r['threads']} threads {r['users_per_s']:.0f} users/s "
        f"({r['median_ms']:.1f} ms)"
        for r in model_rows(model_lat)
    )


def served_overlap(
    variants: Sequence[Variant], work: Workload, n_users: int, seed: int
) -> dict[str, Any] | None:
    """Top-20 of each reduced precision vs fp32 on the served artifact (``compare_precisions``), over
    ``n_users`` random users with a history, 1 torch thread; None when only fp32 is served."""
    if len(variants) < 2 or n_users <= 0:
        return None
    users = np.random.default_rng(seed).permutation(work.users)[:n_users]
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compared = compare_precisions(variants, work, users, torch.device("cpu"), batch=OVERLAP_BATCH)
    finally:
        torch.set_num_threads(default_threads)
    return {"users": int(len(users)), "batch": OVERLAP_BATCH, "weights": work.weights, **compared}


# -- one service session -------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Time bounds: per step, for the drain after an open-loop step, and a deadline for the whole run."""

    step_s: float  # shortest step (closed loop: every step)
    min_requests: int  # an open-loop step lasts min_requests / rate, between step_s and 3 * step_s
    drain_s: float
    deadline: float  # time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def open_step_s(self, rate: float) -> float:
        return min(3 * self.step_s, max(self.step_s, self.min_requests / rate))


class Session:
    """A running service (+ its Redis) and the bookkeeping of one step: CPU and server-side histograms."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        service: ManagedProcess,
        redis: ManagedProcess,
        factory: RequestFactory,
        timeout_s: float,
        client_cpus: Sequence[int] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.base_url = base_url
        self.headers = {"X-API-Key": api_key}
        self.service = service
        self.redis = redis
        self.factory = factory
        self.timeout_s = timeout_s
        self.client_cpus = client_cpus
        self.workdir = workdir

    async def run_step(self, kind: str, level: float, budget: Budget) -> dict[str, Any]:
        """One open-loop step at ``level`` requests/s or closed-loop step with ``level`` clients."""
        if kind == "open":
            requests = self.factory.make(max(1, int(round(level * budget.open_step_s(level)))))
        else:
            requests = self.factory.make(max(64, int(1000 * budget.step_s)))
        before = self._counters()
        wall0 = time.perf_counter()
        step, loadgen_cpu_s = await asyncio.to_thread(
            run_step,
            self.base_url,
            self.headers,
            requests,
            kind,
            level,
            duration_s=budget.step_s,
            drain_s=budget.drain_s,
            timeout_s=self.timeout_s,
            cpus=self.client_cpus,
            workdir=self.workdir,
        )
        wall = time.perf_counter() - wall0
        after = self._counters()
        out = {"mode": kind, ("offered_rps" if kind == "open" else "clients"): level, **summarise(step)}
        # CPU in % of one core over the step's wall time (the load generator's process start included),
        # and per answered request (independent of that wall time)
        used = {name: after[name] - before[name] for name in ("service", "redis")}
        used["loadgen"] = loadgen_cpu_s
        out["cpu_pct"] = {name: round(100 * v / wall, 1) for name, v in used.items()}
        answered = max(1, out["sent"] - step.unfinished)
        out["cpu_ms_per_request"] = {name: round(1e3 * v / answered, 3) for name, v in used.items()}
        out["server"] = self._server_side(before, after)
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
        await self._settle()
        return out

    def _counters(self) -> dict[str, Any]:
        return {
            "service": cpu_seconds(self.service.pid),
            "redis": cpu_seconds(self.redis.pid),
            "hist": scrape_histograms(self.base_url),
        }

    @staticmethod
    def _server_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
        def delta(name: str) -> tuple[float, float]:
            (s0, c0), (s1, c1) = before["hist"][name], after["hist"][name]
            return s1 - s0, c1 - c0

        users, passes = delta("ld4mrec_batch_size")
        wait_s, waits = delta("ld4mrec_batch_queue_wait_seconds")
        fwd_s, _ = delta("ld4mrec_model_forward_seconds")
        return {
            "forward_passes": int(passes),
            "mean_batch_size": round(users / passes, 2) if passes else None,
            "mean_queue_wait_ms": round(1e3 * wait_s / waits, 2) if waits else None,
            "mean_forward_ms": round(1e3 * fwd_s / passes, 2) if passes else None,
            "forward_seconds": round(fwd_s, 3),
        }

    async def _settle(self, max_s: float = 5.0) -> None:
        """Wait until the service answers /healthz promptly (a failed step can leave a backlog)."""
        deadline = time.monotonic() + max_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                with contextlib.suppress(Exception):
                    await client.get("/healthz")
                if time.perf_counter() - t0 < 0.01:
                    return
                await asyncio.sleep(0.2)

    async def served_precision(self) -> str | None:
        """The precision the service says it serves (``GET /model``)."""
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=5.0) as client:
            resp = await client.get("/model")
            resp.raise_for_status()
            precision = resp.json().get("precision")
            return str(precision) if precision is not None else None

    async def warm_up(self, seconds: float) -> None:
        """8 clients back to back for ``seconds`` (first passes, connection pools, caches)."""
        requests = self.factory.make(4000)
        await asyncio.to_thread(
            run_step,
            self.base_url,
            self.headers,
            requests,
            "closed",
            8,
            duration_s=seconds,
            timeout_s=self.timeout_s,
            workdir=self.workdir,
        )


def passes_slo(step: dict[str, Any]) -> bool:
    return step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= SLO_MS


async def open_loop_search(
    session: Session, start_rps: float, factor: float, refine: int, max_steps: int, budget: Budget, log: Log
) -> list[dict[str, Any]]:
    """Rising rates until the SLO breaks (or the budget ends), then ``refine`` bisection steps."""
    steps: list[dict[str, Any]] = []
    best_pass: float | None = None
    first_fail: float | None = None
    rate = start_rps
    for _ in range(max_steps):
        if budget.left() < budget.open_step_s(rate) + budget.drain_s:
            log("  (time budget reached: search stopped)")
            break
        step = await session.run_step("open", round(rate, 1), budget)
        steps.append(step)
        log("  " + step_line(step))
        if passes_slo(step):
            best_pass = rate
            if first_fail is not None:
                break
            rate *= factor
        else:
            first_fail = rate
            if best_pass is not None:
                break
            rate /= factor  # even the first rate failed: go down
            if rate < 1:
                break
    for _ in range(refine):
        if best_pass is None or first_fail is None:
            break
        rate = float(np.sqrt(best_pass * first_fail))
        if budget.left() < budget.open_step_s(rate) + budget.drain_s:
            break
        if rate / best_pass < 1.05:
            break
        step = await session.run_step("open", round(rate, 1), budget)
        steps.append(step)
        log("  " + step_line(step) + "  (refine)")
        if passes_slo(step):
            best_pass = rate
        else:
            first_fail = rate
    return sorted(steps, key=lambda s: s["offered_rps"])


def step_line(step: dict[str, Any]) -> str:
    level = f"{step['offered_rps']:>7.1f} rps" if step["mode"] == "open" else f"{step['clients']:>4} clients"
    srv = step["server"]
    p99 = f"{step['p99_ms']:.1f}" if step["p99_ms"] is not None else "-"
    p50 = f"{step['p50_ms']:.1f}" if step["p50_ms"] is not None else "-"
    return (
        f"{step['mode']:<6} {level}: achieved {step['achieved_rps']:>7.1f}/s  p50 {p50:>7} ms  "
        f"p99 {p99:>7} ms  errors {step['errors']:>4}  batch {srv['mean_batch_size'] or 0:>5.1f}  "
        f"fwd {srv['mean_forward_ms'] or 0:>6.1f} ms  "
        f"cpu svc/redis/gen {step['cpu_pct']['service']:.0f}/{step['cpu_pct']['redis']:.0f}/"
        f"{step['cpu_pct']['loadgen']:.0f}%  load {step['loadavg_1m']}"
    )


# -- output --------------------------------------------------------------------------------------------------
def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: open-loop p99 and p50 vs offered load, one line per configuration (label with its precision;
    log-log), the SLO and the model's limits (batch 1 and 32, best thread count, per measured precision)
    marked. Right: closed-loop latency and throughput vs the
    number of clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_open, ax_closed) = plt.subplots(1, 2, figsize=(13, 5))
    for i, cfg in enumerate(results["configs"]):
        steps = cfg["open_loop"]
        if not steps:
            continue
        colour = f"C{i % 10}"
        short = cfg["spec"]
        marker = "o" if cfg["precision"] == "fp32" else "s"
        x = [s["offered_rps"] for s in steps]
        ax_open.plot(x, [s["p99_ms"] for s in steps], f"{marker}-", color=colour, label=f"{short} p99")
        ax_open.plot(x, [s["p50_ms"] for s in steps], "x--", color=colour, alpha=0.5, label=f"{short} p50")
        bad = [s for s in steps if s["errors"]]
        if bad:
            ax_open.scatter(
                [s["offered_rps"] for s in bad],
                [s["p99_ms"] for s in bad],
                s=120,
                facecolors="none",
                edgecolors="red",
                label="step with errors",
            )
    ax_open.axhline(SLO_MS, color="grey", linestyle=":")
    model_colours = {"fp32": "black", "int8": "purple"}
    for j, (precision, rows) in enumerate(results["headline_model"]["by_precision"].items()):
        for row, style in ((rows["batch1"], "--"), (rows["batch32"], ":")):
            colour = model_colours.get(precision, "brown")
            ax_open.axvline(row["users_per_s"], color=colour, linestyle=style, linewidth=1)
            ax_open.annotate(  # x in data, y in axes fraction: inside the plot whatever the latencies
                f" model {precision}, batch {row['batch']}:\n {row['users_per_s']:.0f} users/s",
                (row["users_per_s"], 0.93 - 0.1 * j),
                xycoords=ax_open.get_xaxis_transform(),
                fontsize=7,
                color=colour,
            )
    ax_open.set(
        xlabel="offered load (requests/s, open loop)",
        ylabel="latency (ms, from the scheduled send)",
        xscale="log",
        yscale="log",
        title=f"Open loop: latency vs offered load (SLO p99 {SLO_MS:g} ms)",
    )
    ax_open.legend(
        fontsize=7, title="MAX_BATCH:MAX_WAIT_MS:THREADS:PRECISION", title_fontsize=7, loc="lower right"
    )
    closed = results.get("closed_loop") or []
    if closed:
        n = [s["clients"] for s in closed]
        ax_closed.plot(n, [s["p99_ms"] for s in closed], "o-", color="C0", label="p99")
        ax_closed.plot(n, [s["p50_ms"] for s in closed], "x--", color="C0", alpha=0.6, label="p50")
        ax_closed.axhline(SLO_MS, color="grey", linestyle=":")
        ax_closed.set(
            xlabel="clients (closed loop, back to back)",
            ylabel="latency (ms)",
            xscale="log",
            yscale="log",
            title=f"Closed loop ({results.get('closed_loop_spec', '')})",
        )
        ax_closed.set_xticks(n, [str(c) for c in n])
        ax_closed.set_xticks([], minor=True)
        ax_rps = ax_closed.twinx()
        ax_rps.plot(n, [s["achieved_rps"] for s in closed], "s-", color="C2", label="throughput")
        ax_rps.set_ylabel("achieved throughput (requests/s)", color="C2")
        ax_rps.set_ylim(bottom=0)
        ax_rps.legend(fontsize=8, loc="lower right")
        ax_closed.legend(fontsize=8)
    fig.suptitle(
        f"{results['artifact']['origin']} - {results['date']} - load avg at start "
        f"{results['machine']['loadavg_1_5_15_at_start'][0]}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(title: str, steps: Sequence[dict[str, Any]], log: Log) -> None:
    log(f"\n{title}")
    log(
        f"{'load':>12} {'achieved/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'batch':>6} {'fwd ms':>7} {'cpu svc%':>8} {'cpu gen%':>8}"
    )
    for s in steps:
        level = f"{s['offered_rps']:.1f} rps" if s["mode"] == "open" else f"{s['clients']} clients"
        srv = s["server"]
        log(
            f"{level:>12} {s['achieved_rps']:>10.1f} {s['p50_ms'] or 0:>8.1f} {s['p95_ms'] or 0:>8.1f} "
            f"{s['p99_ms'] or 0:>8.1f} {s['errors']:>6} {srv['mean_batch_size'] or 0:>6.1f} "
            f"{srv['mean_forward_ms'] or 0:>7.1f} {s['cpu_pct']['service']:>8.0f} "
            f"{s['cpu_pct']['loadgen']:>8.0f}"
        )


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short run (< 3 min): one configuration, short steps")
    p.add_argument(
        "--artifact", type=Path, default=None, help="artifact directory (default: the cached sports one)"
    )
    p.add_argument("--data", type=Path, default=SPORTS_DIR, help="dataset for the default artifact")
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="MAX_BATCH:MAX_WAIT_MS:THREADS[:PRECISION]",
        help=f"service settings, repeatable (default full: {' '.join(FULL_CONFIGS)}; "
        f"quick: {' '.join(QUICK_CONFIGS)}); THREADS 0 = torch's default; PRECISION "
        f"{' | '.join(PRECISIONS)} (LD4MREC_PRECISION, default fp32)",
    )
    p.add_argument("--mix", default="get=0.9,write=0.05,cold=0.05", help="request kinds and shares")
    p.add_argument(
        "--step-s",
        type=float,
        default=None,
        help="seconds per closed-loop step, shortest open-loop step (5, quick 2.5)",
    )
    p.add_argument(
        "--min-requests",
        type=int,
        default=None,
        help="requests per open-loop step, at least, within 3 x --step-s (800, quick 300): p99 needs samples",
    )
    p.add_argument(
        "--start-rps",
        type=float,
        default=None,
        help="first open-loop rate (default: 30%% of the model's users/s at batch 1)",
    )
    p.add_argument(
        "--rate-factor", type=float, default=None, help="rate growth per step (default 1.5, quick 1.7)"
    )
    p.add_argument(
        "--refine", type=int, default=None, help="bisection steps after the first failure (2, quick 1)"
    )
    p.add_argument(
        "--max-steps", type=int, default=12, help="open-loop rising steps per configuration, at most"
    )
    p.add_argument("--clients", default=",".join(map(str, CLOSED_CLIENTS)), help="closed-loop client counts")
    p.add_argument("--warmup-s", type=float, default=None, help="warm-up per service start (3, quick 1.5)")
    p.add_argument(
        "--model-budget-s",
        type=float,
        default=None,
        help="timed seconds of the model limit per precision, batch and thread count, before and after the "
        "load (3, quick 1.5)",
    )
    p.add_argument("--timeout-s", type=float, default=5.0, help="client timeout per request (an error)")
    p.add_argument(
        "--client-cpus",
        type=lambda text: [int(c) for c in text.split(",") if c.strip()],
        default=None,
        metavar="0,1",
        help="pin the load-generator process to these cores (default: not pinned)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the saturated service during one more closed-loop step (default: on in the full run)",
    )
    p.add_argument("--profile-clients", type=int, default=16, help="closed-loop clients of the profiled step")
    p.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="stop starting new steps after this many minutes (default 9.5, quick 2.6)",
    )
    p.add_argument(
        "--overlap-users",
        type=int,
        default=None,
        help="users of the top-20 overlap of each served reduced precision vs fp32 (2048, quick 512; 0: off)",
    )
    p.add_argument("--train-timeout-s", type=float, default=1800, help="bound on building the artifact")
    p.add_argument("--device", default="cpu", help="LD4MREC_DEVICE of the service (and of the model limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="LD4MREC_WORKERS of the service (default: the service's own, one worker per usable CPU)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/serve_load.json, serve_load_quick.json with --quick); "
        "the PNG goes next to it",
    )
    return p.parse_args(argv)


async def run_configs(
    args: argparse.Namespace,
    artifact: Path,
    configs: Sequence[ServiceConfig],
    factory_of: Callable[[int], RequestFactory],
    start_rps: dict[str, float],
    budget: Budget,
    workdir: Path,
    log: Log,
) -> dict[str, Any]:
    """Open-loop search per configuration (from ``start_rps`` of its precision), then closed loop and
    profile on the best one. With several configurations the sweep stops early enough to leave the closed
    loop its time."""
    api_key = secrets.token_hex(16)
    redis, redis_url = start_redis(workdir)
    out: dict[str, Any] = {"configs": [], "closed_loop": [], "profile": None, "pids": [redis.pid]}
    sweep = budget
    if len(configs) > 1:
        closed_steps = len([c for c in args.clients.split(",") if c.strip()]) + int(bool(args.profile))
        reserve_s = closed_steps * (budget.step_s + 3) + args.warmup_s + 10
        sweep = dataclasses.replace(budget, deadline=budget.deadline - reserve_s)
    try:
        sessions_done: dict[ServiceConfig, dict[str, Any]] = {}
        for i, cfg in enumerate(configs):
            if sweep.left() < 30:
                log(f"\n[{cfg.label}] skipped: time budget reached")
                continue
            log(f"\n[{cfg.label}] starting the service")
            flush_redis(redis_url)
            t0 = time.perf_counter()
            service, base_url = start_service(
                artifact, redis_url, cfg, api_key, workdir, args.device, workers=args.workers
            )
            out["pids"].append(service.pid)
            try:
                start_s = time.perf_counter() - t0
                session = Session(
                    base_url,
                    api_key,
                    service,
                    redis,
                    factory_of(args.seed + i),
                    args.timeout_s,
                    client_cpus=args.client_cpus,
                    workdir=workdir,
                )
                served = await session.served_precision()
                if served != cfg.precision:
                    raise RuntimeError(f"[{cfg.label}] the service says it serves precision {served!r}")
                await session.warm_up(args.warmup_s)
                log(f"  ready in {start_s:.1f} s (precision {served}), warmed up")
                rate0 = start_rps[cfg.precision]
                steps = await open_loop_search(
                    session, rate0, args.rate_factor, args.refine, args.max_steps, sweep, log
                )
                record = {
                    "config": cfg.label,
                    "spec": cfg.spec,
                    "precision": cfg.precision,
                    "settings": cfg.env(),
                    "start_s": round(start_s, 1),
                    "start_rps": rate0,
                    "open_loop": steps,
                    "max_rps_p99_under_50ms": max_passing(steps),
                }
                sessions_done[cfg] = record
                out["configs"].append(record)
                if len(configs) == 1:
                    out |= await closed_and_profile(args, session, record, budget, workdir, log)
            finally:
                service.stop()
        if len(configs) > 1 and sessions_done:
            best_cfg = max(sessions_done, key=lambda c: sessions_done[c]["max_rps_p99_under_50ms"] or 0)
            log(f"\n[{best_cfg.label}] best configuration: restarting it for the closed loop")
            flush_redis(redis_url)
            service, base_url = start_service(
                artifact, redis_url, best_cfg, api_key, workdir, args.device, workers=args.workers
            )
            out["pids"].append(service.pid)
            try:
                session = Session(
                    base_url,
                    api_key,
                    service,
                    redis,
                    factory_of(args.seed + 100),
                    args.timeout_s,
                    client_cpus=args.client_cpus,
                    workdir=workdir,
                )
                await session.warm_up(args.warmup_s)
                out |= await closed_and_profile(args, session, sessions_done[best_cfg], budget, workdir, log)
            finally:
                service.stop()
    finally:
        redis.stop()
    return out


async def closed_and_profile(
    args: argparse.Namespace,
    session: Session,
    record: dict[str, Any],
    budget: Budget,
    workdir: Path,
    log: Log,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "closed_loop_config": record["config"],
        "closed_loop_spec": record["spec"],
        "closed_loop": [],
        "profile": None,
    }
    for n in [int(c) for c in args.clients.split(",") if c.strip()]:
        if budget.left() < budget.step_s + 2:
            log("  (time budget reached: closed loop stopped)")
            break
        step = await session.run_step("closed", n, budget)
        out["closed_loop"].append(step)
        log("  " + step_line(step))
    if args.profile and budget.left() > budget.step_s + 10:
        out["profile"] = await profile_step(session, args.profile_clients, budget, workdir, log)
    return out


async def profile_step(
    session: Session, clients: int, budget: Budget, workdir: Path, log: Log
) -> dict[str, Any]:
    """One closed-loop step with ``clients`` clients (the service saturated) under py-spy."""
    folded = workdir / "profile.txt"
    profiler = start_profiler(session.service.pid, budget.step_s, folded)
    if profiler is None:
        return {"error": "py-spy not found next to the Python executable (pip install py-spy)"}
    try:
        step = await session.run_step("closed", clients, budget)
        _, err = profiler.communicate(timeout=budget.step_s + 30)
    finally:
        if profiler.poll() is None:
            profiler.kill()
            profiler.wait()
    log("  " + step_line(step) + "  (profiled)")
    if not folded.is_file():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    keep = CACHE_DIR / "serve_load_profile.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(folded.read_bytes())
    return {
        "clients": clients,
        "step": step,
        "folded_stacks": display_path(keep),
        **summarise_profile(folded, budget.step_s),
    }


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def code_state() -> dict[str, Any]:
    """The commit measured and whether service/ or model/ had uncommitted changes."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10, cwd=BENCH_DIR)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted_in_service_or_model": bool(git("status", "--porcelain", "--", "../service", "../model")),
    }


def max_passing(steps: Sequence[dict[str, Any]]) -> float | None:
    passing = [s["achieved_rps"] for s in steps if passes_slo(s)]
    return max(passing) if passing else None


def main(argv: Sequence[str] | None = None, log: Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    args.step_s = args.step_s or (2.5 if args.quick else 5.0)
    args.rate_factor = args.rate_factor or (1.7 if args.quick else 1.5)
    args.refine = args.refine if args.refine is not None else (1 if args.quick else 2)
    args.profile = (not args.quick) if args.profile is None else args.profile
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (1.5 if args.quick else 3.0)
    args.model_budget_s = args.model_budget_s or (1.5 if args.quick else 3.0)
    budget_min = args.budget_min or (2.6 if args.quick else 9.5)
    args.overlap_users = (
        args.overlap_users if args.overlap_users is not None else (512 if args.quick else 2048)
    )
    try:
        configs = [
            ServiceConfig.parse(c) for c in (args.config or (QUICK_CONFIGS if args.quick else FULL_CONFIGS))
        ]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if cuda and any(c.precision != "fp32" for c in configs):
        raise SystemExit(
            f"--device {args.device}: the service serves int8 on the CPU only (fp32 configurations)"
        )
    mix = Mix.parse(args.mix)
    out = args.out or RESULTS_DIR / ("serve_load_quick.json" if args.quick else "serve_load.json")
    png = out.with_suffix(".png")
    command = "python " + shlex.join(sys.argv if argv is None else ["bench/serve_load.py", *argv])
    machine = machine_info(torch.device("cpu"))
    started, t_start = utc_now(), time.monotonic()
    log(
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']} cpus, {machine['memory_gib']} GiB, "
        f"torch {machine['torch']}, load avg {machine['loadavg_1_5_15_at_start']}"
    )

    choice = resolve_artifact(args, log)
    art = read_artifact(choice.path)
    log(
        f"artifact: {choice.path} ({choice.origin}): {art.dataset}, {art.n_users} users, "
        f"{art.n_items} items, model {art.model_version}"
    )
    if choice.note:
        log(f"NOTE: {choice.note}")
    min_requests = args.min_requests or (300 if args.quick else 800)
    budget = Budget(args.step_s, min_requests, args.timeout_s + 1.0, time.monotonic() + 60 * budget_min)

    # model limit, part 1 (before the load): 1 thread, torch's default, and what the configurations use;
    # at fp32 and at every precision a configuration serves
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads} | {c.torch_threads or default_threads for c in configs})
    work = model_workload(art)
    precisions = model_precisions(configs)
    unserved = [p for p in precisions if p not in art.model.precisions]
    if unserved:
        raise SystemExit(
            f"model {art.model.name} serves precision {', '.join(art.model.precisions)}, "
            f"not {', '.join(unserved)}"
        )
    variants = [service_variant(work.model, work.states, p) for p in precisions]
    precision_of = {v.name: v.precision for v in variants}
    plan = TimingPlan(warmup=3, budget_s=args.model_budget_s, rounds=2, min_repeats=10)
    model_lat = measure_model(variants, work, thread_counts, plan, args.seed)
    log("model limit (before): " + model_line(model_lat))
    pre = np.diff(art.train_histories.indptr) > 0
    user_ids = [art.user_ids[u] for u in np.nonzero(pre)[0].tolist()]
    weights = np.asarray(art.item_popularity, dtype=np.float64) + 1.0

    def factory_of(seed: int) -> RequestFactory:
        return RequestFactory(user_ids, art.item_ids, weights, mix, seed)

    rows_before = model_rows(model_lat)
    start_rps = {
        p: args.start_rps or max(5.0, round(0.3 * model_best(rows_before, p, 1)["users_per_s"]))
        for p in precisions
    }
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        results = asyncio.run(
            run_configs(args, choice.path, configs, factory_of, start_rps, budget, Path(tmp), log)
        )

    # model limit, part 2 (after the load), pooled with part 1
    for key, v in measure_model(variants, work, thread_counts, plan, args.seed + 1).items():
        model_lat[key] = model_lat[key] + v
    rows = model_rows(model_lat)
    by_precision = {
        p: {"batch1": model_best(rows, p, 1), "batch32": model_best(rows, p, MODEL_BATCH)} for p in precisions
    }
    model_b32, model_b1 = by_precision["fp32"]["batch32"], by_precision["fp32"]["batch1"]
    overlap = served_overlap(variants, work, args.overlap_users, args.seed + 2)
    overlap_n = overlap["users"] if overlap else 0
    compared = {k: v for k, v in (overlap or {}).items() if isinstance(v, dict)}  # per variant
    machine["loadavg_1_5_15_at_end"] = loadavg()

    # ratio (a) per configuration: against the model at its own precision and against fp32
    for record in results["configs"]:
        rps = record["max_rps_p99_under_50ms"] or 0.0
        same = by_precision[record["precision"]]
        record["model_users_per_s_batch32_same_precision"] = same["batch32"]["users_per_s"]
        record["ratio_service_to_model_same_precision"] = round(rps / same["batch32"]["users_per_s"], 3)
        record["ratio_service_to_model"] = round(rps / model_b32["users_per_s"], 3)
        record["ratio_service_to_model_batch1_same_precision"] = round(rps / same["batch1"]["users_per_s"], 3)

    all_steps = [s for c in results["configs"] for s in c["open_loop"]] + results["closed_loop"]
    best = max(results["configs"], key=lambda c: c["max_rps_p99_under_50ms"] or 0, default=None)
    best_step = None
    if best is not None and best["max_rps_p99_under_50ms"]:
        best_step = max((s for s in best["open_loop"] if passes_slo(s)), key=lambda s: s["achieved_rps"])
    max_rps = best_step["achieved_rps"] if best_step else 0.0
    best_model = by_precision[best["precision"] if best else "fp32"]["batch32"]
    loads = [s["loadavg_1m"] for s in all_steps]
    headline: dict[str, Any] = {
        "p50_ms": best_step["p50_ms"] if best_step else None,
        "p99_ms": best_step["p99_ms"] if best_step else None,
        "max_rps_p99_under_50ms": max_rps,
        "ratio_service_to_model": round(max_rps / model_b32["users_per_s"], 3),
        "errors": sum(s["errors"] for s in all_steps),
        "ratio_service_to_model_same_precision": round(max_rps / best_model["users_per_s"], 3),
        "best_config": best["spec"] if best else None,
        "best_precision": best["precision"] if best else None,
        "model_users_per_s_batch32": model_b32["users_per_s"],
        "model_threads": model_b32["threads"],
        "model_users_per_s_batch32_same_precision": best_model["users_per_s"],
        "model_threads_same_precision": best_model["threads"],
        "model_users_per_s_batch1": model_b1["users_per_s"],
        "ratio_service_to_model_batch1": round(max_rps / model_b1["users_per_s"], 3),
        **{
            f"model_users_per_s_batch32_{p}": by_precision[p]["batch32"]["users_per_s"]
            for p in precisions
            if p != "fp32"
        },
        **{
            f"top20_overlap_{precision_of[name]}_vs_fp32": v["top20_overlap_vs_fp32"]
            for name, v in compared.items()
        },
        "per_config": {
            c["spec"]: {
                "max_rps_p99_under_50ms": c["max_rps_p99_under_50ms"],
                "ratio_service_to_model": c["ratio_service_to_model"],
                "ratio_service_to_model_same_precision": c["ratio_service_to_model_same_precision"],
            }
            for c in results["configs"]
        },
        "artifact": choice.origin,
        "n_items": art.n_items,
        "mode": "quick" if args.quick else "full",
        "workers": args.workers if args.workers is not None else "default (one per usable CPU)",
        "loadavg_1m_start_mean_max": load_start_mean_max(machine, loads),
        "json": display_path(out),
    }
    if choice.note:
        headline["note"] = choice.note
    payload: dict[str, Any] = {
        "benchmark": "serve_load",
        "date": started,
        "command": command,
        "mode": headline["mode"],
        "seconds": round(time.monotonic() - t_start, 1),
        "code": code_state(),
        "machine": machine,
        "artifact": {
            "path": display_path(choice.path),
            "origin": choice.origin,
            "build_s": choice.build_s,
            "note": choice.note,
            "dataset": art.dataset,
            "model_version": art.model_version,
            "n_users": art.n_users,
            "n_items": art.n_items,
            "model": art.model.name,
            "hidden_dim": art.model.config.to_dict().get("hidden_dim"),
            "model_config": art.model.config.to_dict(),
            "metrics": art.metrics,
        },
        "method": {
            "slo_ms": SLO_MS,
            "mix": mix.as_dict(),
            "step_s": args.step_s,
            "open_step_s": f"min(3 * step_s, max(step_s, {min_requests} / rate))",
            "drain_s": budget.drain_s,
            "timeout_s": args.timeout_s,
            "rate_factor": args.rate_factor,
            "refine": args.refine,
            "start_rps": start_rps,
            "open_loop": "request i scheduled at t0 + i/rate; latency from the scheduled time to the end of "
            "the answer",
            "closed_loop": "N clients, each sending its next request when the previous one is answered",
            "client": "bench/_httpload.py, one process per step (asyncio protocols + httptools + uvloop, "
            "pre-encoded requests), HTTP/1.1 keep-alive; open loop pool max(16, min(256, rate/10)) opened "
            "before the step, closed loop N connections; on the same cores as the service"
            + (f", pinned to cpus {args.client_cpus}" if args.client_cpus else " (not pinned)")
            + "; its CPU time is reported per step",
            "redis": "redis-server on a free loopback port, --save '' --appendonly no; FLUSHDB per "
            "configuration",
            "model_limit": f"{', '.join(precision_of)} (the service path at fp32 and at every precision "
            f"served), batch {MODEL_BATCHES}, torch threads {thread_counts} (bench/model_forward.py "
            "functions: service_variant, measure_batch_size, precisions interleaved on the same requests): "
            "UserBatch.from_csr + "
            "model.with_precision(p).score + mask_items + top_k(20), in this process before and after the "
            "load, pooled; "
            "users/s = batch / median; the best thread count is taken",
            "ratios": "per configuration: ratio_service_to_model_same_precision = its max_rps_p99_under_50ms "
            "/ the model's batch-32 users/s at the configuration's precision; ratio_service_to_model = the "
            "same / the fp32 model's batch-32 users/s (ratio (a) as the issue words it). Headline: those of "
            "the configuration with the highest max_rps_p99_under_50ms (best_config)",
            "overlap": f"precision_vs_fp32: compare_precisions (bench/model_forward.py) on the served "
            f"artifact, {args.overlap_users} random users with a history, batches of {OVERLAP_BATCH}, "
            "1 torch thread; null when only fp32 is served",
        },
        "model_limit": rows,
        "headline_model": {"batch1": model_b1, "batch32": model_b32, "by_precision": by_precision},
        "precision_vs_fp32": overlap,
        **results,
        "headline": headline,
    }
    write_json(payload, out)
    plot(payload, png)

    for cfg in results["configs"]:
        print_table(
            f"open loop, {cfg['config']} (max rps at p99 <= {SLO_MS:g} ms: {cfg['max_rps_p99_under_50ms']}; "
            f"ratio vs model batch 32 at {cfg['precision']} {cfg['ratio_service_to_model_same_precision']}, "
            f"vs fp32 {cfg['ratio_service_to_model']})",
            cfg["open_loop"],
            log,
        )
    if results["closed_loop"]:
        print_table(f"closed loop, {results['closed_loop_config']}", results["closed_loop"], log)
    log("\nmodel limit (sparse, pooled before+after): " + model_line(model_lat))
    for name, o in compared.items():
        log(
            f"top-20 {name} vs {variants[0].name} on the served artifact ({overlap_n} users): "
            f"mean overlap {o['top20_overlap_vs_fp32']:.4f}, min {o['min_top20_overlap']:.2f}, identical "
            f"{o['identical_top20_share']:.3f}"
        )
    prof = results.get("profile")
    if prof and "self_pct" in prof:
        log(f"\nprofile of the service, closed loop {prof['clients']} clients ({prof['samples']} samples):")
        log("  busy % of one core: " + ", ".join(f"{k} {v}" for k, v in prof["thread_busy_pct_of_one_core"]))
        log("  by layer %:         " + "; ".join(f"{k} {v}" for k, v in prof["by_layer_pct"]))
        log(
            "  event loop layer %: "
            + "; ".join(f"{k} {v}" for k, v in prof["event_loop_thread_by_layer_pct"])
        )
        log("  innermost fn %:     " + "; ".join(f"{k} {v}" for k, v in prof["self_pct"][:8]))
    log(
        f"\nmax rps at p99 <= {SLO_MS:g} ms: {max_rps} ({headline['best_config']}); model at batch 32: "
        f"fp32 {model_b32['users_per_s']} users/s, {headline['best_precision']} "
        f"{best_model['users_per_s']} users/s; "
        f"ratio vs fp32 {headline['ratio_service_to_model']}, vs the same precision "
        f"{headline['ratio_service_to_model_same_precision']} (vs fp32 batch 1: "
        f"{headline['ratio_service_to_model_batch1']})"
    )
    log(f"wrote {display_path(out)} and {display_path(png)} in {payload['seconds']:.0f} s")
    log(json.dumps(headline))
    return payload


if __name__ == "__main__":
    main()
