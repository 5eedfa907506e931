"""LD4MRec: C-Net + per-user initial-step embeddings + diffusion schedule + signal projection.

Inference is forward-free (Algorithm 2): ``x0_hat = C-Net(x_in, z_in(u), c_u, {m_u})`` in one pass with a
sparse first layer. Forward-noised, DiffRec-style multi-step inference exists for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from model.cnet import CNet, CNetConfig
from model.diffusion import DiffusionSchedule, step_embedding
from model.signals import SignalProjection, signals_from_histories

__all__ = ["DiffusionConfig", "HistoryBatch", "LD4MRec"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process: T steps, noise scale s, a_min, a_max (spec Eq. 3)."""

    steps: int = 5
    noise_scale: float = 0.1
    noise_min: float = 1e-4
    noise_max: float = 0.02
    # step embedding of forward-free inference: 0 = z_in(u) alone (the paper's Algorithm 2); t >= 1 =
    # sin_emb(t) + z_in(u), the embedding C-Net saw in training for step t (still one pass, no noise)
    inference_step: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.inference_step <= self.steps:
            raise ValueError(f"inference_step must be in 0..{self.steps}, got {self.inference_step}")

    def schedule(self) -> DiffusionSchedule:
        return DiffusionSchedule(self.steps, self.noise_scale, self.noise_min, self.noise_max)


@dataclass
class HistoryBatch:
    """B histories in embedding-bag form.

    Attributes:
        item_ids: (total,) int64, the clicked items of every history, concatenated.
        offsets: (B,) int64, start of each history in ``item_ids``.
        user_index: (B,) int64 internal user ids; -1 for a user the model never saw (cold start).
        signals: (B, width) float32 condition signals of each history.
    """

    item_ids: torch.Tensor
    offsets: torch.Tensor
    user_index: torch.Tensor
    signals: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])

    @classmethod
    def from_csr(
        cls, histories: sp.csr_matrix, user_index: np.ndarray, signals: np.ndarray, device: torch.device
    ) -> HistoryBatch:
        return cls(
            item_ids=torch.from_numpy(histories.indices.astype(np.int64)).to(device),
            offsets=torch.from_numpy(histories.indptr[:-1].astype(np.int64)).to(device),
            user_index=torch.from_numpy(np.asarray(user_index, dtype=np.int64)).to(device),
            signals=torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32)).to(device),
        )

    def dense(self, n_items: int) -> torch.Tensor:
        """(B, n) multi-hot float matrix of the histories."""
        lengths = torch.diff(
            self.offsets, append=torch.tensor([self.item_ids.shape[0]], device=self.offsets.device)
        )
        rows = torch.repeat_interleave(torch.arange(self.size, device=self.offsets.device), lengths)
        x = torch.zeros(self.size, n_items, device=self.item_ids.device)
        x[rows, self.item_ids] = 1.0
        return x


class LD4MRec(nn.Module):
    """The full model; ``z_in`` is the (n_users, d_fwd) table of initial-step embeddings (zero at start)."""

    signal_matrix: torch.Tensor

    def __init__(
        self, cnet_config: CNetConfig, n_users: int, diffusion: DiffusionConfig, projection: SignalProjection
    ):
        super().__init__()
        self.cnet = CNet(cnet_config)
        self.z_in = nn.Embedding(n_users, cnet_config.step_dim)
        nn.init.zeros_(self.z_in.weight)
        self.diffusion = diffusion
        self.schedule = diffusion.schedule()
        self.projection = projection
        self.register_buffer("signal_matrix", torch.from_numpy(projection.matrix.copy()), persistent=False)

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

    # -- inference -----------------------------------------------------------------------------------------
    def inference_step_embedding(self, user_index: torch.Tensor) -> torch.Tensor:
        """z (B, d_fwd) for forward-free inference: z_in(u), plus sin_emb(t) if ``inference_step`` t >= 1."""
        z = self.initial_step_embedding(user_index)
        t = self.diffusion.inference_step
        if t == 0:
            return z
        step = torch.full((user_index.shape[0],), t, dtype=torch.long, device=z.device)
        return step_embedding(step, self.cnet.cfg.step_dim).to(z.dtype) + z

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        """Forward-free inference (Algorithm 2): one pass on the clean history, sparse path -> (B, n)."""
        h = self.cnet.embed_sparse(batch.item_ids, batch.offsets)
        return self.cnet.forward_hidden(h, self.inference_step_embedding(batch.user_index), batch.signals)

    def score_forward_noised(
        self,
        batch: HistoryBatch,
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
        history_len = x0.sum(dim=1)
        for t in range(first, 0, -1):
            t_model = -(-t * trained_steps // schedule.steps)  # ceil(t * T / T')
            step = torch.full((batch.size,), t_model, dtype=torch.long, device=x0.device)
            z = step_embedding(step, self.cnet.cfg.step_dim) + z_in
            h = self.cnet.embed_dense(x_t, history_len=history_len)
            x0_hat = self.cnet.forward_hidden(h, z, batch.signals)
            x_t = schedule.posterior_mean(x0_hat, x_t, t) if t > 1 else x0_hat
        return x_t
