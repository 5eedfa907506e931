"""Data-parallel training inside a model's ``fit_epoch``: what an iterative model uses to run under
``torchrun`` (PyTorch DistributedDataParallel, one process per rank, users sharded across ranks).

The trainer starts the process group and passes ``rank`` / ``world_size`` in :class:`FitContext`; with
``world_size == 1`` every helper here is the identity (the single-process code path is unchanged).

How an iterative model opts in (LD4MRec does; see ``model/ld4mrec/recommender.py``):

1. set ``distributed = True`` on its :class:`~model.base.Recommender` subclass (the trainer refuses a
   multi-process run of an iterative model that does not);
2. in ``create``: build the network identically on every rank (seed with ``ctx.seed``), then train through
   ``wrap_module(net, ctx)`` (DDP: rank 0's weights are broadcast once, gradients are averaged over the
   ranks during ``backward``) and seed the draws that must differ per rank (noise, dropout) with
   :func:`rank_seed`;
3. in ``fit_epoch``: draw the *same* permutation of users on every rank (a generator seeded with
   ``ctx.seed``), cut it into the same global mini-batches of ``batch_size`` users as one process does, and
   let each rank compute its share, :func:`local_part` of the batch, through the wrapped module's
   ``forward``, with the loss reduced by :func:`batch_mean` (so that DDP's average of the ranks' gradients
   is exactly the gradient of the global batch's mean loss);
4. per-user values every rank needs (e.g. losses that drive a sampler): :func:`gather_rows`; per-epoch
   figures to report: :func:`mean_over_ranks`.

With this recipe a world size of W trains with the same global batch, learning rate and number of steps
per epoch as one process; each rank computes ``1 / W`` of every batch. Same seed and same W give the same
result (the permutation and the per-rank seeds are fixed; gloo's and NCCL's reductions are deterministic
for a fixed world size); another W draws other noise, as another seed would.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.base import FitContext

__all__ = ["batch_mean", "gather_rows", "local_part", "mean_over_ranks", "rank_seed", "wrap_module"]

A = TypeVar("A", np.ndarray, torch.Tensor)

_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)
"""DDP without a buffer broadcast on every forward (``broadcast_buffers`` was renamed in torch 2.13)."""

RANK_SEED_STRIDE = 1_000_003
"""Rank r > 0 seeds its own draws with ``seed + r * RANK_SEED_STRIDE`` (rank 0 keeps ``seed``)."""


def _check_group(ctx: FitContext) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"world_size {ctx.world_size} needs a torch.distributed process group: launch with torchrun "
            "(the trainer starts the group from RANK / WORLD_SIZE / LOCAL_RANK)"
        )
    if dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise RuntimeError(
            f"FitContext says rank {ctx.rank} of {ctx.world_size}, the process group rank "
            f"{dist.get_rank()} of {dist.get_world_size()}"
        )


def rank_seed(ctx: FitContext) -> int:
    """The seed of this rank's own random draws (noise, dropout masks): ``ctx.seed`` on rank 0."""
    return ctx.seed + ctx.rank * RANK_SEED_STRIDE


def local_part(values: A, ctx: FitContext) -> A:
    """This rank's share of a global mini-batch (B, ...): rows ``rank, rank + W, ...`` (the whole batch
    when W = 1). Shares differ by at most one row; a batch of fewer than W rows leaves some ranks empty,
    which is fine: an empty share contributes zero gradients."""
    if ctx.world_size == 1:
        return values
    return values[ctx.rank :: ctx.world_size]


def batch_mean(values: torch.Tensor, ctx: FitContext, n_global: int) -> torch.Tensor:
    """The loss of this rank's share ``values`` (b,) of a global batch of ``n_global`` rows.

    One process: ``values.mean()``. W processes: ``values.sum() * W / n_global``, so that DDP's average of
    the W gradients is the gradient of the mean over the whole global batch, however unevenly it is split.
    """
    if ctx.world_size == 1:
        return values.mean()
    return values.sum() * (ctx.world_size / n_global)


def gather_rows(local: torch.Tensor, ctx: FitContext, n_global: int) -> torch.Tensor:
    """The global batch's (n_global, ...) rows on every rank from each rank's :func:`local_part` (b, ...).

    One all-reduce of n_global rows (each rank fills its own rows, zeros elsewhere; x + 0 is exact)."""
    if ctx.world_size == 1:
        return local
    _check_group(ctx)
    full = torch.zeros((n_global, *local.shape[1:]), dtype=local.dtype, device=local.device)
    full[ctx.rank :: ctx.world_size] = local
    dist.all_reduce(full, op=dist.ReduceOp.SUM)
    return full


def mean_over_ranks(values: dict[str, float], ctx: FitContext) -> dict[str, float]:
    """Each value averaged over the ranks (one all-reduce); unchanged when W = 1."""
    if ctx.world_size == 1 or not values:
        return values
    _check_group(ctx)
    keys = sorted(values)
    device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    sums = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, sums.tolist(), strict=True)}


def wrap_module(module: nn.Module, ctx: FitContext) -> nn.Module:
    """``module`` to train through: itself when W = 1, else a :class:`DistributedDataParallel` of it.

    Call the returned module's ``forward`` for the training pass (DDP's gradient hooks are armed there).
    Buffers are not re-broadcast on every step (``broadcast_buffers=False``): DDP copies rank 0's
    parameters *and* buffers once at construction, and the models' buffers are fixed after ``create``.
    """
    if ctx.world_size == 1:
        return module
    _check_group(ctx)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" and ctx.device.index is not None else None
    ddp = cast(Any, DistributedDataParallel)  # the buffer option's name depends on the torch version
    return cast(
        nn.Module, ddp(module, device_ids=device_ids, gradient_as_bucket_view=True, **_NO_BUFFER_SYNC)
    )
