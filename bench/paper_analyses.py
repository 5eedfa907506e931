"""The LD4MRec paper's analyses (Figs. 3-6) and benchmark ratios (b) and (c), on one dataset.

    python bench/paper_analyses.py inference   --data lastfm2k    # Fig. 3 + ratio (b)
    python bench/paper_analyses.py ablation    --data lastfm2k    # Fig. 5
    python bench/paper_analyses.py robustness  --data lastfm2k    # Fig. 4
    python bench/paper_analyses.py sensitivity --data lastfm2k    # Fig. 6
    python bench/paper_analyses.py epoch-time  --data lastfm2k    # ratio (c)

Each subcommand writes ``bench/results/paper_<analysis>_<dataset>.json`` (``epoch-time`` -> ``epoch_time``)
with the machine, the command, the dataset and the full base configuration, prints a markdown table on
stdout (logs go to stderr) and ends stdout with one JSON line of headline figures.

Base configuration = ``LD4MRecConfig`` and ``RunConfig`` defaults (the model's config comes from
``model.registry.get_model("ld4mrec")``), then every ``--set key=value`` (a key of either), then the
``--epochs`` / ``--patience`` caps. ``protocol.capped`` in the JSON (and ``capped`` in the headline) is true
whenever the result differs from the paper protocol's 1000 epochs / patience 20, so a capped run is never
taken for a full one. Every training is :func:`training.trainer.train` (seeded, so deterministic for
``seed``; it logs epoch, losses and valid Recall/NDCG@K at DEBUG level, which this script enables) and
reports the *test* metrics of the best-valid-Recall@20 epoch, scored forward-free. Every evaluation is
:func:`training.evaluate.evaluate` (all-ranking, only training items masked, K = 10, 20, 50).

``--data`` is a dataset name under ``$LD4MREC_DATASETS`` (default ``../shared/datasets``), a dataset
directory, or ``demo`` (the synthetic demo dataset of ``ld4mrec-train``).

What each subcommand does (trainings in brackets):

- ``inference`` [1, or 0 with ``--artifact DIR``]: scores the TEST split with ``single_step`` (forward-free,
  ``model.score``), ``forward_noised_t0..tT`` (``model.net.score_forward_noised`` on the training schedule:
  x_in noised to t', t' reverse steps; t' = 0: clean x_in, T reverse steps, DiffRec's ``sampling_steps=0``)
  and ``multistep_T{T'}`` for T' in ``--multistep`` (5, 50, 1000): a schedule of T' steps over the same noise
  range, x_in noised to its last step, T' reverse steps of posterior means, C-Net told the trained step
  ``ceil(t * T / T')``. Noise comes from a generator seeded with ``seed`` per variant. Then times one call
  of each variant on one fixed batch of B test users (``--timing-batches``, 256 and 1; ``--timing-threads``
  1), interleaved, median of 3..7 calls; ratio (b) = per-user time / single_step's.
- ``ablation`` [5]: default, wo_cg, wo_pg, wo_soft (plain MSE on x_in), diffrec_style (no CG, no PG).
- ``robustness`` [2 x (1 + levels) = 8]: LD4MRec and diffrec_style with 0 % and 10/20/30 % fake training
  interactions (:func:`sample_fake_pairs`); test R@20 / N@20 and the relative drop vs 0 %.
- ``sensitivity`` [7 one at a time, 16 with ``--grid``]: soft_p x soft_gamma.
- ``epoch-time`` [2 x (warm-up + ``--epochs``) epochs, no evaluation]: ratio (c) = median s/epoch of
  LD4MRec / diffrec_style, epochs alternated, one process, same threads (see :class:`EpochRunner`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from _configs import config_diff, parse_set, split_overrides
from _machine import display_path, loadavg, machine_info, write_json
from model.artifact import read_artifact
from model.base import ConfigError, FitContext, Recommender, UserBatch
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.diffusion import DiffusionSchedule
from model.ld4mrec.network import LD4MRecNet
from model.registry import get_model
from training.config import RunConfig
from training.dataset import InteractionData, load_dataset
from training.evaluate import ScoreFn, evaluable_users, evaluate
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import TrainResult, train, training_data

log = logging.getLogger("paper_analyses")

MODEL = "ld4mrec"
"""The paper's model: every analysis trains or reads it (its classes come from ``model.registry``)."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DEMO = "demo"
METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")
NO_CONDITIONS: dict[str, Any] = {"use_cg": False, "use_pg": False}
"""DiffRec-style: C-Net without CG and PG blocks (dropout(x) ++ step embedding -> MLP), as the spec says."""
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "wo_cg": {"use_cg": False},
    "wo_pg": {"use_pg": False},
    "wo_soft": {"soft_labels": False},
    "diffrec_style": NO_CONDITIONS,
}
ROBUSTNESS_MODELS: dict[str, dict[str, Any]] = {"ld4mrec": {}, "diffrec_style": NO_CONDITIONS}
SOFT_VALUES = (0.001, 0.01, 0.05, 0.1)
ARTIFACT_RUN_KEYS = ("device", "threads", "eval_batch_size", "seed")
"""The only ``--set`` keys that apply to a model read with ``--artifact`` (how it is scored, not trained)."""


