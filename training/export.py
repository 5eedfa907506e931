"""Turn a training result into an artifact directory (see :mod:`model.artifact`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.artifact import Artifact, write_artifact
from training.config import TrainConfig
from training.dataset import InteractionData
from training.trainer import TrainResult

__all__ = ["export_artifact"]

log = logging.getLogger(__name__)


def export_artifact(
    result: TrainResult, data: InteractionData, cfg: TrainConfig, out_dir: str | Path
) -> Path:
    """Write weights, signals, fold-in basis, histories, id maps, log and manifest to ``out_dir``."""
    model = result.model
    hyper = cfg.to_dict() | {
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round(result.seconds_per_epoch, 4),
    }
    art = Artifact(
        dataset=data.name,
        modality_names=data.modality_names,
        cnet_config=model.cnet.cfg,
        diffusion=model.diffusion,
        weights={k: v.detach().cpu() for k, v in model.cnet.state_dict().items()},
        z_in=model.z_in.weight.detach().cpu().numpy(),
        signals=result.signals,
        basis=result.basis,
        train_histories=data.train,
        item_popularity=np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32),
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        metrics=result.metrics,
        train_config=hyper,
        training_log=result.log,
    )
    path = write_artifact(art, out_dir)
    log.info("artifact %s written to %s", art.model_version, path)
    return path
