"""The model contract, checked for every registered model on small generated data (benfred/implicit's
idea: one test mixin every model passes). A new model gets all of it by adding one line to TINY_CONFIGS
(and, if its fold-in is approximate, one to FOLD_IN_MIN_OVERLAP)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.api import ScoredItem, TrainedRecommender
from model.artifact import ArtifactError, read_artifact
from model.base import Recommender, UserBatch
from model.ranking import top_k
from model.registry import MODELS, get_model
from service.engine import Engine, ScoringRequest
from training.artifact_eval import evaluate_artifact
from training.config import RunConfig
from training.dataset import InteractionData, load_dataset
from training.export import export_artifact
from training.trainer import TrainResult, train

from ..conftest import TINY_LD4MREC

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "ld4mrec": TINY_LD4MREC,
    "diffmm": dict(embed_dim=16, denoiser_dim=32, batch_size=256, diffusion_batch_size=64),
    "ease": {"l2_grid": (10.0, 100.0)},
    "popularity": {},
}
"""Small, fast settings of each registered model (the contract is about behaviour, not accuracy)."""

FOLD_IN_MIN_OVERLAP: dict[str, float] = {"diffmm": 0.85}  # DiffMM measured 0.95 on this data
"""Models whose fold-in of a training history only approximates the stored state: the least mean top-20
overlap of the folded-in ranking with the training-time ranking (documented in BENCHMARKS.md). Models not
listed must reproduce the stored states to float32 precision."""

RUN = RunConfig(epochs=6, patience=3, threads=1, seed=7)


@dataclass
class Trained:
    name: str
    result: TrainResult
    path: Path


def _train(name: str, data: InteractionData) -> TrainResult:
    cls = get_model(name)
    return train(data, name, cls.config_class.from_dict(TINY_CONFIGS[name]), RUN, progress=False)


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest, synthetic_data: InteractionData, tmp_path_factory) -> Trained:
    name = str(request.param)
    result = _train(name, synthetic_data)
    path = export_artifact(result, synthetic_data, RUN, tmp_path_factory.mktemp(name) / "art")
    return Trained(name, result, path)


def _scores(model: Recommender, histories, users: np.ndarray, states: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model.score(UserBatch.from_csr(histories[users], users, states[users], model.device))


def test_every_registered_model_has_a_tiny_config() -> None:
    assert set(TINY_CONFIGS) == set(MODELS)
    assert set(FOLD_IN_MIN_OVERLAP) <= set(MODELS)


def test_save_load_round_trip_gives_identical_scores(
    trained: Trained, synthetic_data: InteractionData
) -> None:
    art = read_artifact(trained.path)
    assert art.model.name == trained.name
    users = np.arange(0, synthetic_data.n_users, 7)
    before = _scores(trained.result.model, synthetic_data.train, users, trained.result.model.user_states())
    after = _scores(art.model, art.train_histories, users, art.user_states)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert art.model.fitted() == json.loads((trained.path / "manifest.json").read_text())["model"]["fitted"]


def test_seen_items_are_never_recommended(trained: Trained) -> None:
    engine = Engine.load(trained.path, torch.device("cpu"))
    users = range(0, engine.artifact.n_users, 5)
    requests = [
        ScoringRequest(u, engine.artifact_history(u), engine.stored_state(u), 50, engine.artifact_history(u))
        for u in users
    ]
    for request, result in zip(requests, engine.score(requests), strict=True):
        assert result.items.size == min(50, engine.n_items - request.history.size)
        assert not set(result.items.tolist()) & set(request.history.tolist())


def test_batch_scoring_equals_one_by_one(trained: Trained, synthetic_data: InteractionData) -> None:
    model, states = trained.result.model, trained.result.model.user_states()
    users = np.array([3, 0, 41, 17, 99])
    together = _scores(model, synthetic_data.train, users, states)
    alone = torch.cat(
        [_scores(model, synthetic_data.train, users[i : i + 1], states) for i in range(len(users))]
    )
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_fold_in_of_a_training_history_reproduces_training_time(trained: Trained) -> None:
    art = read_artifact(trained.path)
    active = np.nonzero(np.diff(art.train_histories.indptr) > 0)[0]
    folded = art.model.fold_in(art.train_histories[active])
    assert folded.shape == (active.size, art.model.state_dim) and folded.dtype == np.float32
    min_overlap = FOLD_IN_MIN_OVERLAP.get(trained.name)
    if min_overlap is None:
        np.testing.assert_allclose(folded, art.user_states[active], rtol=1e-5, atol=1e-5)
        return
    stored = _scores(art.model, art.train_histories, active, art.user_states)
    refolded = _scores(art.model, art.train_histories[active], np.arange(active.size), folded)
    overlap = [
        len(set(a) & set(b)) / 20
        for a, b in zip(top_k(stored, 20)[1].tolist(), top_k(refolded, 20)[1].tolist(), strict=True)
    ]
    assert float(np.mean(overlap)) >= min_overlap


def test_cold_start_history_is_scored(trained: Trained) -> None:
    art = read_artifact(trained.path)
    histories = art.train_histories[[2, 3]]
    states = art.model.fold_in(histories)
    scores = _scores(art.model, histories, np.array([0, 1]), states)
    with torch.inference_mode():
        cold = art.model.score(UserBatch.from_csr(histories, np.array([-1, -1]), states, art.model.device))
    assert cold.shape == (2, art.n_items) and bool(torch.isfinite(cold).all())
    assert scores.shape == cold.shape


def test_same_seed_same_result(trained: Trained, synthetic_data: InteractionData) -> None:
    again = _train(trained.name, synthetic_data)
    first, second = trained.result.model.arrays(), again.model.arrays()
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert trained.result.metrics == again.metrics


def test_truncated_or_altered_array_is_refused(trained: Trained, tmp_path: Path) -> None:
    name = sorted(p.name for p in trained.path.glob("model.*.npy"))[0]
    for damage in ("truncate", "alter"):
        copy = tmp_path / damage
        shutil.copytree(trained.path, copy)
        data = bytearray((copy / name).read_bytes())
        if damage == "truncate":
            del data[-4:]
        else:
            data[-2] ^= 0x55
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=name) as info:
            read_artifact(copy)
        assert info.value.path == copy / name


def test_evaluating_the_artifact_reproduces_its_manifest_metrics(
    trained: Trained, synthetic_dir: Path
) -> None:
    """ld4mrec-eval's computation, for every model: exact on the dataset the artifact was trained on."""
    art = read_artifact(trained.path)
    result = evaluate_artifact(art, load_dataset(synthetic_dir, []), batch_size=RUN.eval_batch_size)
    assert result.changed_users == 0 and not result.notes
    assert result.metrics == json.loads((trained.path / "manifest.json").read_text())["metrics"]