# -- configuration, data, training ---------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What one training uses: LD4MRec's hyperparameters and the run options (seed, device, epochs, ...)."""

    model: LD4MRecConfig
    run: RunConfig

    def with_model(self, **changes: Any) -> Setup:
        """This setup with some LD4MRec options changed (validated)."""
        model = dataclasses.replace(self.model, **changes).validate()
        return Setup(model, self.run)

    def to_dict(self) -> dict[str, Any]:
        """Both configurations as one flat dict (no option is in both)."""
        return self.run.to_dict() | self.model.to_dict()

    def diff(self) -> dict[str, Any]:
        """The options that differ from the defaults."""
        return config_diff(self.run) | config_diff(self.model)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "use_cg=false", "threads=1"]`` -> typed LD4MRecConfig / RunConfig overrides."""
    try:
        return parse_set(MODEL, items)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def make_setup(overrides: dict[str, Any]) -> Setup:
    """The defaults with ``overrides`` applied, validated (SystemExit naming a bad option)."""
    try:
        model, run = split_overrides(MODEL, overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    assert isinstance(model, LD4MRecConfig), f"{MODEL} is configured by LD4MRecConfig"
    return Setup(model, run)


def base_config(args: argparse.Namespace) -> tuple[Setup, dict[str, Any]]:
    """Defaults + ``--set`` overrides + ``--epochs`` / ``--patience`` caps -> (setup, overrides)."""
    overrides = parse_overrides(args.set)
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = args.epochs
    if getattr(args, "patience", None) is not None:
        overrides["patience"] = args.patience
    return make_setup(overrides), overrides


def protocol_record(run: RunConfig) -> dict[str, Any]:
    """Whether ``run`` trains with the paper protocol's epoch budget and patience, or is capped."""
    full = RunConfig()
    capped = run.epochs < full.epochs or run.patience < full.patience
    return {
        "capped": capped,
        "epochs": run.epochs,
        "patience": run.patience,
        "full_epochs": full.epochs,
        "full_patience": full.patience,
        "note": (
            f"CAPPED: at most {run.epochs} epochs, patience {run.patience} (full: {full.epochs} / "
            f"{full.patience}); not the paper protocol"
            if capped
            else "full protocol: up to 1000 epochs, early stop after 20 evaluations without valid R@20 gain"
        ),
    }


def load_data(arg: str, workdir: Path) -> tuple[InteractionData, str]:
    """``demo``, a dataset directory, or a name under $LD4MREC_DATASETS -> (data, where it came from)."""
    if arg == DEMO:
        return load_dataset(write_synthetic_dataset(workdir / DEMO, SyntheticSpec())), "synthetic demo"
    path = Path(arg)
    if not path.is_dir():
        path = Path(os.environ.get("LD4MREC_DATASETS", DEFAULT_DATASETS)) / arg
    return load_dataset(path), str(path)


def train_logged(data: InteractionData, setup: Setup, label: str) -> tuple[TrainResult, float]:
    """:func:`train` with a start/end log line; -> (result, wall seconds)."""
    log.info("[%s] training on %s: %s", label, data.name, json.dumps(setup.diff()))
    start = time.perf_counter()
    result = train(data, MODEL, setup.model, setup.run, progress=False)
    wall = time.perf_counter() - start
    log.info(
        "[%s] done in %.0f s: best epoch %d of %d, test recall@20 %.4f ndcg@20 %.4f",
        label,
        wall,
        result.best_epoch,
        len(result.log),
        result.metrics["test"]["recall@20"],
        result.metrics["test"]["ndcg@20"],
    )
    return result, wall


def training_row(result: TrainResult, setup: Setup, wall_s: float) -> dict[str, Any]:
    """What one training reports: best epoch, epochs run and why it stopped, s/epoch, valid and test."""
    epochs_run = len(result.log)
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": epochs_run,
        "stopped_by": "early_stop" if epochs_run < setup.run.epochs else "epoch_cap",
        "s_per_epoch": round(result.seconds_per_epoch, 4),
        "wall_s": round(wall_s, 1),
        "valid": _round(result.metrics["valid"]),
        "test": _round(result.metrics["test"]),
    }


def _round(metrics: dict[str, float], digits: int = 6) -> dict[str, float]:
    return {k: round(float(v), digits) for k, v in metrics.items()}


def ld4mrec_net(model: Recommender) -> LD4MRecNet:
    """The LD4MRec network of a registry-built model (``model.net``); SystemExit for another model."""
    net = getattr(model, "net", None)
    if model.name != MODEL or not isinstance(net, LD4MRecNet):
        raise SystemExit(f"the paper's analyses need an {MODEL} model, not {model.name}")
    return net


