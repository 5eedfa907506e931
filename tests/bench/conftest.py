"""Fixtures of the bench smoke tests: artifacts of models other than LD4MRec (closed forms, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.registry import get_model
from training.config import RunConfig
from training.dataset import InteractionData, load_dataset
from training.export import export_artifact
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import train


def _closed_form_artifact(data: InteractionData, model_name: str, out: Path) -> Path:
    run = RunConfig(threads=1)
    result = train(data, model_name, get_model(model_name).config_class(), run, progress=False)
    return export_artifact(result, data, run, out)


@pytest.fixture(scope="session")
def tiny_ease_artifact(synthetic_data: InteractionData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EASE on the shared synthetic dataset (the same users and training histories as ``tiny_artifact``)."""
    return _closed_form_artifact(synthetic_data, "ease", tmp_path_factory.mktemp("artifacts") / "ease")


@pytest.fixture(scope="session")
def other_data_popularity_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Popularity on a different synthetic dataset (other users and histories than ``tiny_artifact``)."""
    spec = SyntheticSpec(n_users=60, n_items=80, latent_dim=4, mean_clicks=8, modalities=(), seed=7)
    data = load_dataset(write_synthetic_dataset(tmp_path_factory.mktemp("data") / "other", spec))
    return _closed_form_artifact(data, "popularity", tmp_path_factory.mktemp("artifacts") / "popularity")
