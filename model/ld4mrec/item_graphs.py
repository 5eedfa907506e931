"""Fixed item-item structures behind LD4MRec's structural ablation switches (BENCHMARKS.md, *Structural
candidates*): the modality kNN graph (LATTICE / FREEDOM) and the GF-CF prior (Shen et al. 2021).

Both are built once from what training fixes: the modality graph from the item features (which the artifact
stores, so a loaded model rebuilds it), the GF-CF prior from the training matrix (saved as a C-Net buffer).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from model.ld4mrec.signals import randomized_svd

__all__ = [
    "GFCF_LOW_PASS_WEIGHT",
    "KNN_NEIGHBOURS",
    "gfcf_prior",
    "modality_knn_graph",
    "standardised_features",
]

KNN_NEIGHBOURS = 10
"""k of the modality kNN graphs (LATTICE's and FREEDOM's default)."""

GFCF_LOW_PASS_WEIGHT = 0.3
"""alpha of GF-CF's ideal low-pass term (the paper's and its code's value)."""


def modality_knn_graph(features: tuple[np.ndarray, ...], k: int = KNN_NEIGHBOURS) -> torch.Tensor:
    """The mean over modalities of each modality's top-k cosine kNN graph, as FREEDOM builds it.

    Per modality: cosine similarity of the item features, each item's k most similar other items get weight
    1, rows normalised ``D^-1/2 A D^-1/2`` (every row has k entries, so that is ``A / k``). The result is the
    (n, n) sparse COO tensor ``S = mean_m A_m / k`` (rows sum to 1), float32, coalesced.
    """
    if not features:
        raise ValueError("the modality kNN graph needs at least one modality")
    n = int(features[0].shape[0])
    k = min(k, n - 1)
    rows, cols, vals = [], [], []
    for f in features:
        x = torch.from_numpy(np.asarray(f, dtype=np.float32))
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for start in range(0, n, 2048):  # (chunk, n) similarities at a time
            sim = x[start : start + 2048] @ x.T
            idx = torch.arange(start, min(start + 2048, n))
            sim[idx - start, idx] = -torch.inf  # not its own neighbour
            top = sim.topk(k, dim=1).indices
            rows.append(idx[:, None].expand(-1, k).reshape(-1))
            cols.append(top.reshape(-1))
            vals.append(torch.full((idx.numel() * k,), 1.0 / (k * len(features))))
    index = torch.stack([torch.cat(rows), torch.cat(cols)])
    graph = torch.sparse_coo_tensor(index, torch.cat(vals), (n, n), check_invariants=True)
    return graph.coalesce()


def standardised_features(features: tuple[np.ndarray, ...]) -> np.ndarray:
    """The modalities side by side, each column standardised (zero mean, unit variance) and each modality
    divided by sqrt(d_m): (n, sum d_m) float32, the item side of the feature output layer."""
    blocks = []
    for f in features:
        f = np.asarray(f, dtype=np.float64)
        std = f.std(axis=0)
        blocks.append((f - f.mean(axis=0)) / np.where(std > 0, std, 1.0) / np.sqrt(f.shape[1]))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def gfcf_prior(train: sp.csr_matrix, rank: int, seed: int = 0) -> np.ndarray:
    """GF-CF's item-item filter: ``P = R~^T R~ + alpha D_I^-1/2 V_k V_k^T D_I^1/2`` (n, n) float32.

    ``R~ = D_U^-1/2 R D_I^-1/2`` is the degree-normalised training matrix, ``V_k`` its top-``rank`` right
    singular vectors (the ideal low-pass filter), alpha = :data:`GFCF_LOW_PASS_WEIGHT`. A history row ``r``
    is scored ``r @ P``."""
    r = sp.csr_matrix(train, dtype=np.float64)
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    inv_u = np.where(du > 0, 1.0 / np.sqrt(np.maximum(du, 1e-12)), 0.0)
    inv_i = np.where(di > 0, 1.0 / np.sqrt(np.maximum(di, 1e-12)), 0.0)
    norm = sp.diags(inv_u) @ r @ sp.diags(inv_i)
    linear = np.asarray((norm.T @ norm).toarray())
    _, _, vt = randomized_svd(norm, rank, seed=seed)
    sqrt_i = np.sqrt(di)
    low_pass = (inv_i[:, None] * vt.T) @ (vt * sqrt_i[None, :])
    return (linear + GFCF_LOW_PASS_WEIGHT * low_pass).astype(np.float32)
