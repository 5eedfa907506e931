"""EASE: the closed form, lambda chosen on valid, and the early refusal of catalogues too large for it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import model.ease as ease_module
from model.base import FitContext, TrainingData, UserBatch
from model.ease import EASEConfig, EASEMemoryError, _closed_form, ease_memory_bytes
from model.registry import get_model

EASE: Any = get_model("ease")  # its own attributes are used below


def _data(n_users: int = 60, n_items: int = 25, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    return TrainingData(sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32)))


def test_closed_form_matches_the_textbook_formula() -> None:
    x = _data().train.toarray().astype(np.float64)
    weights = _closed_form(torch.from_numpy(x.T @ x), 7.0, block=4).numpy()  # blocks smaller than n
    p = np.linalg.inv(x.T @ x + 7.0 * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)


def test_fit_keeps_the_lambda_best_on_valid_and_scores_are_x_times_b() -> None:
    data = _data()
    model = EASE.create(EASEConfig(l2_grid=(1.0, 10.0, 100.0)), data, FitContext())
    picks = {1.0: 0.1, 10.0: 0.3, 100.0: 0.2}
    seen: list[float] = []

    def validate(score_fn):  # a fake valid split: prefers lambda 10
        seen.append(len(seen))
        return {"recall@20": list(picks.values())[len(seen) - 1]}

    model.fit(data, validate, FitContext())
    assert model.fitted()["l2"] == 10.0 and len(seen) == 3
    x = data.train[:4]
    batch = UserBatch.from_csr(x, np.arange(4), np.zeros((4, 0), np.float32), torch.device("cpu"))
    torch.testing.assert_close(model.score(batch), torch.from_numpy(x.toarray()) @ model.weights)


def test_a_catalogue_above_max_items_is_refused_with_the_size_needed() -> None:
    with pytest.raises(EASEMemoryError, match=r"25 items would take 0\.0 GiB .* limit of 20 items"):
        EASE.create(EASEConfig(max_items=20), _data(), FitContext())


def test_a_catalogue_larger_than_the_free_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ease_module, "available_bytes", lambda: ease_memory_bytes(25) - 1)
    with pytest.raises(EASEMemoryError, match="only 0.0 GiB of memory is available"):
        EASE.create(EASEConfig(), _data(), FitContext())
    assert ease_memory_bytes(18_357) == 24 * 18_357**2  # 7.5 GiB for sports
