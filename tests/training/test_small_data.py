"""A catalogue smaller than the largest metric cut-off trains, evaluates and exports."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model.artifact import read_artifact
from model.ld4mrec.config import LD4MRecConfig
from training.config import RunConfig
from training.dataset import load_dataset
from training.export import export_artifact
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import train

from ..conftest import TINY_LD4MREC, TINY_RUN


def test_a_30_item_catalogue_trains_and_evaluates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = SyntheticSpec(n_users=60, n_items=30, mean_clicks=8, min_clicks=4, modalities=(("image", 6),))
    with caplog.at_level(logging.WARNING, logger="training.dataset"):
        data = load_dataset(write_synthetic_dataset(tmp_path / "small", spec))
    assert data.n_items == 30
    assert "the catalogue has 30 items, not more than the metric cut-off(s) 50" in caplog.text
    run = RunConfig(**(TINY_RUN | {"epochs": 3}))
    result = train(data, "ld4mrec", LD4MRecConfig(**TINY_LD4MREC), run, progress=False)
    for split in ("valid", "test"):
        metrics = result.metrics[split]
        assert set(metrics) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20, 50)}
        assert metrics["recall@50"] == pytest.approx(1.0)  # K = 50 ranks all 30 items
        assert 0.0 < metrics["recall@10"] <= metrics["recall@20"] <= 1.0
        assert 0.0 < metrics["ndcg@10"] <= 1.0 and 0.0 < metrics["ndcg@50"] <= 1.0
    art = read_artifact(export_artifact(result, data, run, tmp_path / "art"))
    assert art.n_items == 30
