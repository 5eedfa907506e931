"""Soft labels, determinism, early stopping and the end-to-end path: synthetic data -> train -> artifact
-> load -> scores; the CLI for every registered model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.artifact import read_artifact
from model.base import make_score_fn
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.recommender import soft_target
from model.popularity import PopularityConfig
from model.registry import model_names
from training.cli import main as train_cli
from training.config import RunConfig
from training.evaluate import evaluate
from training.trainer import train

from ..conftest import TINY_LD4MREC, TINY_RUN


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
    run = RunConfig(**(TINY_RUN | {"epochs": 2}))
    cfg = LD4MRecConfig(**TINY_LD4MREC)
    first, second = (train(synthetic_data, "ld4mrec", cfg, run, progress=False) for _ in range(2))
    assert [row["loss"] for row in first.log] == [row["loss"] for row in second.log]
    assert first.metrics == second.metrics


def test_early_stopping_keeps_the_best_valid_epoch(synthetic_data) -> None:
    run = RunConfig(epochs=40, patience=2, threads=1)
    result = train(
        synthetic_data, "ld4mrec", LD4MRecConfig(**TINY_LD4MREC | {"lr": 0.05}), run, progress=False
    )
    evaluated = [row for row in result.log if "valid" in row]
    best = max(evaluated, key=lambda row: row["valid"]["recall@20"])
    assert result.best_epoch == best["epoch"]
    assert len(result.log) == result.best_epoch + 2 < 40  # stopped `patience` evaluations after the best
    assert result.metrics["valid"]["recall@20"] == pytest.approx(best["valid"]["recall@20"], abs=1e-9)


def test_end_to_end_model_beats_popularity_by_a_wide_margin(tiny_artifact: Path, synthetic_data) -> None:
    art = read_artifact(tiny_artifact)
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    ours = evaluate(
        make_score_fn(art.model, art.train_histories, art.user_states),
        synthetic_data.train,
        synthetic_data.test,
    )
    popularity = train(synthetic_data, "popularity", PopularityConfig(), RunConfig(), progress=False)
    pop = popularity.metrics["test"]
    # The loaded artifact reproduces the trainer's own test metrics at the best-valid epoch ...
    assert ours["recall@20"] == pytest.approx(manifest["metrics"]["test"]["recall@20"], abs=1e-6)
    # ... and the model has learned far more than item popularity.
    assert ours["recall@20"] > 1.5 * pop["recall@20"]
    assert ours["ndcg@20"] > 1.5 * pop["ndcg@20"]
    assert manifest["training"]["best_epoch"] >= 1
    assert len(art.training_log) >= manifest["training"]["best_epoch"]


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
    config = manifest["model"]["config"]
    assert manifest["model"]["name"] == "ld4mrec" and config["use_pg"] is False and config["hidden_dim"] == 32
    assert manifest["training"]["epochs"] == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.inter").write_text("userID\titemID\tx_label\n0\tx\t0\n")
    assert train_cli(["--data", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "bad.inter: line 2: itemID 'x' is not an integer" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert train_cli(["--data", str(synthetic_dir), "--out", str(tmp_path / "x"), "--lr", "-1"]) == 2
    assert "invalid value for lr" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ease", "popularity"])
def test_cli_trains_closed_form_models(synthetic_dir: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    extra = ["--l2-grid", "10", "100"] if name == "ease" else []
    assert (
        train_cli(["--model", name, "--data", str(synthetic_dir), "--out", str(out), "--quiet", *extra]) == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == name
    if name == "ease":
        assert manifest["model"]["config"]["l2_grid"] == [10.0, 100.0]
        assert manifest["model"]["fitted"]["l2"] in (10.0, 100.0)
    assert read_artifact(out).model.name == name


def test_every_option_has_a_help_line(capsys) -> None:
    for name in model_names():
        with pytest.raises(SystemExit):
            train_cli(["--model", name, "--help"])
        text = capsys.readouterr().out
        assert f"{name} hyperparameters" in text
    from training.cli import build_parser

    for name in model_names():
        for action in build_parser(name)._actions:
            assert action.help, f"{name}: {action.option_strings} has no help"