# -- output ---------------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats as .4f."""

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Run:
    """One subcommand's context: arguments, data, base config, and where its results go."""

    analysis: str
    args: argparse.Namespace
    argv: Sequence[str]
    data: InteractionData
    data_source: str
    setup: Setup
    overrides: dict[str, Any]
    started: datetime
    machine: dict[str, Any]

    @property
    def out(self) -> Path:
        if self.args.out is not None:
            return Path(self.args.out)
        return Path(self.args.results_dir) / f"paper_{self.analysis.replace('-', '_')}_{self.data.name}.json"

    def finish(self, body: dict[str, Any], headline: dict[str, Any], table: str) -> dict[str, Any]:
        """Write the JSON (atomically), print the table, end stdout with the headline JSON line."""
        self.machine["loadavg_1_5_15_at_end"] = loadavg()
        protocol = protocol_record(self.setup.run)
        headline = {
            "analysis": self.analysis,
            "dataset": self.data.name,
            "capped": protocol["capped"],
            **headline,
            "json": display_path(self.out),
        }
        payload = {
            "benchmark": f"paper_{self.analysis.replace('-', '_')}",
            "date": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python bench/paper_analyses.py " + shlex.join(self.argv),
            "machine": self.machine,
            "dataset": {
                "name": self.data.name,
                "source": self.data_source,
                "n_users": self.data.n_users,
                "n_items": self.data.n_items,
                "interactions_train_valid_test": [
                    self.data.train.nnz,
                    self.data.valid.nnz,
                    self.data.test.nnz,
                ],
                "modalities": list(self.data.modality_names),
            },
            "protocol": protocol,
            "overrides": self.overrides,
            "model_name": MODEL,
            "base_config": self.setup.to_dict(),  # RunConfig + LD4MRecConfig, flat
            "evaluation": "training.evaluate.evaluate: all-ranking over every item, only training items "
            "masked, users with >= 1 training and >= 1 held-out item; test metrics at the best-valid-"
            "Recall@20 epoch",
            **body,
            "headline": headline,
        }
        write_json(payload, self.out)
        title = f"## {self.analysis} on {self.data.name}"
        if protocol["capped"]:
            title += f" ({protocol['note']})"
        print(f"{title}\n\n{table}\n\nwrote {display_path(self.out)}", flush=True)
        print(json.dumps(headline), flush=True)
        return payload


