"""Top-k and masking shared by the evaluator and the service."""

from __future__ import annotations

import torch

from model.ranking import mask_items, top_k


def test_stable_top_k_breaks_ties_by_lower_item_id() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]])
    values, ids = top_k(scores, 3, stable=True)
    assert ids.tolist() == [[1, 2, 4], [4, 0, 1]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [5.0, 0.0, 0.0]]


def test_stable_top_k_equals_a_full_stable_sort_on_random_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 300), generator=gen).float()
    mask_items(scores, torch.tensor([0, 0, 5]), torch.tensor([3, 7, 9]))
    for k in (1, 10, 50, 300):
        _, ids = top_k(scores, k, stable=True)
        expected = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(ids, expected)


def test_mask_items_sets_minus_infinity_and_k_is_clipped() -> None:
    scores = torch.zeros(2, 4)
    mask_items(scores, torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert scores[0, 2] == float("-inf") and scores[1, 0] == float("-inf")
    values, ids = top_k(scores, 10)
    assert values.shape == (2, 4)
