"""LD4MRec's memory at a catalogue size: an estimate of a fit's peak, and the largest width and batch that
fit a budget.

Both big layers of C-Net are items x width (``item_in`` and ``FC_out``), and the noisy input of a
training step is dense: a step holds several (batch, items) float32 tensors. A fit's peak is the larger of

* a step: the parameters P (2 x items x width + the hidden layers + z_in) with their gradients, Adam's
  two moments and the trainer's best-epoch snapshot (``STEP_PARAM_COPIES`` x 4 P bytes), plus
  ``DENSE_TENSORS`` x 4 x batch x items bytes of dense tensors (input, noise, noisy input, dropout masks,
  soft target, output, error, gradients);
* a new best epoch's snapshot taken while the old one is alive (``SNAPSHOT_PARAM_COPIES`` x 4 P);
* creating the model: the randomized SVD's float64 work arrays (``SVD_COPIES`` x 8 x items x (d_svd + 10));

plus the signal basis (item factors, modality features, the fold-in projection) and a baseline (the
interpreter, torch, the data). The constants fit peak RSS measured by ``bench/catalogue_scale.py``'s
training child within -3 % to +13 % (10^4 to 10^6 items, widths 64 to 1000; BENCHMARKS.md, "Catalogue
scaling"). At 10^6 items the defaults (width 1000, batch 400) need about 55 GiB; :func:`fitting_config`
finds the widest network and the largest batch under a budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from model.ld4mrec.config import LD4MRecConfig

__all__ = ["BASELINE_BYTES", "fitting_config", "training_bytes"]

STEP_PARAM_COPIES = 5
SNAPSHOT_PARAM_COPIES = 6
DENSE_TENSORS = 10
SVD_COPIES = 3
SVD_OVERSAMPLES = 10
BASELINE_BYTES = 512 * 2**20
"""The interpreter, torch and the training data of a small run."""

WIDTHS = (1000, 768, 512, 384, 256, 192, 128, 96, 64)
BATCHES = (400, 200, 100, 50, 25)
MIN_PREFERRED_BATCH = 100


def parameter_count(
    cfg: LD4MRecConfig, n_users: int, n_items: int, svd_rank: int, modality_dims: Sequence[int]
) -> int:
    """Trainable floats of the network (C-Net and z_in) for this config and data."""
    from model.ld4mrec.recommender import _cnet_config  # one definition of C-Net's shapes

    with torch.device("meta"):  # shapes only, nothing allocated
        from model.ld4mrec.cnet import CNet

        cnet = CNet(_cnet_config(cfg, n_items, svd_rank, tuple(modality_dims)))
    return sum(p.numel() for p in cnet.parameters()) + n_users * cfg.step_dim


def training_bytes(
    cfg: LD4MRecConfig, n_users: int, n_items: int, modality_dims: Sequence[int], nnz: int = 0
) -> int:
    """Estimated peak bytes of creating and fitting LD4MRec (see the module docstring); ``nnz`` is the
    number of training interactions."""
    svd_rank = min(cfg.svd_rank, n_users, n_items)
    width = 2 * svd_rank + sum(modality_dims)
    params = parameter_count(cfg, n_users, n_items, svd_rank, modality_dims)
    batch = min(cfg.batch_size, n_users)
    basis = 4 * n_items * (svd_rank + sum(modality_dims) + 2 * width)
    data = 16 * nnz + 4 * n_users * width
    svd = SVD_COPIES * 8 * n_items * (svd_rank + SVD_OVERSAMPLES)
    step = STEP_PARAM_COPIES * 4 * params + DENSE_TENSORS * 4 * batch * n_items
    fit = max(step, SNAPSHOT_PARAM_COPIES * 4 * params)
    return BASELINE_BYTES + data + basis + max(svd, fit)


def fitting_config(
    cfg: LD4MRecConfig,
    n_users: int,
    n_items: int,
    modality_dims: Sequence[int],
    budget_bytes: int,
    nnz: int = 0,
) -> LD4MRecConfig | None:
    """``cfg`` itself when it fits ``budget_bytes``; else the widest ``hidden_dim`` of :data:`WIDTHS` up
    to ``cfg``'s with the largest ``batch_size`` of :data:`BATCHES` up to ``cfg``'s that fits, batches of
    at least ``MIN_PREFERRED_BATCH`` users first (a smaller batch only slows an epoch; a narrower network
    changes the model); None when nothing fits."""
    if training_bytes(cfg, n_users, n_items, modality_dims, nnz) <= budget_bytes:
        return cfg
    for smallest in (MIN_PREFERRED_BATCH, 1):
        for width in (w for w in WIDTHS if w <= cfg.hidden_dim):
            for batch in (b for b in BATCHES if smallest <= b <= cfg.batch_size):
                candidate = dataclasses.replace(cfg, hidden_dim=width, batch_size=batch)
                if training_bytes(candidate, n_users, n_items, modality_dims, nnz) <= budget_bytes:
                    return candidate
    return None
