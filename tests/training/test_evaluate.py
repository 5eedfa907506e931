"""All-ranking evaluation against hand-computed cases, and protocol conformance on the real datasets."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training.dataset import load_dataset
from training.evaluate import evaluable_users, evaluate, metrics_from_rankings


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


def test_hand_computed_recall_and_ndcg() -> None:
    rankings = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]])
    targets = [np.array([1, 2]), np.array([4])]
    m = metrics_from_rankings(rankings, targets, ks=(2, 5))
    # user 0: hit at rank 2 (of top-2), both targets by rank 5 (ranks 2 and 5)
    assert m["recall@2"][0] == pytest.approx(0.5)
    assert m["ndcg@2"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["recall@5"][0] == pytest.approx(1.0)
    assert m["ndcg@5"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))
    # user 1: single target at rank 5; ideal DCG uses min(|T|, K) = 1 position
    assert m["recall@2"][1] == 0.0 and m["ndcg@2"][1] == 0.0
    assert m["ndcg@5"][1] == pytest.approx(1 / math.log2(6))


def test_training_items_are_masked_ties_go_to_lower_id_and_users_are_filtered() -> None:
    train = _csr([[0], [1], []], 5)
    test = _csr([[1, 2], [], [3]], 5)
    assert evaluable_users(train, test).tolist() == [0]  # user 1 has no test item, user 2 no training item
    scores = torch.tensor([[9.0, 1.0, 1.0, 1.0, 0.0]] * 3)  # item 0 is best but masked (seen)
    result = evaluate(lambda u: scores[: len(u)], train, test, ks=(1, 2))
    # ranking after masking: 1, 2, 3 (tied, lower id first), 4
    assert result["recall@1"] == pytest.approx(0.5)
    assert result["recall@2"] == pytest.approx(1.0)
    assert result["ndcg@2"] == pytest.approx(1.0)


def test_cut_offs_beyond_the_catalogue_rank_the_whole_catalogue() -> None:
    # 4 items, user 0 trained on item 0: the ranking after masking is 3, 1, 2, then the masked 0.
    train = _csr([[0]], 4)
    test = _csr([[2]], 4)
    scores = torch.tensor([[9.0, 2.0, 1.0, 3.0]])
    result = evaluate(lambda u: scores[: len(u)], train, test, ks=(2, 3, 10, 50))
    assert result["recall@2"] == 0.0
    assert result["recall@3"] == pytest.approx(1.0)
    assert result["ndcg@3"] == pytest.approx(1 / math.log2(4))  # hit at rank 3, ideal: one hit at rank 1
    # K = 10 and 50 exceed the 4 items: the same list as K = 4, so the same values as K = 3 here.
    for k in (10, 50):
        assert result[f"recall@{k}"] == pytest.approx(1.0)
        assert result[f"ndcg@{k}"] == pytest.approx(result["ndcg@3"])


def test_short_rankings_count_missing_positions_as_misses() -> None:
    m = metrics_from_rankings(np.array([[1, 0, 2]]), [np.array([2, 5])], ks=(2, 50))
    assert m["recall@2"][0] == 0.0
    assert m["recall@50"][0] == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@50"][0] == pytest.approx((1 / math.log2(4)) / ideal)


SHARED = Path(os.environ.get("LD4MREC_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))

# ANCHORS.md, "Protocol conformance: item popularity" (R@10, R@20, R@50, N@10, N@20, N@50).
POPULARITY = {
    ("lastfm2k", "valid"): (0.0831, 0.1315, 0.2455, 0.0489, 0.0660, 0.0971),
    ("lastfm2k", "test"): (0.0773, 0.1229, 0.2374, 0.0571, 0.0755, 0.1110),
    ("tiktok", "valid"): (0.0502, 0.0627, 0.1001, 0.0241, 0.0273, 0.0347),
    ("tiktok", "test"): (0.0465, 0.0596, 0.0955, 0.0221, 0.0254, 0.0325),
    ("baby", "valid"): (0.0296, 0.0463, 0.0930, 0.0151, 0.0194, 0.0287),
    ("baby", "test"): (0.0295, 0.0505, 0.0971, 0.0157, 0.0210, 0.0304),
    ("sports", "valid"): (0.0183, 0.0300, 0.0532, 0.0101, 0.0131, 0.0177),
    ("sports", "test"): (0.0181, 0.0291, 0.0521, 0.0103, 0.0132, 0.0178),
}


@pytest.mark.parametrize("name", ["lastfm2k", "tiktok", "baby", "sports"])
def test_popularity_reproduces_the_anchor_figures(name: str) -> None:
    directory = SHARED / name
    assert directory.is_dir(), (
        f"real dataset {directory} not found (set LD4MREC_DATASETS to the shared datasets directory)"
    )
    data = load_dataset(directory, modalities=[])
    popularity = torch.from_numpy(np.asarray(data.train.sum(axis=0)).ravel())

    def score(users: np.ndarray) -> torch.Tensor:
        return popularity[None, :].expand(len(users), -1)

    keys = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")
    for split in ("valid", "test"):
        result = evaluate(score, data.train, getattr(data, split), batch_size=4096)
        for key, expected in zip(keys, POPULARITY[(name, split)], strict=True):
            assert abs(result[key] - expected) <= 1e-4 + 1e-9, (
                f"{name} {split} {key}: {result[key]:.5f} vs {expected}"
            )
