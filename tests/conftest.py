"""Shared fixtures: a small synthetic dataset and a quickly trained artifact (session-scoped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.ld4mrec.config import LD4MRecConfig
from training.config import RunConfig
from training.dataset import InteractionData, load_dataset
from training.export import export_artifact
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import train

SMALL_SPEC = SyntheticSpec(
    n_users=240, n_items=150, latent_dim=8, mean_clicks=16, modalities=(("image", 12), ("text", 8))
)
TINY_LD4MREC: dict[str, Any] = dict(hidden_dim=64, svd_rank=16, batch_size=64, lr=1e-3)
TINY_RUN: dict[str, Any] = dict(epochs=30, patience=10, threads=1)
TINY_DEMO_ARGS = ["--epochs", "3", "--hidden-dim", "32", "--svd-rank", "8", "--threads", "1", "--quiet"]
"""`ld4mrec-train --data demo` options for a demo artifact trained in seconds (for the README's examples)."""


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the MMRec layout (240 users, 150 items, 2 modalities)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", SMALL_SPEC)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_dir: Path) -> InteractionData:
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="session")
def tiny_artifact(synthetic_data: InteractionData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact trained for a few epochs on the synthetic dataset (read-only for tests: copy to modify)."""
    run = RunConfig(**TINY_RUN)
    result = train(synthetic_data, "ld4mrec", LD4MRecConfig(**TINY_LD4MREC), run, progress=False)
    return export_artifact(result, synthetic_data, run, tmp_path_factory.mktemp("artifacts") / "tiny")


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``artifacts/demo`` under a fresh directory, trained by the CLI as ``make demo`` does, on the built-in
    demo data, with tiny settings (read-only for tests)."""
    from training.cli import main as train_cli

    out = tmp_path_factory.mktemp("project") / "artifacts" / "demo"
    assert train_cli(["--data", "demo", "--out", str(out), *TINY_DEMO_ARGS]) == 0
    return out
