"""Masking and top-k over item scores, shared by the evaluator and the service."""

from __future__ import annotations

import torch

__all__ = ["mask_items", "top_k"]


def mask_items(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Set ``scores[rows[j], items[j]] = -inf`` in place and return ``scores`` (B, n)."""
    if rows.numel():
        scores[rows, items] = float("-inf")
    return scores


def top_k(scores: torch.Tensor, k: int, *, stable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest ``k`` scores per row -> (values (B, k), item ids (B, k)), best first.

    ``stable=True`` breaks ties by the lower item id (a stable descending sort; used by the evaluator so
    that tied scores, e.g. popularity, rank reproducibly). ``stable=False`` uses ``torch.topk``.
    """
    k = min(k, scores.shape[1])
    if stable:
        values, ids = torch.sort(scores, dim=1, descending=True, stable=True)
        return values[:, :k], ids[:, :k]
    values, ids = torch.topk(scores, k, dim=1)
    return values, ids
