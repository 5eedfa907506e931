"""Sparse user-item graphs of DiffMM and its vectorised negative sampling.

A graph over ``N = n_users + n_items`` nodes (users first) is the bipartite adjacency of a set of
user-item edges plus self-loops, symmetrically normalised: ``D^-1/2 (A + I) D^-1/2`` (as the official code
builds both the interaction graph and the generated graphs). Everything stays sparse.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Graph", "csr_tensor", "drop_edges", "normalised_adjacency", "sample_negatives"]


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ x`` whose backward multiplies by a transpose made once (torch's own backward of a CSR
    product re-transposes the matrix on every call)."""

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad)


@dataclass(frozen=True)
class Graph:
    """An (N, N) sparse CSR float32 matrix and its transpose (the same tensor when symmetric);
    ``graph @ x`` propagates dense rows x (N, d), differentiably in x."""

    matrix: torch.Tensor
    transpose: torch.Tensor

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            return torch.sparse.mm(self.matrix, x)
        out: torch.Tensor = _SparseMatmul.apply(self.matrix, self.transpose, x)
        return out


def normalised_adjacency(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device: torch.device
) -> Graph:
    """The (N, N) symmetric graph ``D^-1/2 (A + I) D^-1/2`` of the edges ``(users[e], items[e])``
    (duplicates count once)."""
    n = n_users + n_items
    ui = sp.coo_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
    ).tocsr()
    ui.data[:] = 1.0  # duplicates summed by tocsr -> 1
    a = sp.bmat([[None, ui], [ui.T, None]], format="csr", dtype=np.float32) + sp.eye(n, dtype=np.float32)
    degree = np.asarray(a.sum(axis=1)).ravel()
    d = sp.diags(1.0 / np.sqrt(degree))
    norm = sp.csr_matrix(d @ a @ d, dtype=np.float32)
    norm.sort_indices()
    matrix = csr_tensor(norm, device)
    return Graph(matrix, matrix)


def drop_edges(graph: Graph, keep_rate: float, generator: torch.Generator) -> Graph:
    """``adj`` with each stored entry kept with probability ``keep_rate`` and rescaled by 1 / keep_rate
    (the official SpAdjDropEdge; self-loops included, both directions of an edge independently, so the
    result is no longer symmetric); ``graph`` itself when keep_rate is 1."""
    if keep_rate >= 1.0:
        return graph
    adj = graph.matrix
    values = adj.values()
    keep = torch.rand(values.shape, generator=generator, device=values.device) < keep_rate
    rows = torch.repeat_interleave(
        torch.arange(adj.shape[0], device=values.device), torch.diff(adj.crow_indices())
    )
    counts = torch.bincount(rows[keep], minlength=adj.shape[0])
    crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=values.device), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        kept = torch.sparse_csr_tensor(
            crow, adj.col_indices()[keep], values[keep] / keep_rate, adj.shape, check_invariants=False
        )
        return Graph(kept, kept.t().to_sparse_csr())


def csr_tensor(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A float32 torch sparse CSR tensor on ``device`` of a scipy CSR matrix (sorted indices)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            matrix.shape,
            check_invariants=False,
        ).to(device)


def sample_negatives(
    users: np.ndarray, train: sp.csr_matrix, rng: np.random.Generator, max_rounds: int = 100
) -> np.ndarray:
    """(E,) int64 items drawn uniformly among those ``users[e]`` never interacted with in ``train``.

    Vectorised rejection sampling: draw for every edge at once, redraw only the collisions (a sorted key
    array of the training pairs answers membership), round after round. A user who has interacted with
    every item keeps an arbitrary draw after ``max_rounds``."""
    n_items = train.shape[1]
    keys = _pair_keys(train)
    negatives = rng.integers(0, n_items, size=len(users), dtype=np.int64)
    pending = np.arange(len(users))
    for _ in range(max_rounds):
        hit = _contains(keys, users[pending].astype(np.int64) * n_items + negatives[pending])
        pending = pending[hit]
        if pending.size == 0:
            break
        negatives[pending] = rng.integers(0, n_items, size=pending.size, dtype=np.int64)
    return negatives


def _pair_keys(train: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys ``user * n_items + item`` of the stored pairs (CSR with sorted indices)."""
    rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), np.diff(train.indptr))
    keys = rows * train.shape[1] + train.indices.astype(np.int64)
    return np.sort(keys)


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    return sorted_keys[pos] == queries