def _plot(path: Path, draw: Callable[[Any], None], figsize: tuple[float, float]) -> str | None:
    """Draw with matplotlib (Agg) into ``path``; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return None
    fig = plt.figure(figsize=figsize)
    draw(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return display_path(path)


# -- 1. inference: forward-free vs forward-noised vs multi-step (Fig. 3, ratio b) -------------------------
@dataclass(eq=False)
class InferenceVariant:
    """One way of scoring a UserBatch (B users; states = condition signals) -> (B, n_items).

    ``start_step`` None = forward-free (``model.score``: one pass, sparse first layer, no noise). Otherwise
    ``model.net.score_forward_noised(batch, start_step, generator, schedule)``: x_in noised to ``start_step``
    of ``schedule`` (0 = clean x_in), then that many reverse steps (all T' steps when 0).
    """

    name: str
    kind: str
    start_step: int | None = None
    schedule: DiffusionSchedule | None = None
    reverse_steps: int = 0

    def __call__(self, model: Recommender, batch: UserBatch, generator: torch.Generator) -> torch.Tensor:
        if self.start_step is None:
            return model.score(batch)
        return ld4mrec_net(model).score_forward_noised(batch, self.start_step, generator, self.schedule)


def inference_variants(cfg: LD4MRecConfig, multistep: Sequence[int]) -> list[InferenceVariant]:
    """single_step; forward_noised_t0 .. t{T} (training schedule); multistep_T{T'} for each T' in multistep.

    ``multistep_T{T'}``: a :class:`DiffusionSchedule` with T' steps over the same noise range (s, a_min,
    a_max), x_in noised to its step T' (the same noise level as the trained step T), then T' reverse steps
    of posterior means with C-Net told step ``ceil(t * T / T')``; T' = T equals ``forward_noised_t{T}``.
    """
    out = [InferenceVariant("single_step", "forward_free")]
    for t in range(cfg.steps + 1):
        out.append(InferenceVariant(f"forward_noised_t{t}", "forward_noised", t, None, t or cfg.steps))
    for steps in multistep:
        schedule = DiffusionSchedule(steps, cfg.noise_scale, cfg.noise_min, cfg.noise_max)
        out.append(InferenceVariant(f"multistep_T{steps}", "multistep", steps, schedule, steps))
    return out


def variant_score_fn(
    model: Recommender,
    variant: InferenceVariant,
    histories: sp.csr_matrix,
    states: np.ndarray,
    device: torch.device,
    seed: int,
) -> ScoreFn:
    """Internal user ids (B,) -> scores (B, n) with ``variant``; noise from one generator seeded ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)

    @torch.inference_mode()
    def score(users: np.ndarray) -> torch.Tensor:
        batch = UserBatch.from_csr(histories[users], users, states[users], device)
        return variant(model, batch, generator).cpu()

    return score


def restrict_rows(matrix: sp.csr_matrix, users: np.ndarray) -> sp.csr_matrix:
    """``matrix`` (n_users, n) with every row outside ``users`` emptied."""
    keep = np.zeros(matrix.shape[0], dtype=np.float32)
    keep[users] = 1.0
    out = sp.csr_matrix(sp.diags(keep) @ matrix)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    model: Recommender,
    variants: Sequence[InferenceVariant],
    batch: UserBatch,
    device: torch.device,
    *,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    seed: int,
) -> dict[str, list[float]]:
    """Seconds per call of each variant scoring the fixed ``batch``, variants interleaved.

    Warm-up: two calls of ``single_step`` and of ``forward_noised_t1`` (every noised / multi-step variant
    runs the same dense C-Net kernels, once per reverse step). Then ``repeats`` rounds; in each, every
    variant scores the batch once, except that a variant stops after ``min_repeats`` calls once its calls
    took ``budget_s`` in all (so T' = 1000 does not take hours).
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    warm = [v for v in variants if v.name in ("single_step", "forward_noised_t1")]
    with torch.inference_mode():
        for variant in warm:
            for _ in range(2):
                variant(model, batch, generator)
        _sync(device)
        samples: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(repeats):
            for variant in variants:
                took = samples[variant.name]
                if len(took) >= min_repeats and sum(took) >= budget_s:
                    continue
                t0 = time.perf_counter()
                variant(model, batch, generator)
                _sync(device)
                took.append(time.perf_counter() - t0)
    return samples


def load_model(
    args: argparse.Namespace, run: Run, device: torch.device
) -> tuple[Recommender, np.ndarray, Setup, dict[str, Any]]:
    """Train the base setup once, or read ``--artifact``; -> (model on ``device``, the training users'
    states (condition signals), its setup, origin)."""
    if args.artifact is None:
        result, wall = train_logged(run.data, run.setup, "inference")
        origin = {"model": "trained here", **training_row(result, run.setup, wall)}
        return result.model, result.model.user_states(), run.setup, origin
    fixed = {k: v for k, v in run.overrides.items() if k not in ARTIFACT_RUN_KEYS}
    if fixed:
        raise SystemExit(
            f"--artifact: the model and its training are fixed; only --set {', '.join(ARTIFACT_RUN_KEYS)} "
            f"apply (got {', '.join(fixed)})"
        )
    art = read_artifact(args.artifact, device)
    ld4mrec_net(art.model)
    if (art.n_users, art.n_items) != (run.data.n_users, run.data.n_items) or (
        art.train_histories != run.data.train
    ).nnz:
        raise SystemExit(
            f"--artifact {args.artifact} was not trained on the training split of {run.data.name}"
        )
    known = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        run_cfg = RunConfig.from_dict({k: v for k, v in art.training.items() if k in known} | run.overrides)
    except ConfigError as exc:
        raise SystemExit(f"--artifact {args.artifact}: {exc}") from None
    assert isinstance(art.model.config, LD4MRecConfig)
    if run_cfg.threads > 0:
        torch.set_num_threads(run_cfg.threads)
    origin = {
        "model": f"artifact {display_path(art.path or Path(args.artifact))}",
        "model_version": art.model_version,
        "best_epoch": art.training.get("best_epoch"),
        "artifact_metrics": art.metrics,
    }
    return art.model, art.user_states, Setup(art.model.config, run_cfg), origin


def run_inference(run: Run) -> dict[str, Any]:
    """Fig. 3 and ratio (b): test accuracy and per-user scoring time of each inference variant."""
    args = run.args
    device = torch.device(run.setup.run.device)
    model, states, setup, origin = load_model(args, run, device)
    run.setup = setup  # an artifact's own configuration (+ run-only overrides) is what gets recorded
    cfg, seed, eval_batch_size = setup.model, setup.run.seed, setup.run.eval_batch_size
    data = run.data
    variants = inference_variants(cfg, args.multistep)
    rng = np.random.default_rng(seed)

    all_users = evaluable_users(data.train, data.test)
    users = all_users
    if args.eval_users and args.eval_users < len(users):
        users = np.sort(rng.choice(users, size=args.eval_users, replace=False))
    test = restrict_rows(data.test, users)
    rows: list[dict[str, Any]] = []
    for variant in variants:
        start = time.perf_counter()
        score_fn = variant_score_fn(model, variant, data.train, states, device, seed)
        metrics = evaluate(score_fn, data.train, test, batch_size=eval_batch_size)
        seconds = time.perf_counter() - start
        log.info(
            "[inference] %-22s test recall@20 %.4f ndcg@20 %.4f (%.1f s, %d users)",
            variant.name,
            metrics["recall@20"],
            metrics["ndcg@20"],
            seconds,
            len(users),
        )
        rows.append(
            {
                "variant": variant.name,
                "kind": variant.kind,
                "start_step": variant.start_step,
                "schedule_steps": variant.schedule.steps if variant.schedule else cfg.steps,
                "reverse_steps": variant.reverse_steps,
                "cnet_passes": max(variant.reverse_steps, 1),
                "test": _round(metrics),
                "eval_wall_s": round(seconds, 2),
            }
        )

    # timing: fixed users, pre-built batches, model call only, `timing_threads` torch threads
    threads_before = torch.get_num_threads()
    if args.timing_threads > 0:
        torch.set_num_threads(args.timing_threads)
    pool = rng.permutation(users)
    timing: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "repeats": args.timing_repeats,
        "min_repeats": args.timing_min_repeats,
        "budget_s": args.timing_budget_s,
        "what": "median seconds of one model call (score or score_forward_noised incl. its noise draw) on "
        "one fixed pre-built UserBatch of B test users (seeded) under torch.inference_mode(), variants "
        "interleaved; per-user = median / B",
        "batches": {},
    }
    by_name = {r["variant"]: r for r in rows}
    for size in args.timing_batches:
        size = min(size, len(pool))
        chosen = np.sort(pool[:size])
        batch = UserBatch.from_csr(data.train[chosen], chosen, states[chosen], device)
        log.info("[inference] timing batch %d...", size)
        samples = time_variants(
            model,
            variants,
            batch,
            device,
            repeats=args.timing_repeats,
            min_repeats=args.timing_min_repeats,
            budget_s=args.timing_budget_s,
            seed=seed,
        )
        single = float(np.median(samples["single_step"]))
        timing["batches"][str(size)] = {
            "users": chosen.tolist()[:8],
            "history_items": int(batch.item_ids.numel()),
        }
        for name, took in samples.items():
            median = float(np.median(took))
            by_name[name][f"batch{size}"] = {
                "calls": len(took),
                "median_ms": round(median * 1e3, 4),
                "per_user_ms": round(median * 1e3 / size, 5),
                "ratio_vs_single_step": round(median / single, 3),
            }
        log.info(
            "[inference] batch %d: %s",
            size,
            "  ".join(f"{n} {by_name[n][f'batch{size}']['per_user_ms']:.3f} ms/user" for n in samples),
        )
    torch.set_num_threads(threads_before)

    single_row = by_name["single_step"]
    matches = None  # forward-free scores here == the trainer's own test evaluation (all users only)
    trainer_test = origin["test"] if args.artifact is None else origin["artifact_metrics"].get("test")
    if len(users) == len(all_users) and trainer_test:
        matches = all(abs(single_row["test"][k] - trainer_test[k]) < 1e-6 for k in METRICS)
    sizes = [min(s, len(pool)) for s in args.timing_batches]
    table = markdown_table(
        ["variant", "C-Net passes", *(m.replace("recall", "R").replace("ndcg", "N") for m in METRICS)]
        + [f"ms/user B={s}" for s in sizes]
        + [f"x single B={s}" for s in sizes],
        [
            [r["variant"], r["cnet_passes"], *(r["test"][m] for m in METRICS)]
            + [r[f"batch{s}"]["per_user_ms"] for s in sizes]
            + [r[f"batch{s}"]["ratio_vs_single_step"] for s in sizes]
            for r in rows
        ],
    )
    headline: dict[str, Any] = {}
    for r in rows:
        headline[f"{r['variant']}_test_recall@20"] = r["test"]["recall@20"]
        headline[f"{r['variant']}_test_ndcg@20"] = r["test"]["ndcg@20"]
    for s in sizes:
        headline[f"single_step_ms_per_user_batch{s}"] = single_row[f"batch{s}"]["per_user_ms"]
        for r in rows:
            if r["kind"] == "multistep":
                headline[f"ratio_b_T{r['reverse_steps']}_batch{s}"] = r[f"batch{s}"]["ratio_vs_single_step"]
    body = {
        "model": origin,
        "trained_steps": cfg.steps,
        "inference_config": {k: getattr(cfg, k) for k in ("steps", "noise_scale", "noise_min", "noise_max")},
        "variants_doc": InferenceVariant.__doc__,
        "multistep_doc": inference_variants.__doc__,
        "eval_users": int(len(users)),
        "eval_users_all": int(len(all_users)),
        "single_step_matches_trainer_test": matches,
        "timing": timing,
        "results": rows,
        "ratio_b": "per-user time of a multi-step (or forward-noised) variant / forward-free single step, "
        "same batch, same threads, interleaved",
    }
    return run.finish(body, headline, table)


# -- 2. ablation (Fig. 5) ----------------------------------------------------------------------------------
def run_ablation(run: Run) -> dict[str, Any]:
    """default, w/o CG, w/o PG, w/o soft labels, DiffRec-style: test metrics at the best-valid epoch."""
    rows = []
    for name in run.args.variants:
        setup = run.setup.with_model(**ABLATION_VARIANTS[name])
        result, wall = train_logged(run.data, setup, f"ablation {name}")
        rows.append(
            {"variant": name, "overrides": ABLATION_VARIANTS[name], **training_row(result, setup, wall)}
        )
    table = markdown_table(
        ["variant", *(m.replace("recall", "R").replace("ndcg", "N") for m in METRICS), "best epoch", "epochs"]
        + ["s/epoch"],
        [
            [
                r["variant"],
                *(r["test"][m] for m in METRICS),
                r["best_epoch"],
                r["epochs_run"],
                r["s_per_epoch"],
            ]
            for r in rows
        ],
    )
    headline: dict[str, Any] = {}
    for r in rows:
        headline |= {
            f"{r['variant']}_test_recall@20": r["test"]["recall@20"],
            f"{r['variant']}_test_ndcg@20": r["test"]["ndcg@20"],
            f"{r['variant']}_s_per_epoch": r["s_per_epoch"],
        }
    return run.finish({"variants": ABLATION_VARIANTS, "results": rows}, headline, table)


# -- 3. robustness (Fig. 4) --------------------------------------------------------------------------------
def sample_fake_pairs(data: InteractionData, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct (user, item) pairs, uniform over the pairs of users with >= 1 training item and
    items that user has in none of train / valid / test; -> users (count,), items (count,) in draw order
    (so a prefix is a uniform sample too, and smaller noise levels are subsets of larger ones)."""
    active = np.nonzero(np.diff(data.train.indptr) > 0)[0]
    n = data.n_items
    known = (data.train + data.valid + data.test).tocoo()
    taken = np.unique(known.row.astype(np.int64) * n + known.col)
    free = len(active) * n - int(np.isin(known.row, active).sum())
    if count > free:
        raise ValueError(f"{count} fake interactions asked, only {free} free (user, item) pairs")
    rng = np.random.default_rng(seed)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < count:
        draw = max(2 * (count - len(keys)), 1024)
        cand = rng.choice(active, size=draw) * n + rng.integers(0, n, size=draw)
        cand = cand[~np.isin(cand, taken)]
        merged = np.concatenate([keys, cand])
        _, first = np.unique(merged, return_index=True)
        keys = merged[np.sort(first)]
    keys = keys[:count]
    return keys // n, keys % n


def with_fake_interactions(data: InteractionData, users: np.ndarray, items: np.ndarray) -> InteractionData:
    """``data`` with the pairs added to the training split only (valid and test untouched)."""
    fake = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=data.train.shape, dtype=np.float32
    )
    train = sp.csr_matrix(data.train + fake)
    train.sort_indices()
    return dataclasses.replace(data, train=train)


def run_robustness(run: Run) -> dict[str, Any]:
    """LD4MRec and DiffRec-style trained on the clean split and with each level of fake interactions."""
    levels = sorted({0.0, *run.args.levels})
    counts = [int(round(level * run.data.train.nnz)) for level in levels]
    fake_users, fake_items = sample_fake_pairs(run.data, max(counts), run.setup.run.seed)
    rows: list[dict[str, Any]] = []
    for level, count in zip(levels, counts, strict=True):
        noisy = with_fake_interactions(run.data, fake_users[:count], fake_items[:count])
        for model_name, overrides in ROBUSTNESS_MODELS.items():
            setup = run.setup.with_model(**overrides)
            label = f"robustness {model_name} noise {level:.0%}"
            result, wall = train_logged(noisy, setup, label)
            rows.append(
                {"model": model_name, "noise": level, "fake_interactions": count}
                | {"train_interactions": int(noisy.train.nnz), **training_row(result, setup, wall)}
            )
    for r in rows:
        clean = next(c for c in rows if c["model"] == r["model"] and c["noise"] == 0.0)
        for m in ("recall@20", "ndcg@20"):
            r[f"drop_{m}"] = round(1.0 - r["test"][m] / clean["test"][m], 4) if clean["test"][m] else None
    table = markdown_table(
        ["model", "noise", "fake", "R@20", "N@20", "R@20 drop", "N@20 drop", "best epoch"],
        [
            [r["model"], f"{r['noise']:.0%}", r["fake_interactions"], r["test"]["recall@20"]]
            + [r["test"]["ndcg@20"], r["drop_recall@20"], r["drop_ndcg@20"], r["best_epoch"]]
            for r in rows
        ],
    )
    headline: dict[str, Any] = {}
    for r in rows:
        key = f"{r['model']}_noise{round(r['noise'] * 100)}"
        headline |= {
            f"{key}_test_recall@20": r["test"]["recall@20"],
            f"{key}_test_ndcg@20": r["test"]["ndcg@20"],
        }
        if r["noise"]:
            headline[f"{key}_drop_recall@20"] = r["drop_recall@20"]

    def draw(fig: Any) -> None:
        for i, metric in enumerate(("recall@20", "ndcg@20")):
            ax = fig.add_subplot(1, 2, i + 1)
            for model_name in ROBUSTNESS_MODELS:
                mine = [r for r in rows if r["model"] == model_name]
                ax.plot(
                    [100 * r["noise"] for r in mine],
                    [r["test"][metric] for r in mine],
                    "o-",
                    label=model_name,
                )
            ax.set_xlabel("fake training interactions (% of train)")
            ax.set_ylabel(f"test {metric}")
            ax.legend()
        fig.suptitle(f"Robustness on {run.data.name}")

    plot = None if run.args.no_plot else _plot(run.out.with_suffix(".png"), draw, (10, 4))
    body = {
        "noise": "fake (user, item) pairs added to the TRAINING split only (signals, SVD and training all "
        "see them; evaluation masks them like any training item), uniform over pairs of users with >= 1 "
        "training item and items that user has in none of train/valid/test; count = level x train "
        f"interactions; seeded with seed {run.setup.run.seed}; smaller levels are subsets of larger ones",
        "models": ROBUSTNESS_MODELS,
        "results": rows,
        "plot": plot,
    }
    return run.finish(body, headline, table)


# -- 4. sensitivity (Fig. 6) -------------------------------------------------------------------------------
def sensitivity_points(
    center: tuple[float, float], p_values: Sequence[float], gamma_values: Sequence[float], grid: bool
) -> list[tuple[float, float]]:
    """(p, gamma) points: every pair with ``grid``, else one at a time around ``center`` (center once)."""
    if grid:
        return [(p, g) for p in p_values for g in gamma_values]
    points = [center] + [(p, center[1]) for p in p_values] + [(center[0], g) for g in gamma_values]
    return sorted(dict.fromkeys(points))


def run_sensitivity(run: Run) -> dict[str, Any]:
    """Soft-label probability p and smoothing gamma: valid and test R@20 / N@20 of each point."""
    args = run.args
    if not run.setup.model.soft_labels:
        log.info("[sensitivity] soft_labels=false in the base config: set to true (p and gamma need it)")
    base = run.setup.with_model(soft_labels=True)
    center = (base.model.soft_p, base.model.soft_gamma)
    points = sensitivity_points(center, args.p_values, args.gamma_values, args.grid)
    rows = []
    for i, (p, gamma) in enumerate(points, start=1):
        setup = base.with_model(soft_p=p, soft_gamma=gamma)
        result, wall = train_logged(run.data, setup, f"sensitivity {i}/{len(points)} p={p} gamma={gamma}")
        rows.append({"soft_p": p, "soft_gamma": gamma, **training_row(result, setup, wall)})
    table = markdown_table(
        ["p", "gamma", "valid R@20", "valid N@20", "test R@20", "test N@20", "best epoch"],
        [
            [r["soft_p"], r["soft_gamma"], r["valid"]["recall@20"], r["valid"]["ndcg@20"]]
            + [r["test"]["recall@20"], r["test"]["ndcg@20"], r["best_epoch"]]
            for r in rows
        ],
    )
    best = max(rows, key=lambda r: r["valid"]["recall@20"])
    headline: dict[str, Any] = {
        "mode": "grid" if args.grid else "one_at_a_time",
        "points": len(rows),
        "best_valid_soft_p": best["soft_p"],
        "best_valid_soft_gamma": best["soft_gamma"],
        "best_valid_test_recall@20": best["test"]["recall@20"],
    }
    for r in rows:
        headline[f"p{r['soft_p']}_g{r['soft_gamma']}_test_recall@20"] = r["test"]["recall@20"]

    def draw(fig: Any) -> None:
        if args.grid:
            ax = fig.add_subplot(1, 1, 1)
            test_r20 = {(r["soft_p"], r["soft_gamma"]): r["test"]["recall@20"] for r in rows}
            values = np.array([[test_r20[p, g] for g in args.gamma_values] for p in args.p_values])
            image = ax.imshow(values, cmap="viridis")
            ax.set_xticks(range(len(args.gamma_values)), [str(g) for g in args.gamma_values])
            ax.set_yticks(range(len(args.p_values)), [str(p) for p in args.p_values])
            ax.set_xlabel("gamma")
            ax.set_ylabel("p")
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, f"{value:.4f}", ha="center", va="center", color="w")
            fig.colorbar(image, ax=ax, label="test recall@20")
        else:
            for i, (key, other, fixed) in enumerate(
                (("soft_p", "soft_gamma", center[1]), ("soft_gamma", "soft_p", center[0]))
            ):
                ax = fig.add_subplot(1, 2, i + 1)
                sweep = sorted((r for r in rows if r[other] == fixed), key=lambda r: r[key])
                for metric in ("recall@20", "ndcg@20"):
                    ax.plot(
                        [r[key] for r in sweep],
                        [r["test"][metric] for r in sweep],
                        "o-",
                        label=f"test {metric}",
                    )
                ax.set_xscale("log")
                ax.set_xlabel(f"{key} ({other} = {fixed})")
                ax.legend()
        fig.suptitle(f"Soft reconstruction sensitivity on {run.data.name}")

    size = (6.0, 5.0) if args.grid else (10.0, 4.0)
    plot = None if args.no_plot else _plot(run.out.with_suffix(".png"), draw, size)
    body = {"mode": headline["mode"], "center": list(center), "results": rows, "plot": plot}
    return run.finish(body, headline, table)


