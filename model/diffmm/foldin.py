"""DiffMM's fold-in: a user's final embedding from a history, without retraining (the paper has none).

For a user u with history h (|h| = deg, ``c = 1 / (deg + 1)``, ``a = sqrt(c)``) and an item table X, let
``agg(X) = a * sum_{i in h} X_i / sqrt(deg_i + 1)``: the user row of the symmetric-normalised propagation
over the interaction graph A. The forward (:mod:`.network`) gives, exactly,

    M_u     = (1 + c) agg(F) + agg(E_id) + r_u          (F = softmax-fused normalised features)
    layer_l = c layer_{l-1} + agg(item rows of layer l-1's input),   layer_0 = M_u
    final_u = sum_l layer_l + ris_lambda * M_u / ||M_u||

where ``r_u = (c + c^2 + ris_adj_lambda / (k + 1)) E_u + ris_adj_lambda * sum_m w_m (G_m E_id)_u`` holds what
a new history lacks: the user's own ID embedding E_u and its edges in the generated graphs. The fold-in
predicts r_u by a linear map of ``[agg(E_id), agg(items_final), c agg(E_id), c agg(items_final), 1]``,
fitted by ridge regression on the training users at the trained state; every other term is exact. Items'
rows are fixed at their trained values. The training users' stored states are their trained embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["FoldInTables", "fit_residual_map", "fold_in", "residual_features"]


@dataclass
class FoldInTables:
    """Item-side tables of the fold-in, float32.

    Attributes:
        item_scale: (I,) ``1 / sqrt(deg_i + 1)`` in the interaction graph.
        fused_features: (I, d) F.
        item_ids: (I, d) E_id.
        item_final: (I, d) final item embeddings (also the scoring table).
        layer_inputs: (I, L * d) item rows of each LightGCN layer's input.
        residual_map: (4 d + 1, d) the ridge map to r_u.
        ris_lambda: weight of the normalised modal term.
    """

    item_scale: np.ndarray
    fused_features: np.ndarray
    item_ids: np.ndarray
    item_final: np.ndarray
    layer_inputs: np.ndarray
    residual_map: np.ndarray
    ris_lambda: float


def _aggregate(histories: sp.csr_matrix, scale: np.ndarray, a: np.ndarray, table: np.ndarray) -> np.ndarray:
    weighted = sp.csr_matrix(histories, dtype=np.float32, copy=True)
    weighted.data[:] = scale[weighted.indices]
    return (weighted @ table).astype(np.float32) * a[:, None]


def residual_features(histories: sp.csr_matrix, tables: FoldInTables) -> tuple[np.ndarray, np.ndarray]:
    """(B, 4 d + 1) regression features of histories (B, I), and their exact part of M_u (B, d)."""
    deg = np.diff(histories.indptr).astype(np.float32)
    c = 1.0 / (deg + 1.0)
    a = np.sqrt(c)
    z_id = _aggregate(histories, tables.item_scale, a, tables.item_ids)
    z_final = _aggregate(histories, tables.item_scale, a, tables.item_final)
    known = (1.0 + c)[:, None] * _aggregate(histories, tables.item_scale, a, tables.fused_features) + z_id
    phi = np.hstack(
        [z_id, z_final, c[:, None] * z_id, c[:, None] * z_final, np.ones((len(deg), 1), np.float32)]
    )
    return phi.astype(np.float32), known.astype(np.float32)


def fit_residual_map(phi: np.ndarray, residual: np.ndarray, ridge: float) -> np.ndarray:
    """(P, d) ridge solution of ``phi (n, P) @ B ~ residual (n, d)`` (float64 normal equations)."""
    p = phi.astype(np.float64)
    gram = p.T @ p + ridge * np.eye(p.shape[1])
    return np.linalg.solve(gram, p.T @ residual.astype(np.float64)).astype(np.float32)


def fold_in(histories: sp.csr_matrix, tables: FoldInTables, residual: np.ndarray | None = None) -> np.ndarray:
    """(B, d) float32 user embeddings of binary histories (B, I). ``residual`` (B, d) replaces the predicted
    r_u (given the true one of a training user, the result is that user's trained embedding)."""
    phi, known = residual_features(histories, tables)
    modal = known + (phi @ tables.residual_map if residual is None else residual)
    deg = np.diff(histories.indptr).astype(np.float32)
    c = 1.0 / (deg + 1.0)
    a = np.sqrt(c)
    d = tables.item_ids.shape[1]
    layer, total = modal, modal.copy()
    for start in range(0, tables.layer_inputs.shape[1], d):
        layer = c[:, None] * layer + _aggregate(
            histories, tables.item_scale, a, tables.layer_inputs[:, start : start + d]
        )
        total += layer
    norm = np.maximum(np.linalg.norm(modal, axis=1, keepdims=True), 1e-12)
    return (total + tables.ris_lambda * modal / norm).astype(np.float32)
