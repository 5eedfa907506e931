"""Training any registered model: build it, fit it (in closed form, or epoch by epoch with early stopping
on valid recall@20 and the best epoch kept), then report valid and test metrics at the chosen setting.

Under torchrun (a started :class:`~training.distributed.Launch` of W > 1 processes) every rank runs the
epochs of a model that supports it (``Recommender.distributed``); rank 0 alone evaluates, logs, shows
progress and keeps the best epoch, and its early-stopping decision is broadcast to the others."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.base import (
    SELECT_METRIC,
    ConfigError,
    FitContext,
    ModelConfig,
    Recommender,
    ScoreFn,
    TrainingData,
    make_score_fn,
)
from model.registry import get_model
from training.config import RunConfig
from training.dataset import InteractionData
from training.distributed import SINGLE_PROCESS, Launch, agree, device_for
from training.evaluate import evaluate
from training.progress import EpochProgress

__all__ = ["TrainResult", "train", "training_data"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A fitted model, its metrics at the chosen epoch (0 for closed forms) and the per-epoch log
    (``metrics`` empty on ranks other than 0), and the processes it was trained by."""

    model: Recommender
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    fit_seconds: float = 0.0
    world_size: int = 1
    backend: str | None = None


def training_data(data: InteractionData) -> TrainingData:
    """What the model sees of a dataset: the training split and the item features."""
    return TrainingData(data.train, data.modality_names, data.modality_features)


def _score_fn(model: Recommender, data: InteractionData) -> ScoreFn:
    return make_score_fn(model, data.train, model.user_states())


def train(
    data: InteractionData,
    model_name: str,
    model_config: ModelConfig,
    run: RunConfig,
    *,
    progress: bool = True,
    launch: Launch = SINGLE_PROCESS,
) -> TrainResult:
    """Fit ``model_name`` with ``model_config`` on ``data.train``; select on valid; report valid and test.

    ``launch``: this process's place in a started torchrun launch (default: one process)."""
    run.validate()
    model_config.validate()
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    cls = get_model(model_name)
    if launch.distributed and not (cls.iterative and cls.distributed):
        kind = "is fitted in closed form" if not cls.iterative else "does not shard its training across ranks"
        raise ConfigError(
            f"{model_name} {kind}: it cannot train on {launch.world_size} processes; run it in one process"
        )
    ctx = FitContext(
        seed=run.seed,
        device=device_for(run.device, launch),
        rank=launch.rank,
        world_size=launch.world_size,
        progress=progress and launch.is_main,
    )
    fit_data = training_data(data)
    started = time.perf_counter()
    model = cls.create(model_config, fit_data, ctx)

    def validate(score_fn: ScoreFn) -> dict[str, float]:
        return evaluate(score_fn, data.train, data.valid, batch_size=run.eval_batch_size)

    history: list[dict[str, Any]] = []
    best_epoch, seconds_per_epoch = 0, 0.0
    if cls.iterative:
        best_epoch, history, seconds_per_epoch = _fit_epochs(
            model, fit_data, data, run, ctx, validate, launch
        )
    else:
        model.fit(fit_data, validate, ctx)
    fit_seconds = time.perf_counter() - started
    if not launch.is_main:
        return TrainResult(
            model, best_epoch, {}, history, seconds_per_epoch, fit_seconds, launch.world_size, launch.backend
        )
    score_fn = _score_fn(model, data)
    metrics = {
        "valid": evaluate(score_fn, data.train, data.valid, batch_size=run.eval_batch_size),
        "test": evaluate(score_fn, data.train, data.test, batch_size=run.eval_batch_size),
    }
    chosen = f"epoch {best_epoch}" if cls.iterative else f"fit {model.fitted() or 'closed form'}"
    log.info("%s, %s: valid %s | test %s", model_name, chosen, _fmt(metrics["valid"]), _fmt(metrics["test"]))
    return TrainResult(
        model, best_epoch, metrics, history, seconds_per_epoch, fit_seconds, launch.world_size, launch.backend
    )


def _fit_epochs(
    model: Recommender,
    fit_data: TrainingData,
    data: InteractionData,
    run: RunConfig,
    ctx: FitContext,
    validate: Any,
    launch: Launch,
) -> tuple[int, list[dict[str, Any]], float]:
    """The epoch loop: train, evaluate every ``eval_every`` epochs, stop after ``patience`` evaluations
    without a better valid recall@20, restore the best epoch. Returns (best epoch, log, median s/epoch).

    Other ranks than 0 train only: they neither evaluate nor keep snapshots, and stop when rank 0 does."""
    best_valid, best_epoch, bad_evals = -1.0, 0, 0
    best_state = model.snapshot()
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    progress = EpochProgress(f"train {model.name} {data.name}", run.epochs, enabled=ctx.progress)
    fields: dict[str, str] = {}
    try:
        for epoch in range(1, run.epochs + 1):
            t0 = time.perf_counter()
            losses = model.fit_epoch(fit_data, epoch, ctx)
            epoch_seconds.append(time.perf_counter() - t0)
            row: dict[str, Any] = {"epoch": epoch, **losses, "seconds": epoch_seconds[-1]}
            fields = {"loss": f"{losses.get('loss', float('nan')):.4f}"}
            evaluated = launch.is_main and (epoch % run.eval_every == 0 or epoch == run.epochs)
            if evaluated:
                valid = validate(_score_fn(model, data))
                row["valid"] = valid
                if valid[SELECT_METRIC] > best_valid:
                    best_valid, best_epoch, bad_evals = valid[SELECT_METRIC], epoch, 0
                    best_state = model.snapshot()
                else:
                    bad_evals += 1
                log.debug("epoch %d %s valid %s", epoch, losses, _fmt(valid))
            history.append(row)
            cap = min(run.epochs, best_epoch + run.patience * run.eval_every)
            if best_valid >= 0:
                fields |= {
                    f"valid_{SELECT_METRIC}": f"{row.get('valid', {}).get(SELECT_METRIC, best_valid):.4f}",
                    "best": f"{best_valid:.4f}@{best_epoch}",
                }
            stop = agree(bad_evals >= run.patience, launch, ctx.device)
            progress.update(epoch, max(cap, epoch), fields, force=stop or epoch == run.epochs)
            if stop:
                log.info(
                    "early stop at epoch %d: no valid %s gain for %d evaluations (best epoch %d)",
                    epoch,
                    SELECT_METRIC,
                    run.patience,
                    best_epoch,
                )
                break
    finally:
        progress.close()
    if launch.is_main:
        model.restore(best_state)
    return best_epoch, history, float(np.median(epoch_seconds)) if epoch_seconds else 0.0


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