# -- 5. epoch time (ratio c) -------------------------------------------------------------------------------
class EpochRunner:
    """A fresh model built as :func:`train` builds it (``create`` with the same seed), whose epochs
    (``Recommender.fit_epoch``, the span ``train`` reports as seconds per epoch) are timed one at a time,
    so that two models can alternate."""

    def __init__(self, data: InteractionData, setup: Setup) -> None:
        run = setup.run
        self.ctx = FitContext(seed=run.seed, device=torch.device(run.device))
        self.fit_data = training_data(data)
        self.model = get_model(MODEL).create(setup.model, self.fit_data, self.ctx)
        self.epochs_done = 0

    def epoch(self) -> tuple[float, float]:
        """One training epoch -> (seconds, mean loss); seconds cover ``fit_epoch`` only, as in train()."""
        self.epochs_done += 1
        start = time.perf_counter()
        losses = self.model.fit_epoch(self.fit_data, self.epochs_done, self.ctx)
        _sync(self.ctx.device)
        return time.perf_counter() - start, float(losses["loss"])


def run_epoch_time(run: Run) -> dict[str, Any]:
    """Ratio (c): median s/epoch of LD4MRec (base config) / DiffRec-style, epochs alternated A, B, A, B."""
    args = run.args
    if run.setup.run.threads > 0:
        torch.set_num_threads(run.setup.run.threads)
    setups = {"ld4mrec": run.setup, "diffrec_style": run.setup.with_model(**NO_CONDITIONS)}
    runners = {name: EpochRunner(run.data, setup) for name, setup in setups.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    losses: dict[str, list[float]] = {name: [] for name in runners}
    for epoch in range(1, args.warmup + args.epochs + 1):
        for name, runner in runners.items():
            took, loss = runner.epoch()
            timed = epoch > args.warmup
            log.info(
                "[epoch-time] %-13s epoch %d%s loss %.4f %.2f s (no evaluation)",
                name,
                epoch,
                "" if timed else " (warm-up)",
                loss,
                took,
            )
            if timed:
                seconds[name].append(took)
                losses[name].append(loss)
    median = {name: float(np.median(s)) for name, s in seconds.items()}
    ratio = median["ld4mrec"] / median["diffrec_style"]
    rows: list[dict[str, Any]] = [
        {
            "model": name,
            "s_per_epoch_median": round(median[name], 4),
            "seconds": [round(x, 4) for x in seconds[name]],
            "losses": [round(x, 5) for x in losses[name]],
            "overrides": setups[name].diff(),
        }
        for name in runners
    ]
    table = markdown_table(
        ["model", "median s/epoch", "epochs timed", "min", "max"],
        [[n, median[n], len(s), min(s), max(s)] for n, s in seconds.items()],
    )
    table += f"\n\nratio (c) = LD4MRec / DiffRec-style s/epoch = {ratio:.3f}"
    headline = {
        "ld4mrec_s_per_epoch": round(median["ld4mrec"], 4),
        "diffrec_style_s_per_epoch": round(median["diffrec_style"], 4),
        "ratio_c": round(ratio, 4),
        "epochs_timed": args.epochs,
        "threads": torch.get_num_threads(),
    }
    body = {
        "epoch": "one call of the model's fit_epoch (LD4MRec's): every user with >= 1 training item once, "
        "in shuffled mini-batches of batch_size (noise, forward, loss, backward, Adam step); no evaluation, "
        "no model copy; the same span training.trainer.train reports as seconds per epoch",
        "schedule": f"{args.warmup} untimed warm-up epoch(s) each, then {args.epochs} timed epochs each, "
        "alternating ld4mrec, diffrec_style, ld4mrec, ... in one process with the same threads",
        "ratio_c": round(ratio, 4),
        "results": rows,
    }
    return run.finish(body, headline, table)


# -- command line ------------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help=f"dataset name, directory, or '{DEMO}'")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="LD4MRecConfig or RunConfig override (repeatable)",
    )
    common.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    common.add_argument("--out", type=Path, default=None, help="JSON path (default: RESULTS_DIR/paper_...)")
    common.add_argument("--no-plot", action="store_true", help="no PNG (robustness, sensitivity)")
    caps = argparse.ArgumentParser(add_help=False)
    caps.add_argument("--epochs", type=int, default=None, help="cap on epochs (recorded: capped run)")
    caps.add_argument("--patience", type=int, default=None, help="cap on patience (recorded: capped run)")

    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    sub = parser.add_subparsers(dest="analysis", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("inference", parents=[common, caps], formatter_class=fmt, help=run_inference.__doc__)
    p.add_argument(
        "--artifact", type=Path, default=None, help="use this trained artifact instead of training"
    )
    p.add_argument("--multistep", type=_ints, default=[5, 50, 1000], help="T' of the multi-step variants")
    p.add_argument("--eval-users", type=int, default=0, help="seeded subsample of test users (0 = all)")
    p.add_argument("--timing-batches", type=_ints, default=[256, 1], help="users per timed call")
    p.add_argument("--timing-threads", type=int, default=1, help="torch threads while timing (0 = as is)")
    p.add_argument("--timing-repeats", type=int, default=7)
    p.add_argument("--timing-min-repeats", type=int, default=3)
    p.add_argument("--timing-budget-s", type=float, default=60.0, help="per variant and batch size")
    p = sub.add_parser("ablation", parents=[common, caps], formatter_class=fmt, help=run_ablation.__doc__)
    p.add_argument(
        "--variants",
        type=lambda s: [v for v in s.split(",") if v],
        default=list(ABLATION_VARIANTS),
        help=f"subset of {','.join(ABLATION_VARIANTS)}",
    )
    p = sub.add_parser("robustness", parents=[common, caps], formatter_class=fmt, help=run_robustness.__doc__)
    p.add_argument("--levels", type=_floats, default=[0.1, 0.2, 0.3], help="fake fractions (0 is added)")
    p = sub.add_parser(
        "sensitivity", parents=[common, caps], formatter_class=fmt, help=run_sensitivity.__doc__
    )
    p.add_argument("--p-values", type=_floats, default=list(SOFT_VALUES))
    p.add_argument("--gamma-values", type=_floats, default=list(SOFT_VALUES))
    p.add_argument("--grid", action="store_true", help="full p x gamma grid (default: one at a time)")
    p = sub.add_parser("epoch-time", parents=[common], formatter_class=fmt, help=run_epoch_time.__doc__)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per model first")
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.analysis == "ablation":
        unknown = [v for v in args.variants if v not in ABLATION_VARIANTS]
        if unknown or not args.variants:
            raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(ABLATION_VARIANTS)}")
    if args.analysis == "robustness" and not all(0 <= f < 1 for f in args.levels):
        raise SystemExit("--levels: fractions in [0, 1)")
    if args.analysis == "inference" and (not args.timing_batches or min(args.timing_batches) < 1):
        raise SystemExit("--timing-batches: positive batch sizes")
    if args.analysis == "epoch-time" and (args.epochs < 1 or args.warmup < 0):
        raise SystemExit("epoch-time: --epochs >= 1 and --warmup >= 0")
    if args.analysis == "inference" and (not args.multistep or min(args.multistep) < 1):
        raise SystemExit("--multistep: positive step counts")


ANALYSES: dict[str, Callable[[Run], dict[str, Any]]] = {
    "inference": run_inference,
    "ablation": run_ablation,
    "robustness": run_robustness,
    "sensitivity": run_sensitivity,
    "epoch-time": run_epoch_time,
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _check(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("training.trainer").setLevel(logging.DEBUG)  # epoch, loss, valid metrics
    if args.analysis == "epoch-time":
        setup, overrides = base_config(argparse.Namespace(set=args.set))
    else:
        setup, overrides = base_config(args)
    if setup.run.threads > 0:
        torch.set_num_threads(setup.run.threads)
    started = datetime.now(UTC)
    machine = machine_info(torch.device(setup.run.device))
    with tempfile.TemporaryDirectory(prefix="paper-") as tmp:
        data, source = load_data(args.data, Path(tmp))
    log.info("%s; base config overrides %s", data.summary(), json.dumps(overrides))
    run = Run(args.analysis, args, argv, data, source, setup, overrides, started, machine)
    return ANALYSES[args.analysis](run)


if __name__ == "__main__":
    main()
