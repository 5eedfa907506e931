"""All-ranking evaluation (MMRec's protocol, spec "Evaluation protocol").

Every item is ranked; only *training* items are masked; users with at least one item in the evaluated
split and at least one training item are evaluated. Recall@K = hits / |T_u|; NDCG@K uses binary gains
``1 / log2(rank + 1)`` and the ideal DCG over ``min(|T_u|, K)`` positions. Ties rank the lower item id first.

A cut-off K above the catalogue size n is defined as the whole ranking: the list holds all n items (there
are no more), so Recall@K = Recall@n and NDCG@K = NDCG@n. Every held-out item is then in the list, so
Recall@K is 1.0 for any model: such a metric carries no information (the dataset loader warns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from model.ranking import mask_items, top_k

__all__ = ["DEFAULT_KS", "evaluable_users", "evaluate", "metrics_from_rankings"]

DEFAULT_KS: tuple[int, ...] = (10, 20, 50)

ScoreFn = Callable[[np.ndarray], torch.Tensor]
"""Maps internal user ids (B,) to scores (B, n_items)."""


def evaluable_users(train: sp.csr_matrix, split: sp.csr_matrix) -> np.ndarray:
    """Users with >= 1 training item and >= 1 item in ``split`` (sorted int64)."""
    has_train = np.diff(train.indptr) > 0
    has_split = np.diff(split.indptr) > 0
    return np.nonzero(has_train & has_split)[0].astype(np.int64)


def metrics_from_rankings(
    rankings: np.ndarray, targets: Sequence[np.ndarray], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, np.ndarray]:
    """Per-user metrics.

    Args:
        rankings: (B, L) item ids, best first; L >= max(ks), or L < max(ks) when the catalogue has only
            L items (positions beyond L count as misses: see the module docstring).
        targets: B arrays of held-out item ids (each non-empty).
    Returns:
        ``{"recall@K": (B,), "ndcg@K": (B,)}`` for each K.
    """
    max_k = max(ks)
    hits = np.zeros((len(targets), max_k), dtype=np.float64)
    n_targets = np.empty(len(targets), dtype=np.float64)
    for row, (ranked, target) in enumerate(zip(rankings, targets, strict=True)):
        listed = ranked[:max_k]
        hits[row, : len(listed)] = np.isin(listed, target)
        n_targets[row] = len(target)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = hits[:, :k].sum(axis=1) / n_targets
        dcg = (hits[:, :k] * discounts[:k]).sum(axis=1)
        ideal_len = np.minimum(n_targets, k).astype(np.int64)
        ideal = np.cumsum(discounts[:k])[ideal_len - 1]
        out[f"ndcg@{k}"] = dcg / ideal
    return out


def evaluate(
    score_fn: ScoreFn,
    train: sp.csr_matrix,
    split: sp.csr_matrix,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the evaluable users of ``split``.

    Args:
        score_fn: internal user ids (B,) -> scores (B, n_items), higher is better.
        train: (n_users, n_items) training matrix, masked before ranking.
        split: (n_users, n_items) held-out matrix (valid or test).
    """
    users = evaluable_users(train, split)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = score_fn(batch).float().clone()
        seen = train[batch]
        rows = torch.from_numpy(np.repeat(np.arange(len(batch)), np.diff(seen.indptr)))
        mask_items(scores, rows, torch.from_numpy(seen.indices.astype(np.int64)))
        _, ranked = top_k(scores, max(ks), stable=True)
        targets = [split.indices[split.indptr[u] : split.indptr[u + 1]] for u in batch]
        for key, values in metrics_from_rankings(ranked.cpu().numpy(), targets, ks).items():
            sums[key] += float(values.sum())
    n = max(len(users), 1)
    return {key: value / n for key, value in sums.items()}
