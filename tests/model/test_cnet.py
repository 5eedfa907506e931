"""C-Net: sparse first layer == dense, identity-initialised PG, ablation switches, cold users."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.base import UserBatch
from model.ld4mrec.cnet import CNet, CNetConfig, PGBlock
from model.ld4mrec.diffusion import DiffusionSchedule
from model.ld4mrec.network import LD4MRecNet
from model.ld4mrec.signals import compute_signal_basis


def _model(
    n_items: int = 40, n_users: int = 12, inference_step: int = 0, **overrides
) -> tuple[LD4MRecNet, sp.csr_matrix]:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    feats = [
        rng.standard_normal((n_items, 5)).astype(np.float32),
        rng.standard_normal((n_items, 3)).astype(np.float32),
    ]
    basis = compute_signal_basis(train, feats, svd_rank=6)
    cfg = CNetConfig(
        n_items=n_items,
        collab_dim=basis.collab_dim,
        modality_dims=basis.modality_dims,
        hidden_dim=16,
        **overrides,
    )
    torch.manual_seed(0)
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    model = LD4MRecNet(cfg, n_users, schedule, inference_step, basis.projection())
    with torch.no_grad():
        model.z_in.weight.normal_()
        for block in model.cnet.pg_blocks:  # leave the identity initialisation so the PG path matters
            for p in block.parameters():
                p.normal_(std=0.1)
    return model.eval(), train


@pytest.mark.parametrize("inference_step", [0, 1])
@pytest.mark.parametrize(
    "overrides", [{}, {"use_cg": False}, {"use_pg": False}, {"use_cg": False, "use_pg": False}]
)
def test_sparse_first_layer_equals_dense_path(overrides, inference_step: int) -> None:
    model, train = _model(inference_step=inference_step, **overrides)
    users = np.arange(train.shape[0])
    batch = UserBatch.from_csr(train, users, model.fold_in(train), torch.device("cpu"))
    with torch.inference_mode():
        sparse = model.score(batch)
        z = model.inference_step_embedding(batch.user_index)
        dense = model.cnet(torch.from_numpy(train.toarray()), z, batch.states)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inference_step", [0, 1])
def test_bfloat16_copy_scores_in_bfloat16(inference_step: int) -> None:
    """A model cast to bfloat16 (weights, buffers, signals) scores without dtype errors, close to fp32."""
    model, train = _model(inference_step=inference_step)
    users = np.arange(train.shape[0])
    batch = UserBatch.from_csr(train, users, model.fold_in(train), torch.device("cpu"))
    with torch.inference_mode():
        reference = model.score(batch)
        batch.states = batch.states.to(torch.bfloat16)
        scores = model.to(torch.bfloat16).score(batch)
    assert scores.dtype == torch.bfloat16
    torch.testing.assert_close(scores.float(), reference, rtol=0.1, atol=0.1)


def test_pg_block_starts_as_identity() -> None:
    block = PGBlock(modality_dim=5, hidden_dim=7)
    h = torch.randn(3, 7)
    torch.testing.assert_close(block(h, torch.randn(3, 5)), h)


def test_ablation_switches_remove_condition_parameters() -> None:
    full = CNet(CNetConfig(n_items=10, collab_dim=8, modality_dims=(4, 3), hidden_dim=6))
    no_cg = CNet(CNetConfig(n_items=10, collab_dim=8, modality_dims=(4, 3), hidden_dim=6, use_cg=False))
    no_pg = CNet(CNetConfig(n_items=10, collab_dim=8, modality_dims=(4, 3), hidden_dim=6, use_pg=False))
    assert len(full.pg_blocks) == 2 and hasattr(full.cg_first, "condition")
    assert not hasattr(no_cg.cg_first, "condition") and not hasattr(no_cg.cg_second, "gate")
    assert len(no_pg.pg_blocks) == 0
    # without CG and PG the output does not depend on the signals at all
    plain = CNet(
        CNetConfig(n_items=10, collab_dim=8, modality_dims=(4, 3), hidden_dim=6, use_cg=False, use_pg=False)
    ).eval()
    x, z = torch.rand(2, 10), torch.randn(2, 10)
    torch.testing.assert_close(plain(x, z, torch.randn(2, 15)), plain(x, z, torch.randn(2, 15)))


def test_gate_starts_near_off() -> None:
    net = CNet(CNetConfig(n_items=10, collab_dim=8, hidden_dim=6, gate_bias=-4.0))
    with torch.no_grad():
        g = torch.sigmoid(net.cg_first.gate(torch.zeros(1, 10)))
    assert float(g.max()) < 0.02


def test_cold_user_uses_mean_initial_step_embedding() -> None:
    model, train = _model()
    z = model.initial_step_embedding(torch.tensor([-1, 2]))
    torch.testing.assert_close(z[0], model.z_in.weight.mean(dim=0))
    torch.testing.assert_close(z[1], model.z_in.weight[2])


def test_forward_noised_inference_runs_t_reverse_steps() -> None:
    model, train = _model()
    users = np.arange(4)
    batch = UserBatch.from_csr(train[users], users, model.fold_in(train[users]), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        denoised = model.score_forward_noised(batch, start_step=0)
        noised = model.score_forward_noised(batch, start_step=3, generator=gen)
    assert denoised.shape == noised.shape == (4, train.shape[1])
    assert torch.isfinite(denoised).all() and torch.isfinite(noised).all()