def _top(scores: torch.Tensor, masked: np.ndarray, item_ids: tuple[str, ...], k: int) -> list[ScoredItem]:
    scores = scores.clone()
    scores[torch.from_numpy(masked.astype(np.int64))] = float("-inf")
    values, ids = top_k(scores[None, :], k, stable=True)
    return [
        ScoredItem(item_ids[i], float(v)) for i, v in zip(ids[0].tolist(), values[0].tolist(), strict=True)
    ]


def test_python_api_answers_are_the_models_top_scores(trained: Trained) -> None:
    """model/api.py, for every model: recommend = the stored user's top scores without their history;
    similar_items = the top scores of the one-item history folded in as a new user, without the item."""
    rec = TrainedRecommender(read_artifact(trained.path))
    art = rec.artifact
    for user in (0, 7, 123):
        scores = _scores(art.model, art.train_histories, np.array([user]), art.user_states)[0]
        expected = _top(scores, art.train_histories[user].indices, art.item_ids, 20)
        assert rec.recommend(art.user_ids[user], k=20) == expected
    for item in (0, 11, art.n_items - 1):
        history = sp.csr_matrix(([1.0], [item], [0, 1]), shape=(1, art.n_items), dtype=np.float32)
        batch = UserBatch.from_csr(history, np.array([-1]), art.model.fold_in(history), art.model.device)
        with torch.inference_mode():
            cold = art.model.score(batch)[0]
        assert rec.similar_items(art.item_ids[item], k=10) == _top(cold, np.array([item]), art.item_ids, 10)
