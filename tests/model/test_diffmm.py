"""DiffMM: the refusal without modalities, its diffusion, graphs and negative sampling, the fold-in
derivation, reproducibility with a seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from model.base import ConfigError, FitContext, TrainingData
from model.diffmm.diffusion import Denoiser, DiffusionSchedule
from model.diffmm.foldin import fold_in, residual_features
from model.diffmm.graph import csr_tensor, drop_edges, normalised_adjacency, sample_negatives
from model.diffmm.network import info_nce
from model.registry import get_model
from tests.contract.test_models import TINY_CONFIGS
from training.cli import main as train_cli
from training.synthetic import SyntheticSpec, write_synthetic_dataset

DIFFMM: Any = get_model("diffmm")  # its own attributes are used below


def _data(n_users: int = 50, n_items: int = 30, seed: int = 0, modalities: int = 2) -> TrainingData:
    rng = np.random.default_rng(seed)
    train = (rng.random((n_users, n_items)) < 0.15).astype(np.float32)
    train[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # every user has a history
    features = tuple(rng.standard_normal((n_items, 6 + m)).astype(np.float32) for m in range(modalities))
    names = tuple(f"m{m}" for m in range(modalities))
    return TrainingData(sp.csr_matrix(train), names, features)


def _config(**overrides: Any) -> Any:
    return DIFFMM.config_class.from_dict({**TINY_CONFIGS["diffmm"], **overrides})


def test_a_dataset_without_modalities_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="diffmm needs item features.*no modality"):
        DIFFMM.create(_config(), _data(modalities=0), FitContext())


def test_the_cli_refuses_a_dataset_without_modalities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SyntheticSpec(n_users=60, n_items=40, modalities=())
    data_dir = write_synthetic_dataset(tmp_path / "plain", spec)
    assert train_cli(["--model", "diffmm", "--data", str(data_dir), "--out", str(tmp_path / "A")]) == 2
    assert "cannot train diffmm: diffmm needs item features" in capsys.readouterr().err
    assert not (tmp_path / "A").exists()


def test_schedule_follows_the_official_variance_schedule() -> None:
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    assert float(schedule.betas[0]) == pytest.approx(1e-4)
    variance = 0.1 * np.linspace(1e-4, 0.02, 5)
    expected = 1.0 - (1.0 - variance[1:]) / (1.0 - variance[:-1])
    np.testing.assert_allclose(schedule.betas[1:].numpy(), expected, rtol=1e-9)
    weights = schedule.loss_weight(torch.arange(5))
    assert float(weights[0]) == 1.0 and bool((weights[1:] > 0).all())
    x0, xt = torch.rand(3, 4), torch.rand(3, 4)
    torch.testing.assert_close(schedule.posterior_mean(x0, xt, 0), x0)  # the last reverse step is x0_hat


def test_denoiser_sparse_rows_equal_dense_rows() -> None:
    torch.manual_seed(0)
    denoiser = Denoiser(30, 16, 10).eval()
    rows = _data().train[:7]
    sparse = csr_tensor(rows, torch.device("cpu"))
    dense = torch.from_numpy(rows.toarray())
    t = torch.arange(7) % 5
    with torch.no_grad():
        torch.testing.assert_close(denoiser(sparse, t), denoiser(dense, t))
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    torch.testing.assert_close(denoiser.reverse(schedule, sparse), denoiser.reverse(schedule, dense))


def test_reverse_in_hidden_space_equals_the_explicit_reverse_process() -> None:
    torch.manual_seed(1)
    denoiser = Denoiser(40, 24, 10).eval()
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    x0 = torch.from_numpy(_data(n_items=40).train[:9].toarray())
    x = x0
    with torch.no_grad():
        for t in reversed(range(5)):  # the official p_sample, step by step over (B, n) rows
            x = schedule.posterior_mean(denoiser(x, torch.full((9,), t)), x, t)
        torch.testing.assert_close(denoiser.reverse(schedule, x0), x, rtol=1e-5, atol=1e-6)


def test_normalised_adjacency_is_the_symmetric_normalisation_with_self_loops() -> None:
    users, items = np.array([0, 0, 1, 1]), np.array([1, 2, 2, 2])  # a duplicate edge counts once
    adj = normalised_adjacency(users, items, 3, 3, torch.device("cpu")).matrix.to_dense().numpy()
    a = np.eye(6)
    for u, i in {(0, 1), (0, 2), (1, 2)}:
        a[u, 3 + i] = a[3 + i, u] = 1.0
    d = 1.0 / np.sqrt(a.sum(axis=1))
    np.testing.assert_allclose(adj, d[:, None] * a * d[None, :], rtol=1e-6)
    generator = torch.Generator().manual_seed(0)
    kept = drop_edges(normalised_adjacency(users, items, 3, 3, torch.device("cpu")), 0.5, generator)
    kept_dense = kept.matrix.to_dense().numpy()
    np.testing.assert_array_equal(kept.transpose.to_dense().numpy(), kept_dense.T)
    nonzero = kept_dense != 0
    np.testing.assert_allclose(kept_dense[nonzero], 2.0 * adj[nonzero], rtol=1e-6)  # rescaled by 1/keep


def test_info_nce_and_graph_products_have_autograd_gradients() -> None:
    torch.manual_seed(0)
    a = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    nodes = torch.tensor([0, 3, 3, 6])

    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a_n, b_n = F.normalize(a[nodes]), F.normalize(b)
        logits = a_n @ b_n.t() / 0.5
        return (torch.logsumexp(logits, 1) - (a_n * b_n[nodes]).sum(1) / 0.5).mean()

    got = info_nce(a, b, nodes, 0.5)
    want = reference(a, b)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got, (a, b))
    torch.testing.assert_close(grads, torch.autograd.grad(want, (a, b)))
    graph = drop_edges(
        normalised_adjacency(np.array([0, 1]), np.array([1, 0]), 2, 2, torch.device("cpu")),
        0.7,
        torch.Generator().manual_seed(1),
    )
    x = torch.randn(4, 3, requires_grad=True)
    (grad_x,) = torch.autograd.grad((graph @ x).square().sum(), x)
    dense = graph.matrix.to_dense()
    (want_x,) = torch.autograd.grad((dense @ x).square().sum(), x)
    torch.testing.assert_close(grad_x, want_x)


def test_negative_samples_are_never_training_items_and_are_seeded() -> None:
    train = _data(n_users=200, n_items=40).train
    coo = train.tocoo()
    users = np.repeat(coo.row, 5)
    first = sample_negatives(users, train, np.random.default_rng(3))
    again = sample_negatives(users, train, np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)
    assert not train[users, first].any()
    assert len(np.unique(first)) > 30  # uniform over the non-interacted items, not a constant


def _trained(seed: int = 5, epochs: int = 2, **overrides: Any) -> Any:
    data = _data()
    model = DIFFMM.create(_config(**overrides), data, FitContext(seed=seed))
    for epoch in range(1, epochs + 1):
        losses = model.fit_epoch(data, epoch, FitContext(seed=seed))
        assert all(np.isfinite(v) for v in losses.values())
    return model, data


def test_rebuild_gives_every_user_rebuild_k_generated_items_per_modality() -> None:
    model, data = _trained(epochs=1, rebuild_k=2)
    for graph in model._fit.generated:
        dense = graph.matrix.to_dense().numpy()
        user_item = dense[: data.n_users, data.n_users :]
        assert ((user_item > 0).sum(axis=1) == 2).all()
        np.testing.assert_allclose(dense, dense.T, atol=1e-7)


def test_fold_in_with_the_true_residual_reproduces_the_trained_embeddings() -> None:
    """Every term of the fold-in but r_u (the user's own ID embedding and generated edges) is exact."""
    model, data = _trained()
    fit = model._fit
    with torch.no_grad():
        prop = fit.net(fit.adj, fit.generated)
    _, known = residual_features(data.train, model.tables)
    residual = prop.modal[: data.n_users].numpy() - known
    exact = fold_in(data.train, model.tables, residual=residual)
    np.testing.assert_allclose(exact, model.user_states(), rtol=1e-4, atol=1e-5)
    approximate = model.fold_in(data.train)
    norms = np.linalg.norm(approximate, axis=1) * np.linalg.norm(exact, axis=1)
    cosine = (approximate * exact).sum(1) / norms
    assert float(np.median(cosine)) > 0.9


def test_same_seed_same_model_other_seed_other_model() -> None:
    first, _ = _trained(seed=11)
    second, _ = _trained(seed=11)
    third, _ = _trained(seed=12)
    for key, value in first.arrays().items():
        np.testing.assert_array_equal(value, second.arrays()[key], err_msg=key)
    np.testing.assert_array_equal(first.user_states(), second.user_states())
    assert not np.array_equal(first.arrays()["item_final"], third.arrays()["item_final"])


def test_snapshot_and_restore_return_to_the_snapshot_epoch() -> None:
    model, data = _trained(epochs=1)
    saved, states = model.snapshot(), model.user_states().copy()
    model.fit_epoch(data, 2, FitContext(seed=5))
    assert not np.array_equal(model.user_states(), states)
    model.restore(saved)
    np.testing.assert_allclose(model.user_states(), states, rtol=0, atol=0)
