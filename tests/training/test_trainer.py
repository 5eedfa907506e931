"""Soft labels, determinism and the end-to-end path: synthetic data -> train -> artifact -> load -> scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import build_model, read_artifact
from model.ld4mrec import HistoryBatch
from training.cli import main as train_cli
from training.config import TrainConfig
from training.evaluate import evaluate
from training.trainer import soft_target, train

from ..conftest import TINY_CONFIG


def test_soft_target_replaces_sampled_entries() -> None:
    x = (torch.rand(200, 300, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    torch.testing.assert_close(soft_target(x, 0.0, 0.05), x)
    all_smoothed = soft_target(x, 1.0, 0.05)
    torch.testing.assert_close(all_smoothed, torch.where(x > 0, 0.95, 0.05))
    partly = soft_target(x, 0.2, 0.05, torch.Generator().manual_seed(1))
    changed = (partly != x).float().mean().item()
    assert changed == pytest.approx(0.2, abs=0.01)
    assert {round(v, 6) for v in torch.unique(partly).tolist()} <= {0.0, 1.0, 0.05, 0.95}


def test_training_is_deterministic_for_a_seed(synthetic_data) -> None:
    cfg = TrainConfig(**(TINY_CONFIG | {"epochs": 2}))
    first, second = train(synthetic_data, cfg, progress=False), train(synthetic_data, cfg, progress=False)
    assert [row["loss"] for row in first.log] == [row["loss"] for row in second.log]
    assert first.metrics == second.metrics


def test_end_to_end_model_beats_popularity_by_a_wide_margin(tiny_artifact: Path, synthetic_data) -> None:
    art = read_artifact(tiny_artifact)
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    model = build_model(art)

    @torch.inference_mode()
    def score(users: np.ndarray) -> torch.Tensor:
        return model.score(
            HistoryBatch.from_csr(art.train_histories[users], users, art.signals[users], torch.device("cpu"))
        )

    popularity = torch.from_numpy(art.item_popularity)
    ours = evaluate(score, synthetic_data.train, synthetic_data.test)
    pop = evaluate(
        lambda u: popularity[None, :].expand(len(u), -1), synthetic_data.train, synthetic_data.test
    )
    # The loaded artifact reproduces the trainer's own test metrics at the best-valid epoch ...
    assert ours["recall@20"] == pytest.approx(manifest["metrics"]["test"]["recall@20"], abs=1e-6)
    # ... and the model has learned far more than item popularity.
    assert ours["recall@20"] > 1.5 * pop["recall@20"]
    assert ours["ndcg@20"] > 1.5 * pop["ndcg@20"]
    assert manifest["hyperparameters"]["best_epoch"] >= 1
    assert len(art.training_log) == manifest["hyperparameters"]["epochs"] or len(art.training_log) >= 1


def test_cli_trains_and_reports_dataset_errors(synthetic_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-art"
    args = [
        "--data",
        str(synthetic_dir),
        "--out",
        str(out),
        "--quiet",
        "--epochs",
        "2",
        "--hidden-dim",
        "32",
        "--svd-rank",
        "8",
        "--batch-size",
        "64",
        "--no-use-pg",
        "--modalities",
        "text",
    ]
    assert train_cli(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality_order"] == ["text"]
    assert manifest["hyperparameters"]["use_pg"] is False and manifest["cnet"]["hidden_dim"] == 32
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("userID\titemID\tx_label\n0\tx\t0\n")
    assert train_cli(["--data", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "bad.inter: line 2: itemID 'x' is not an integer" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert train_cli(["--data", str(synthetic_dir), "--out", str(tmp_path / "x"), "--lr", "-1"]) == 2
