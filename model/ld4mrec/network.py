"""The LD4MRec network: C-Net + per-user initial-step embeddings + diffusion schedule + signal projection.

Inference is forward-free (Algorithm 2): ``x0_hat = C-Net(x_in, z_in(u), c_u, {m_u})`` in one pass with a
sparse first layer. Forward-noised, DiffRec-style multi-step inference exists for comparisons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from model.base import UserBatch, as_tensor
from model.ld4mrec.cnet import CNet, CNetConfig
from model.ld4mrec.diffusion import DiffusionSchedule, step_embedding
from model.ld4mrec.signals import SignalProjection, signals_from_histories

__all__ = ["LD4MRecNet"]


class LD4MRecNet(nn.Module):
    """The network; ``z_in`` is the (n_users, d_fwd) table of initial-step embeddings (zero at start).

    Args:
        cnet_config: C-Net's architecture.
        n_users: rows of ``z_in``.
        schedule: the forward process of training (T steps).
        inference_step: step embedding of forward-free inference: 0 = z_in(u) alone (the paper's
            Algorithm 2); t >= 1 = sin_emb(t) + z_in(u), what C-Net saw in training for step t.
        projection: the fixed signal projection (fold-in).
    """

    signal_matrix: torch.Tensor

    def __init__(
        self,
        cnet_config: CNetConfig,
        n_users: int,
        schedule: DiffusionSchedule,
        inference_step: int,
        projection: SignalProjection,
    ):
        super().__init__()
        if not 0 <= inference_step <= schedule.steps:
            raise ValueError(f"inference_step must be in 0..{schedule.steps}, got {inference_step}")
        self.cnet = CNet(cnet_config)
        self.z_in = nn.Embedding(n_users, cnet_config.step_dim)
        nn.init.zeros_(self.z_in.weight)
        self.schedule = schedule
        self.inference_step = inference_step
        if not projection.matrix.flags.c_contiguous:
            # fold-in is CSR @ projection; scipy copies a dense operand that is not C-ordered on every call
            # (at the sports shape 18,357 x 200 float32: 14.7 MB, ~3.4 ms per fold-in). Same values.
            projection = dataclasses.replace(projection, matrix=np.ascontiguousarray(projection.matrix))
        self.projection = projection
        # the fold-in matrix as a tensor for the dense training path; it shares the projection's memory (on
        # the CPU; .to(device) copies it), which is never written (items x width floats: 1 GiB at 10^6 items)
        self.register_buffer("signal_matrix", as_tensor(projection.matrix), persistent=False)

    @property
    def n_items(self) -> int:
        return self.cnet.cfg.n_items

    @property
    def n_users(self) -> int:
        return int(self.z_in.num_embeddings)

    # -- signals -------------------------------------------------------------------------------------------
    def fold_in(self, histories: sp.csr_matrix) -> np.ndarray:
        """Signals (B, width) of any binary histories (B, n), from what training fixed."""
        return signals_from_histories(self.projection, histories)

    def signals_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Signals (B, width) of binary histories given as a dense (B, n) tensor (training path)."""
        summed = x @ self.signal_matrix
        count = x.sum(dim=1, keepdim=True)
        scale = torch.where(count > 0, count.clamp_min(1.0).rsqrt(), torch.zeros_like(count))
        unscaled = self.projection.unscaled_width
        return torch.cat([summed[:, :unscaled], summed[:, unscaled:] * scale], dim=1)

    # -- step embeddings -----------------------------------------------------------------------------------
    def initial_step_embedding(self, user_index: torch.Tensor) -> torch.Tensor:
        """z_in(u) (B, d_fwd); users with index -1 (never seen) get the mean of the table."""
        known = user_index >= 0
        z = self.z_in(user_index.clamp_min(0))
        if not bool(known.all()):
            z = torch.where(known[:, None], z, self.z_in.weight.mean(dim=0, keepdim=True))
        return z

    def training_step_embedding(self, user_index: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z = sin_emb(t) + z_in(u) (B, d_fwd)."""
        z = self.initial_step_embedding(user_index)
        return step_embedding(t, self.cnet.cfg.step_dim).to(z.dtype) + z

    # -- training ------------------------------------------------------------------------------------------
    def forward(
        self,
        x_t: torch.Tensor,
        user_index: torch.Tensor,
        t: torch.Tensor,
        signals: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        prior_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training pass: noisy x_t (B, n) at steps t (B,) of users ``user_index`` (B,), condition
        ``signals`` (B, width), input-dropout ``keep_mask`` (B, n) or None -> x0_hat (B, n). With the GF-CF
        prior, ``prior_input`` (B, n) is the (visible) history it filters.

        The one entry point of training, so that a DistributedDataParallel wrapper sees every parameter."""
        h = self.cnet.embed_dense(x_t, keep_mask=keep_mask)
        z = self.training_step_embedding(user_index, t)
        x0_hat = self.cnet.forward_hidden(h, z, signals)
        if self.cnet.cfg.gfcf_prior:
            if prior_input is None:
                raise ValueError("the GF-CF prior needs prior_input")
            x0_hat = x0_hat + self.cnet.prior_dense(prior_input)
        return x0_hat

    # -- inference -----------------------------------------------------------------------------------------
    def inference_step_embedding(self, user_index: torch.Tensor) -> torch.Tensor:
        """z (B, d_fwd) for forward-free inference: z_in(u), plus sin_emb(t) if ``inference_step`` t >= 1."""
        z = self.initial_step_embedding(user_index)
        t = self.inference_step
        if t == 0:
            return z
        step = torch.full((user_index.shape[0],), t, dtype=torch.long, device=z.device)
        return step_embedding(step, self.cnet.cfg.step_dim).to(z.dtype) + z

    def score(self, batch: UserBatch) -> torch.Tensor:
        """Forward-free inference (Algorithm 2): one pass on the clean history, sparse path -> (B, n).

        ``batch.states`` are the condition signals (B, width)."""
        h = self.cnet.embed_sparse(batch.item_ids, batch.offsets)
        scores = self.cnet.forward_hidden(h, self.inference_step_embedding(batch.user_index), batch.states)
        if self.cnet.cfg.gfcf_prior:
            scores = scores + self.cnet.prior_sparse(batch.item_ids, batch.offsets)
        return scores

    def score_forward_noised(
        self,
        batch: UserBatch,
        start_step: int,
        generator: torch.Generator | None = None,
        schedule: DiffusionSchedule | None = None,
    ) -> torch.Tensor:
        """DiffRec-style inference: noise x_in to step t', then ``t'`` reverse steps (posterior means).

        ``start_step = 0`` denoises the clean x_in with T reverse steps (DiffRec's ``sampling_steps=0``).
        ``schedule`` (default: the training one) may have another number of steps T' over the same noise
        range; noising and posterior means then use it, and C-Net sees the training step
        ``ceil(t * T / T')`` for its step t (the identity when T' = T).
        """
        trained_steps = self.schedule.steps
        if schedule is None:
            schedule = self.schedule
        if not 0 <= start_step <= schedule.steps:
            raise ValueError(f"start_step must be in 0..{schedule.steps}, got {start_step}")
        x0 = batch.dense(self.n_items)
        if start_step > 0:
            step = torch.full((batch.size,), start_step, dtype=torch.long, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
            x_t = schedule.add_noise(x0, step, noise)
            first = start_step
        else:
            x_t, first = x0, schedule.steps
        z_in = self.initial_step_embedding(batch.user_index)
        for t in range(first, 0, -1):
            t_model = -(-t * trained_steps // schedule.steps)  # ceil(t * T / T')
            step = torch.full((batch.size,), t_model, dtype=torch.long, device=x0.device)
            z = step_embedding(step, self.cnet.cfg.step_dim).to(z_in.dtype) + z_in
            h = self.cnet.embed_dense(x_t)
            x0_hat = self.cnet.forward_hidden(h, z, batch.states)
            if self.cnet.cfg.gfcf_prior:
                x0_hat = x0_hat + self.cnet.prior_dense(x0)
            x_t = schedule.posterior_mean(x0_hat, x_t, t) if t > 1 else x0_hat
        return x_t
