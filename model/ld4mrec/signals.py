"""Condition signals of LD4MRec and their fold-in for any history.

Notation (spec: ``LD4MREC.md``): ``R`` is the binary users x items matrix of training clicks,
``I`` (items x d_svd) and ``Lambda`` (d_svd,) come from a randomized truncated SVD of ``R``,
``F_m`` (items x d_m) is the feature matrix of modality ``m``.

For a history ``h`` (a set of item ids, multi-hot row ``r``) the signals are

* collaborative ``c = [r I Lambda^-1 ; r D_I^-1/2 I / sqrt(|h|)]``          (2 * d_svd,)
* modality      ``m_k = r D_I^-1/2 F_k / sqrt(|h|)``                          (d_k,) per modality

Every block is ``r @ P`` for a fixed projection ``P`` built once from what training fixed, then
optionally divided by ``sqrt(|h|)``. Offline signals of training users and online fold-in of a new
history therefore are *one* function (:func:`signals_from_histories`), which is what makes the
service's answers for an unchanged history equal the trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "SignalBasis",
    "SignalProjection",
    "compute_signal_basis",
    "randomized_svd",
    "signals_from_histories",
]


def randomized_svd(
    matrix: sp.spmatrix | np.ndarray,
    rank: int,
    *,
    n_oversamples: int = 10,
    n_power_iterations: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomized truncated SVD (Halko, Martinsson and Tropp 2011).

    Args:
        matrix: (n_rows, n_cols) sparse or dense matrix.
        rank: number of singular triplets to keep; clipped to min(n_rows, n_cols).
    Returns:
        ``u`` (n_rows, rank), ``s`` (rank,) descending, ``vt`` (rank, n_cols); float64.
    """
    n_rows, n_cols = matrix.shape
    rank = min(rank, n_rows, n_cols)
    width = min(rank + n_oversamples, n_rows, n_cols)
    rng = np.random.default_rng(seed)
    a = sp.csr_matrix(matrix, dtype=np.float64)
    at = a.T.tocsr()
    q, _ = np.linalg.qr(a @ rng.standard_normal((n_cols, width)))
    for _ in range(n_power_iterations):  # power iterations with re-orthonormalisation (LU-free QR variant)
        q, _ = np.linalg.qr(at @ q)
        q, _ = np.linalg.qr(a @ q)
    b = (at @ q).T  # (width, n_cols) == q^T a
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    u = q @ ub
    return u[:, :rank], s[:rank], vt[:rank]


@dataclass(frozen=True)
class SignalBasis:
    """What training fixes so that signals can be computed for any history.

    Attributes:
        item_degree: (n_items,) float32, training clicks per item (|N_i|).
        item_factors: (n_items, d_svd) float32, the SVD's item factors ``I``.
        singular_values: (d_svd,) float32, ``Lambda`` (all > 0).
        modality_features: one (n_items, d_m) float32 matrix per modality, in modality order.
    """

    item_degree: np.ndarray
    item_factors: np.ndarray
    singular_values: np.ndarray
    modality_features: tuple[np.ndarray, ...]

    @property
    def n_items(self) -> int:
        return int(self.item_degree.shape[0])

    @property
    def svd_rank(self) -> int:
        return int(self.singular_values.shape[0])

    @property
    def collab_dim(self) -> int:
        """Width of the collaborative signal: 2 * d_svd."""
        return 2 * self.svd_rank

    @property
    def modality_dims(self) -> tuple[int, ...]:
        return tuple(int(f.shape[1]) for f in self.modality_features)

    def projection(self) -> SignalProjection:
        """The (n_items, collab_dim + sum d_m) matrix whose row sums give every signal."""
        inv_sqrt_degree = np.zeros_like(self.item_degree, dtype=np.float64)
        nonzero = self.item_degree > 0
        inv_sqrt_degree[nonzero] = 1.0 / np.sqrt(self.item_degree[nonzero])
        factors = self.item_factors.astype(np.float64)
        user_part = factors / self.singular_values.astype(np.float64)[None, :]
        blocks = [user_part, factors * inv_sqrt_degree[:, None]]
        blocks += [f.astype(np.float64) * inv_sqrt_degree[:, None] for f in self.modality_features]
        matrix = np.concatenate(blocks, axis=1).astype(np.float32)
        return SignalProjection(matrix=matrix, unscaled_width=self.svd_rank, dims=self._block_dims())

    def _block_dims(self) -> tuple[int, ...]:
        return (self.collab_dim, *self.modality_dims)


@dataclass(frozen=True)
class SignalProjection:
    """Signals as one projection: ``signals(r) = (r @ matrix) * scale``.

    ``scale`` is 1 on the first ``unscaled_width`` columns (the user factors ``r I Lambda^-1``) and
    ``1 / sqrt(|h|)`` on the rest. ``dims`` splits the columns into the collaborative signal followed
    by one block per modality.
    """

    matrix: np.ndarray  # (n_items, width) float32
    unscaled_width: int
    dims: tuple[int, ...]

    def split(self, signals: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Split (n, width) signals into collaborative (n, 2*d_svd) and per-modality (n, d_m)."""
        bounds = np.cumsum((0, *self.dims))
        blocks = [signals[:, bounds[i] : bounds[i + 1]] for i in range(len(self.dims))]
        return blocks[0], blocks[1:]


def signals_from_histories(projection: SignalProjection, histories: sp.csr_matrix) -> np.ndarray:
    """Signals for a batch of histories (offline for all users, or online fold-in).

    Args:
        projection: from :meth:`SignalBasis.projection`.
        histories: (n_users, n_items) binary CSR; duplicates must already be removed.
    Returns:
        (n_users, width) float32; an empty history gives an all-zero row.
    """
    history_len = np.diff(histories.indptr).astype(np.float32)
    # CSR @ dense touches only the clicked rows of the projection: O(nnz * width).
    summed = np.asarray(histories.astype(np.float32) @ projection.matrix, dtype=np.float32)
    scale = np.zeros_like(history_len)
    scale[history_len > 0] = 1.0 / np.sqrt(history_len[history_len > 0])
    summed[:, projection.unscaled_width :] *= scale[:, None]
    return summed


def compute_signal_basis(
    train_matrix: sp.csr_matrix,
    modality_features: tuple[np.ndarray, ...] | list[np.ndarray],
    *,
    svd_rank: int = 100,
    seed: int = 0,
) -> SignalBasis:
    """Randomized SVD of the training matrix plus the item degrees.

    Args:
        train_matrix: (n_users, n_items) binary CSR of training clicks.
        modality_features: per modality, (n_items, d_m) features.
        svd_rank: d_svd; clipped to the matrix rank so that every singular value is > 0.
    """
    _, s, vt = randomized_svd(train_matrix, svd_rank, seed=seed)
    keep = s > 1e-6 * max(float(s[0]), 1e-12) if s.size else np.zeros(0, dtype=bool)
    item_degree = np.asarray(train_matrix.sum(axis=0)).ravel().astype(np.float32)
    return SignalBasis(
        item_degree=item_degree,
        item_factors=vt[keep].T.astype(np.float32),
        singular_values=s[keep].astype(np.float32),
        modality_features=tuple(np.asarray(f, dtype=np.float32) for f in modality_features),
    )
