"""Catalogue scaling: every registered model at 10^4, 10^5 and 10^6 items, same users, on this machine.

For each catalogue size (synthetic data, :mod:`_synthetic_catalogue`: a fixed number of users, log-normal
history lengths, Zipf-like item popularity, one 64-d modality) and each registered model:

* **training** in a fresh process, its data segment capped at ``--budget-gb`` + 2 GiB (``RLIMIT_DATA``, so a
  model that does not fit fails there instead of pushing the machine into swap): peak RSS (``VmHWM``) and
  seconds per epoch. An iterative model's epoch is timed on ``--steps`` mini-batches (after one warm-up
  batch) and scaled to the epoch's number of batches; a closed form is timed whole (EASE with one L2
  value, ``--ease-l2``). LD4MRec keeps its defaults where :func:`model.ld4mrec.memory.training_bytes`
  says they fit the budget, else it takes :func:`~model.ld4mrec.memory.fitting_config`'s widest width and
  largest batch that do (the rule is recorded with each row); the estimate is reported beside the
  measured peak. A model that refuses (EASE above its memory limit) is reported with its message.
* **artifact** size on disk (``write_artifact``, every file).
* **serving** in a fresh process per precision the model supports (LD4MRec: fp32 and int8): the service's
  own loader (``service.engine.Engine.load``: checksums, model build, id maps), RSS after the load
  (anonymous and file-backed) and its peak; then the model path of a request (``UserBatch`` of stored
  histories and states -> ``score`` -> mask the history -> top-20): users/s at batch 32 (32 / median) and
  p50 / p99 latency at batch 1.

Everything runs with ``--threads`` torch and BLAS threads (1 by default: two such jobs share the 2-core
machine). A closed form's valid-split selection scores users in batches of at most 512 MiB of scores.

    python bench/catalogue_scale.py          # 10^4-10^6 items, 10,000 users: bench/results/
    python bench/catalogue_scale.py --quick  # 10^4 and 10^5 items, 1,000 users, fewer repeats (< 10 min)

The last line of stdout is one JSON object with the headline figures. The trainer and the service code
come from this checkout (``PYTHONPATH`` is set to it for the child processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout's model/, training/ and service/, also when run as a script
    sys.path.insert(1, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import display_path, loadavg, machine_info, write_json  # noqa: E402
from _synthetic_catalogue import synthetic_catalogue  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)  # LD4MRec's signal SVD alone takes ~5 min at 10^6 items on a loaded core
TOP_K = 20
GIB = 2**30
GUARD_HEADROOM = 2 * GIB
EVAL_SCORES_BYTES = 512 * 2**20
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# -- memory of this process ----------------------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, bytes (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def eval_batch_size(n_items: int) -> int:
    """Users per scoring batch of an evaluation: (batch, items) float32 scores of at most 512 MiB (the
    trainer's default of 2,048 users is 8 GiB of scores at 10^6 items)."""
    return int(min(2048, max(16, EVAL_SCORES_BYTES // (4 * n_items))))


# -- child: train --------------------------------------------------------------------------------------------
def _subset(train: Any, users: np.ndarray) -> Any:
    """``train`` with only the rows of ``users`` kept (same shape): what an epoch over those users sees."""
    import scipy.sparse as sp

    keep = np.zeros(train.shape[0], dtype=np.float32)
    keep[users] = 1.0
    return sp.csr_matrix(sp.diags(keep) @ train, dtype=np.float32)


def child_train(args: argparse.Namespace) -> dict[str, Any]:
    """Build, fit (or time an epoch of) and export one model at one catalogue size; report memory and time."""
    from model.artifact import Artifact, write_artifact
    from model.base import ConfigError, FitContext, TrainingData, make_score_fn
    from model.ld4mrec.config import LD4MRecConfig
    from model.ld4mrec.memory import fitting_config, training_bytes
    from model.registry import get_model
    from training.evaluate import evaluate

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cat = synthetic_catalogue(args.users, args.items, seed=args.seed)
    data = TrainingData(cat.train, ("image",), (cat.features,))
    generate_s = time.perf_counter() - t0
    cls = get_model(args.model)
    overrides = json.loads(args.config)
    config = cls.config_class.from_dict(cls.config_class().to_dict() | overrides)
    row: dict[str, Any] = {"data": cat.summary(), "generate_s": round(generate_s, 2)}
    dims = [cat.features.shape[1]]
    if isinstance(config, LD4MRecConfig):
        estimate = training_bytes(config, data.n_users, data.n_items, dims, data.train.nnz)
        row["estimate_gib_defaults"] = round(estimate / GIB, 2)
        # the budget, or less if the machine has less available now (what LD4MRec.create checks too)
        budget = min(args.budget, available_bytes())
        fitted = fitting_config(config, data.n_users, data.n_items, dims, budget, data.train.nnz)
        if fitted is None:
            row["skipped"] = f"no width or batch of the ladders fits {budget / GIB:.1f} GiB"
            return row
        if fitted != config:
            row["rule"] = (
                f"defaults need ~{estimate / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB: "
                f"hidden_dim {fitted.hidden_dim}, batch_size {fitted.batch_size}"
            )
        config = fitted
        row["estimate_gib"] = round(
            training_bytes(config, data.n_users, data.n_items, dims, data.train.nnz) / GIB, 2
        )
    row["config"] = {
        k: v for k, v in config.to_dict().items() if k in ("hidden_dim", "batch_size", "l2_grid")
    }
    ctx = FitContext(seed=args.seed)
    t0 = time.perf_counter()
    try:
        model = cls.create(config, data, ctx)
    except (MemoryError, ConfigError) as exc:
        row["refused"] = str(exc)
        return row
    row["create_s"] = round(time.perf_counter() - t0, 2)
    if cls.iterative:
        batch = int(getattr(config, "batch_size", 1024))
        active = np.nonzero(np.diff(data.train.indptr) > 0)[0]
        rng = np.random.default_rng(args.seed)
        warm_users = rng.permutation(active)[:batch]
        timed_users = rng.permutation(active)[: batch * args.steps]
        model.fit_epoch(dataclasses.replace(data, train=_subset(data.train, warm_users)), 1, ctx)
        best = model.snapshot()  # as the trainer: the best epoch's copy is alive during later epochs ...
        timed = dataclasses.replace(data, train=_subset(data.train, timed_users))
        t0 = time.perf_counter()
        model.fit_epoch(timed, 2, ctx)
        per_step = (time.perf_counter() - t0) / math.ceil(len(timed_users) / batch)
        steps = math.ceil(len(active) / batch)
        row |= {
            "s_per_step": round(per_step, 4),
            "steps_per_epoch": steps,
            "s_per_epoch": round(per_step * steps, 2),
        }
        best = model.snapshot()  # ... and a new best is copied before the old one is dropped
        del best
    else:
        valid_users = np.nonzero(np.diff(cat.valid.indptr) > 0)[0][: args.eval_users]
        valid = _subset(cat.valid, valid_users)

        def validate(score_fn: Callable[[np.ndarray], torch.Tensor]) -> dict[str, float]:
            return evaluate(score_fn, data.train, valid, batch_size=eval_batch_size(data.n_items))

        t0 = time.perf_counter()
        model.fit(data, validate, ctx)
        row["fit_s"] = round(time.perf_counter() - t0, 2)
        row["valid_recall@20"] = round(
            validate(make_score_fn(model, data.train, model.user_states()))["recall@20"], 4
        )
    row["train_peak_rss_gib"] = round(proc_status()["VmHWM"] / GIB, 3)
    n_users, n_items = data.n_users, data.n_items
    art = Artifact(
        model=model,
        dataset=f"synthetic-{n_items}",
        modality_names=("image",),
        user_ids=tuple(str(u) for u in range(n_users)),
        item_ids=tuple(str(i) for i in range(n_items)),
        train_histories=data.train,
        user_states=model.user_states(),
    )
    t0 = time.perf_counter()
    path = write_artifact(art, args.artifact)
    row["write_s"] = round(time.perf_counter() - t0, 2)
    row["artifact_gib"] = round(sum(p.stat().st_size for p in path.iterdir()) / GIB, 4)
    row["arrays_gib"] = {
        name: round(p.stat().st_size / GIB, 4)
        for name, p in ((p.name, p) for p in path.iterdir())
        if p.stat().st_size > 0.05 * GIB
    }
    return row


# -- child: serve --------------------------------------------------------------------------------------------
def _timings(fn: Callable[[], None], reps: int, budget_s: float) -> list[float]:
    """Seconds of ``fn`` per call: one warm-up, then ``reps`` calls or until ``budget_s`` (at least 5)."""
    fn()
    out: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(out) < reps and (len(out) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def child_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Load the artifact as the service does, in ``args.precision``; memory, then batch 32 and 1 timings."""
    from model.base import UserBatch
    from model.ranking import mask_items, top_k
    from service.engine import Engine

    torch.set_num_threads(args.threads)
    before = proc_status()
    t0 = time.perf_counter()
    engine = Engine.load(args.artifact, torch.device("cpu"), args.precision)
    load_s = time.perf_counter() - t0
    after = proc_status()
    art, model = engine.artifact, engine.model
    histories, states = art.train_histories, art.user_states
    rng = np.random.default_rng(args.seed)
    users = rng.choice(np.nonzero(np.diff(histories.indptr) > 0)[0], size=4096)

    def request(batch: np.ndarray) -> Callable[[], None]:
        csr = histories[batch]

        @torch.inference_mode()
        def run() -> None:
            request = UserBatch.from_csr(csr, batch, states[batch], engine.device)
            scores = model.score(request)
            rows = torch.repeat_interleave(torch.arange(len(batch)), request.lengths())
            mask_items(scores, rows, request.item_ids)
            top_k(scores, TOP_K)

        return run

    cursor = iter(range(0, len(users), 32))
    batches = [users[i : i + 32] for i in cursor]
    b32 = _timings(lambda: request(batches[np.random.randint(len(batches))])(), args.reps32, args.budget_s)
    singles = [request(users[i : i + 1]) for i in range(256)]
    b1 = _timings(lambda: singles[np.random.randint(len(singles))](), args.reps1, args.budget_s)
    return {
        "load_s": round(load_s, 2),
        "rss_before_gib": round(before["VmRSS"] / GIB, 3),
        "rss_gib": round(after["VmRSS"] / GIB, 3),
        "rss_anon_gib": round(after["RssAnon"] / GIB, 3),
        "rss_file_gib": round(after["RssFile"] / GIB, 3),
        "load_peak_rss_gib": round(after["VmHWM"] / GIB, 3),
        "users_per_s_batch32": round(32 / statistics.median(b32), 1),
        "batch32_median_ms": round(1000 * statistics.median(b32), 2),
        "batch32_n": len(b32),
        "batch1_p50_ms": round(1000 * statistics.median(b1), 2),
        "batch1_p99_ms": round(1000 * float(np.percentile(b1, 99)), 2),
        "batch1_n": len(b1),
    }


# -- the orchestrator ----------------------------------------------------------------------------------------
def _run_child(
    kind: str, argv: list[str], guard_bytes: int, threads: int, timeout_s: float
) -> dict[str, Any]:
    """``python bench/catalogue_scale.py --child KIND ...`` with RLIMIT_DATA = ``guard_bytes`` and ``threads``
    BLAS threads (numpy/scipy's OpenBLAS too, not only torch: EASE's LAPACK calls slow down 10x when
    OpenBLAS spins two threads beside other jobs on 2 cores); its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (guard_bytes, guard_bytes))

    env = dict(os.environ) | {name: str(threads) for name in BLAS_THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--result",
        str(result_path),
        *argv,
    ]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            command, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout_s:.0f} s"}
    finally:
        wall = time.perf_counter() - started
    try:
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            memory = "allocate memory" in proc.stderr or "MemoryError" in proc.stderr
            why = f"out of memory under the {guard_bytes / GIB:.1f} GiB guard: " if memory else ""
            return {"failed": f"{why}exit {proc.returncode}: {tail[0][:300]}"}
        result: dict[str, Any] = json.loads(result_path.read_text())
        result["wall_s"] = round(wall, 1)
        return result
    finally:
        result_path.unlink(missing_ok=True)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.4g}{unit}" if isinstance(value, int | float) else str(value)


def print_row(row: dict[str, Any]) -> None:
    train, serve = row.get("train", {}), row.get("serve", {})
    note = train.get("refused") or train.get("skipped") or train.get("failed") or serve.get("failed")
    if "s_per_epoch" in train:
        time_text = f"{_fmt(train['s_per_epoch'])} s/epoch"
    else:
        time_text = f"{_fmt(train.get('fit_s'))} s fit"
    parts = [
        f"{row['model']:>10} {row['precision']:>5} {row['items']:>9,}",
        f"train peak {_fmt(train.get('train_peak_rss_gib'), ' GiB')}, {time_text}",
        f"artifact {_fmt(train.get('artifact_gib'), ' GiB')}",
        f"serve rss {_fmt(serve.get('rss_gib'), ' GiB')} (anon {_fmt(serve.get('rss_anon_gib'))})",
        f"{_fmt(serve.get('users_per_s_batch32'))} users/s @32",
        f"p99 @1 {_fmt(serve.get('batch1_p99_ms'), ' ms')}",
    ]
    if note:
        parts.append(str(note))
    if train.get("rule"):
        parts.append(f"rule: {train['rule']}")
    print(" | ".join(parts), flush=True)


def _fp32_train(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r["train"].get(key) if r["precision"] == "fp32" else None


def _epoch_or_fit(r: dict[str, Any]) -> Any:
    return (r["train"].get("s_per_epoch") or r["train"].get("fit_s")) if r["precision"] == "fp32" else None


def _serve(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r.get("serve", {}).get(key)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Four log-log panels against catalogue size: training peak RSS, s/epoch, serving RSS, p99 at batch 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("training peak RSS (GiB)", _fp32_train("train_peak_rss_gib")),
        ("s per epoch (closed form: s per fit)", _epoch_or_fit),
        ("service RSS after load (GiB)", _serve("rss_gib")),
        ("model users/s at batch 32", _serve("users_per_s_batch32")),
        ("p99 at batch 1 (ms)", _serve("batch1_p99_ms")),
        ("artifact (GiB)", _fp32_train("artifact_gib")),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    series = sorted({(r["model"], r["precision"]) for r in rows})
    colours = dict(zip(series, plt.get_cmap("tab10").colors, strict=False))
    for ax, (title, get) in zip(axes.flat, panels, strict=True):
        for model, precision in series:
            points = [
                (r["items"], get(r)) for r in rows if (r["model"], r["precision"]) == (model, precision)
            ]
            points = [(x, y) for x, y in points if y]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colours[(model, precision)], label=f"{model} {precision}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[s], marker="o", label=f"{s[0]} {s[1]}") for s in series]
    fig.legend(handles=handles, loc="lower center", ncol=len(series), fontsize=9)
    fig.suptitle("Catalogue scaling (synthetic data, fixed users, 1 thread; LD4MRec at 10^6: width by rule)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="catalogue sizes (items)")
    parser.add_argument("--users", type=int, default=10_000, help="users of every catalogue (fixed)")
    parser.add_argument("--models", default=None, help="comma-separated registered models (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="timed mini-batches of an iterative model")
    parser.add_argument("--ease-l2", type=float, default=500.0, help="EASE's one L2 value (one closed form)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="MODEL.KEY=JSON", help="config override"
    )
    parser.add_argument(
        "--budget-gb",
        type=float,
        default=None,
        help="memory a fit may use (default: 70%% of available, at most 16)",
    )
    parser.add_argument("--reps32", type=int, default=30)
    parser.add_argument("--reps1", type=int, default=300)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="seconds of timing per configuration, at most"
    )
    parser.add_argument(
        "--eval-users", type=int, default=2000, help="valid users of a closed form's selection"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per child process")
    parser.add_argument(
        "--quick", action="store_true", help="10^4 and 10^5 items, 1,000 users, 1 timed step, fewer repeats"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", choices=("train", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = child_train(args) if args.child == "train" else child_serve(args)
        args.result.write_text(json.dumps(result))
        return 0

    if args.quick:
        args.users, args.steps, args.reps32, args.reps1, args.budget_s = 1_000, 1, 5, 50, 3.0
        if args.sizes == ",".join(str(s) for s in SIZES):
            args.sizes = ",".join(str(s) for s in QUICK_SIZES)
    from model.registry import get_model, model_names

    sizes = [int(s) for s in args.sizes.split(",") if s]
    models = [m for m in (args.models.split(",") if args.models else model_names()) if m]
    overrides: dict[str, dict[str, Any]] = {m: {} for m in models}
    for item in args.set:
        key, _, value = item.partition("=")
        model, _, option = key.partition(".")
        overrides.setdefault(model, {})[option] = json.loads(value)
    for model in models:
        if model == "ease":
            overrides[model].setdefault("l2_grid", [args.ease_l2])
    available = available_bytes()
    budget = int(args.budget_gb * GIB) if args.budget_gb else int(min(0.7 * available, 16 * GIB))
    guard = budget + GUARD_HEADROOM
    out_path = args.out or REPO / "bench" / "results" / (
        "catalogue_scale_quick.json" if args.quick else "catalogue_scale.json"
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    info = machine_info(torch.device("cpu")) | {"torch_threads": args.threads}
    print(
        f"catalogue scaling: sizes {sizes}, {args.users:,} users, models {models}; fit budget "
        f"{budget / GIB:.1f} GiB (available {available / GIB:.1f} GiB), guard {guard / GIB:.1f} GiB; "
        f"load {loadavg()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    common = ["--users", str(args.users), "--threads", str(args.threads), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="catalogue-scale-") as tmp:
        for items in sizes:
            for model in models:
                artifact = Path(tmp) / f"{model}-{items}"
                train = _run_child(
                    "train",
                    [
                        *common,
                        "--model",
                        model,
                        "--items",
                        str(items),
                        "--steps",
                        str(args.steps),
                        "--config",
                        json.dumps(overrides.get(model, {})),
                        "--artifact",
                        str(artifact),
                        "--budget",
                        str(budget),
                        "--eval-users",
                        str(args.eval_users),
                    ],
                    guard,
                    args.threads,
                    args.timeout_s,
                )
                precisions = get_model(model).precisions if "artifact_gib" in train else ("fp32",)
                for precision in precisions:
                    row: dict[str, Any] = {
                        "model": model,
                        "items": items,
                        "precision": precision,
                        "train": train,
                    }
                    if "artifact_gib" in train:
                        row["serve"] = _run_child(
                            "serve",
                            [
                                *common,
                                "--artifact",
                                str(artifact),
                                "--precision",
                                precision,
                                "--reps32",
                                str(args.reps32),
                                "--reps1",
                                str(args.reps1),
                                "--budget-s",
                                str(args.budget_s),
                            ],
                            guard,
                            args.threads,
                            args.timeout_s,
                        )
                    row["loadavg"] = loadavg()
                    rows.append(row)
                    print_row(row)
                shutil.rmtree(artifact, ignore_errors=True)
    payload = {
        "bench": "catalogue_scale",
        "command": shlex.join(
            [sys.executable, "bench/catalogue_scale.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "sizes": sizes,
        "budget_gib": round(budget / GIB, 2),
        "guard_gib": round(guard / GIB, 2),
        "machine": info,
        "loadavg_at_end": loadavg(),
        "rows": rows,
    }
    write_json(payload, out_path)
    print(f"results written to {display_path(out_path)}")
    if not args.no_plot:
        png = out_path.with_suffix(".png")
        plot(rows, png)
        print(f"plot written to {display_path(png)}")
    headline: dict[str, Any] = {"bench": "catalogue_scale", "users": args.users}
    for row in rows:
        key = f"{row['model']}_{row['precision']}_{row['items']}"
        serve = row.get("serve", {})
        headline[key] = {
            "train_peak_gib": row["train"].get("train_peak_rss_gib"),
            "s_per_epoch": row["train"].get("s_per_epoch", row["train"].get("fit_s")),
            "serve_rss_gib": serve.get("rss_gib"),
            "users_per_s_b32": serve.get("users_per_s_batch32"),
            "p99_b1_ms": serve.get("batch1_p99_ms"),
            "status": row["train"].get("refused")
            and "refused"
            or row["train"].get("failed")
            and "failed"
            or "ok",
        }
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
