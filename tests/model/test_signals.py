"""Condition signals: the formulas of the spec, fold-in == offline, degenerate cases."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from model.ld4mrec.cnet import CNetConfig
from model.ld4mrec.diffusion import DiffusionSchedule
from model.ld4mrec.network import LD4MRecNet
from model.ld4mrec.signals import SignalBasis, compute_signal_basis, randomized_svd, signals_from_histories


def _random_binary(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[:, 0] = 0.0  # item 0 is never clicked in training (a "cold" item)
    dense[0, 1] = 1.0
    return sp.csr_matrix(dense)


def test_randomized_svd_matches_exact_svd_on_low_rank_matrix() -> None:
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 40))
    u, s, vt = randomized_svd(low_rank, 5, seed=1)
    exact = np.linalg.svd(low_rank, compute_uv=False)[:5]
    np.testing.assert_allclose(s, exact, rtol=1e-8)
    np.testing.assert_allclose(u @ np.diag(s) @ vt, low_rank, atol=1e-8)


def test_signals_follow_the_spec_formulas() -> None:
    train = _random_binary(30, 20, 0.2, seed=3)
    feats = np.random.default_rng(4).standard_normal((20, 6)).astype(np.float32)
    basis = compute_signal_basis(train, [feats], svd_rank=8, seed=0)
    signals = signals_from_histories(basis.projection(), train)

    r = train.toarray().astype(np.float64)
    items_f = basis.item_factors.astype(np.float64)
    lam = basis.singular_values.astype(np.float64)
    deg_u, deg_i = r.sum(axis=1), r.sum(axis=0)
    inv_u = np.where(deg_u > 0, 1 / np.sqrt(np.maximum(deg_u, 1)), 0)
    inv_i = np.where(deg_i > 0, 1 / np.sqrt(np.maximum(deg_i, 1)), 0)
    norm = inv_u[:, None] * r * inv_i[None, :]  # D_U^-1/2 R D_I^-1/2
    expected = np.concatenate([r @ items_f / lam, norm @ items_f, norm @ feats], axis=1)
    np.testing.assert_allclose(signals, expected, rtol=1e-5, atol=1e-6)
    assert basis.collab_dim == 16 and basis.modality_dims == (6,)


def test_user_factor_definition_matches_svd_u_for_exact_decomposition() -> None:
    train = _random_binary(25, 15, 0.3, seed=5)
    basis = compute_signal_basis(train, [], svd_rank=15, seed=0)  # full rank: exact SVD
    u, s, _ = np.linalg.svd(train.toarray().astype(np.float64), full_matrices=False)
    ours = signals_from_histories(basis.projection(), train)[:, : basis.svd_rank]
    # Same subspace and singular values -> identical up to the sign of each column.
    k = basis.svd_rank
    signs = np.sign(np.sum(ours * u[:, :k], axis=0))
    np.testing.assert_allclose(ours * signs, u[:, :k], atol=1e-4)


def test_fold_in_reproduces_offline_signals_of_training_users(synthetic_data) -> None:
    basis = compute_signal_basis(synthetic_data.train, synthetic_data.modality_features, svd_rank=16, seed=0)
    projection = basis.projection()
    offline = signals_from_histories(projection, synthetic_data.train)
    for user in (0, 7, 100, synthetic_data.n_users - 1):
        items = synthetic_data.train.indices[
            synthetic_data.train.indptr[user] : synthetic_data.train.indptr[user + 1]
        ]
        history = sp.csr_matrix(
            (np.ones(len(items), np.float32), items, [0, len(items)]), shape=(1, synthetic_data.n_items)
        )
        folded = signals_from_histories(projection, history)[0]
        np.testing.assert_allclose(folded, offline[user], rtol=1e-5, atol=1e-7 * np.abs(offline[user]).max())


def test_dense_training_path_equals_sparse_fold_in(synthetic_data) -> None:
    basis = compute_signal_basis(synthetic_data.train, synthetic_data.modality_features, svd_rank=16, seed=0)
    projection = basis.projection()
    cfg = CNetConfig(
        n_items=synthetic_data.n_items,
        collab_dim=basis.collab_dim,
        modality_dims=basis.modality_dims,
        hidden_dim=8,
    )
    model = LD4MRecNet(cfg, synthetic_data.n_users, DiffusionSchedule(5, 0.1, 1e-4, 0.02), 0, projection)
    rows = synthetic_data.train[:32]
    dense = model.signals_dense(torch.from_numpy(rows.toarray())).numpy()
    np.testing.assert_allclose(dense, model.fold_in(rows), rtol=1e-4, atol=1e-5)


def test_empty_history_gives_zero_signals_and_cold_items_contribute_nothing() -> None:
    train = _random_binary(20, 10, 0.3, seed=6)
    basis = compute_signal_basis(train, [np.ones((10, 3), np.float32)], svd_rank=4)
    projection = basis.projection()
    assert basis.item_degree[0] == 0
    np.testing.assert_array_equal(projection.matrix[0], 0.0)
    empty = sp.csr_matrix((1, 10), dtype=np.float32)
    np.testing.assert_array_equal(signals_from_histories(projection, empty), 0.0)
    only_cold = sp.csr_matrix(([1.0], [0], [0, 1]), shape=(1, 10), dtype=np.float32)
    np.testing.assert_array_equal(signals_from_histories(projection, only_cold), 0.0)


def test_basis_drops_null_singular_directions() -> None:
    train = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32))  # rank 1
    basis = compute_signal_basis(train, [], svd_rank=3)
    assert isinstance(basis, SignalBasis)
    assert basis.svd_rank == 1 and np.all(basis.singular_values > 0)
