"""LD4MRec's structural ablation switches (BENCHMARKS.md, *Structural candidates*): each one changes the
computation, and with it on the artifact round trip and the fold-in still reproduce training time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.artifact import read_artifact
from model.base import UserBatch
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.item_graphs import gfcf_prior, modality_knn_graph
from training.config import RunConfig
from training.dataset import InteractionData
from training.export import export_artifact
from training.trainer import TrainResult, train

from ..conftest import TINY_LD4MREC

RUN = RunConfig(epochs=2, patience=2, threads=1, seed=3)
ALL_OFF: dict[str, Any] = {"item_graph": 0.0, "feature_output": False, "gfcf_prior": False, "rank_loss": 0.0}
SWITCHES: dict[str, dict[str, Any]] = {
    "item_graph": {"item_graph": 1.0},
    "feature_output": {"feature_output": True},
    "gfcf_prior": {"gfcf_prior": True},
    "rank_loss": {"rank_loss": 0.1},
}


def _train(data: InteractionData, **switch: Any) -> TrainResult:
    """Every structural switch off but ``switch``."""
    config = LD4MRecConfig.from_dict(TINY_LD4MREC | ALL_OFF | switch)
    return train(data, "ld4mrec", config, RUN, progress=False)


def _scores(result: TrainResult, histories: sp.csr_matrix, states: np.ndarray) -> torch.Tensor:
    users = np.arange(0, histories.shape[0], 5)
    batch = UserBatch.from_csr(histories[users], users, states[users], result.model.device)
    with torch.inference_mode():
        return result.model.score(batch)


@pytest.fixture(scope="module")
def default_scores(synthetic_data: InteractionData) -> torch.Tensor:
    result = _train(synthetic_data)
    return _scores(result, synthetic_data.train, result.model.user_states())


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_changes_scores_and_keeps_round_trip_and_fold_in(
    name: str, synthetic_data: InteractionData, default_scores: torch.Tensor, tmp_path: Path
) -> None:
    result = _train(synthetic_data, **SWITCHES[name])
    states = result.model.user_states()
    scores = _scores(result, synthetic_data.train, states)
    assert torch.isfinite(scores).all()
    assert not torch.allclose(scores, default_scores, atol=1e-4), f"{name} did not change the scores"
    art = read_artifact(export_artifact(result, synthetic_data, RUN, tmp_path / "art"))
    torch.testing.assert_close(_scores(result, art.train_histories, art.user_states), scores, rtol=0, atol=0)
    active = np.nonzero(np.diff(art.train_histories.indptr) > 0)[0]
    np.testing.assert_allclose(
        art.model.fold_in(art.train_histories[active]), art.user_states[active], rtol=1e-5, atol=1e-5
    )


def test_modality_knn_graph_rows_are_k_nearest_others_and_sum_to_one() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 7))
    graph = modality_knn_graph((a, b), k=4).to_dense().numpy()
    np.testing.assert_allclose(graph.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.diag(graph) == 0)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nearest = set(np.argsort(-sim[0])[:4].tolist())
    assert nearest <= set(np.nonzero(graph[0])[0].tolist())


def test_gfcf_prior_is_the_normalised_cooccurrence_plus_low_pass() -> None:
    rng = np.random.default_rng(1)
    dense = (rng.random((40, 12)) < 0.3).astype(np.float64)
    dense[0, :] = 1.0  # every item clicked at least once
    r = sp.csr_matrix(dense)
    du, di = np.asarray(r.sum(axis=1)).ravel(), np.asarray(r.sum(axis=0)).ravel()
    norm = r.toarray() / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    _, _, vt = np.linalg.svd(norm)
    expected = norm.T @ norm + 0.3 * np.diag(1 / np.sqrt(di)) @ vt[:3].T @ vt[:3] @ np.diag(np.sqrt(di))
    np.testing.assert_allclose(gfcf_prior(r, rank=3), expected, rtol=1e-4, atol=1e-4)
