"""Turn a training result into an artifact directory (see :mod:`model.artifact`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model.artifact import Artifact, write_artifact
from training.config import RunConfig
from training.dataset import InteractionData
from training.trainer import TrainResult

__all__ = ["export_artifact"]

log = logging.getLogger(__name__)


def export_artifact(
    result: TrainResult,
    data: InteractionData,
    run: RunConfig,
    out_dir: str | Path,
    extra_training: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the model's arrays, the training users' states, histories, id maps, log and manifest."""
    training = run.to_dict() | {
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round(result.seconds_per_epoch, 4),
        "fit_seconds": round(result.fit_seconds, 2),
        "world_size": result.world_size,
        "backend": result.backend,
    }
    art = Artifact(
        model=result.model,
        dataset=data.name,
        modality_names=data.modality_names,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        train_histories=data.train,
        user_states=result.model.user_states(),
        metrics=result.metrics,
        training=training | (extra_training or {}),
        training_log=result.log,
    )
    path = write_artifact(art, out_dir, extra_files=extra_files)
    log.info("artifact %s written to %s", art.model_version, path)
    return path
