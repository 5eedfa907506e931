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
    values, ids = torch.topk(scores, k, dim=1)
    if not stable or k == 0:
        return values, ids
    # topk returns the right values but an arbitrary order among equal values and an arbitrary choice
    # among items tied with the k-th value. Order the k results by (score desc, id asc), then refill the
    # slots holding the k-th value with the lowest-id items that have it. Linear in n, unlike a full sort.
    by_id = torch.sort(ids, dim=1).indices
    values, ids = torch.gather(values, 1, by_id), torch.gather(ids, 1, by_id)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, ids = torch.gather(values, 1, by_value), torch.gather(ids, 1, by_value)
    threshold = values[:, -1:]
    n_above = (values > threshold).sum(dim=1)  # every item scoring above the k-th value is in the top k
    tied_rows, tied_ids = torch.nonzero(scores == threshold, as_tuple=True)  # row-major: ids ascend per row
    counts = torch.bincount(tied_rows, minlength=scores.shape[0])
    starts = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(tied_rows.shape[0], device=scores.device) - starts[tied_rows]
    keep = position < (k - n_above)[tied_rows]
    ids = ids.clone()
    ids[tied_rows[keep], n_above[tied_rows[keep]] + position[keep]] = tied_ids[keep]
    return values, ids
