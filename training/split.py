"""Per-user leave-out split of interactions into train / valid / test (x_label 0 / 1 / 2).

Each user's interactions are put in order: by timestamp (chronological split; equal timestamps keep their
file order) or by a seeded random permutation (random split). The last ``n_test`` go to test, the
``n_valid`` before them to valid, the rest to train. A user with fewer than ``n_valid + n_test + 1``
interactions keeps them all in train (so every evaluated user has at least one training interaction).
"""

from __future__ import annotations

import numpy as np

__all__ = ["leave_out_labels", "min_interactions", "random_order"]


def min_interactions(n_valid: int, n_test: int) -> int:
    """Fewest interactions a user needs to be held out from (the rest stays in train)."""
    return n_valid + n_test + 1


def random_order(n_rows: int, seed: int) -> np.ndarray:
    """(n_rows,) float64 sort keys of a seeded random order."""
    return np.random.default_rng(seed).random(n_rows)


def leave_out_labels(users: np.ndarray, order: np.ndarray, n_valid: int, n_test: int) -> np.ndarray:
    """x_label of every row.

    Args:
        users: (n,) int64 internal user id of each row.
        order: (n,) sort key of each row within its user (timestamps, or :func:`random_order`); ties keep
            row order.
        n_valid, n_test: interactions per user held out for valid and test (>= 1 each).
    Returns:
        (n,) int64 labels: 0 train, 1 valid, 2 test.
    """
    if n_valid < 1 or n_test < 1:
        raise ValueError("n_valid and n_test must be >= 1")
    n = users.shape[0]
    rows = np.lexsort((np.arange(n), order, users))  # by user, then key, then row
    sorted_users = users[rows]
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    from_end = counts[sorted_users] - 1 - (np.arange(n) - starts[sorted_users])
    sorted_labels = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0))
    sorted_labels[counts[sorted_users] < min_interactions(n_valid, n_test)] = 0
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = sorted_labels
    return labels
