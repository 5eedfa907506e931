"""DiffMM's per-modality diffusion on a user's interaction row (DiffRec-style, x0-prediction).

Steps are indexed ``t = 0 .. T-1`` as in the official code. The variance schedule is
``noise_scale * linspace(noise_min, noise_max, T)``, turned into betas with the first beta fixed at 1e-4;
training draws t uniformly and weights the MSE by ``SNR(t-1) - SNR(t)`` (1 at t = 0); the reverse process
starts from the clean row and runs all T steps without sampling noise (the rebuild of the generated graph).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["Denoiser", "DiffusionSchedule", "dropout", "step_embedding"]

FIRST_BETA = 1e-4


def step_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer steps (B,): ``[cos(t f_j) ; sin(t f_j)]`` with
    ``f_j = 10000^(-j / (dim // 2))``, zero-padded to an odd ``dim``."""
    half = dim // 2
    j = torch.arange(half, dtype=torch.float32, device=steps.device)
    freqs = torch.exp(-math.log(10000.0) * j / half)
    angles = steps.float()[:, None] * freqs[None, :]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted dropout drawn from ``generator`` (reproducible whatever else uses torch's global RNG)."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class DiffusionSchedule:
    """The forward process and the posterior of the reverse process (float64 tables, (T,) each)."""

    def __init__(self, steps: int, noise_scale: float, noise_min: float, noise_max: float) -> None:
        variance = noise_scale * np.linspace(noise_min, noise_max, steps, dtype=np.float64)
        alpha_bar = 1.0 - variance
        betas = np.empty(steps, dtype=np.float64)
        betas[0] = FIRST_BETA
        betas[1:] = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
        self.steps = steps
        self.betas = torch.from_numpy(betas)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.coef_x0 = self.betas * prev.sqrt() / (1.0 - self.alpha_bar)
        self.coef_xt = (1.0 - prev) * (1.0 - self.betas).sqrt() / (1.0 - self.alpha_bar)
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)
        assert float(self.coef_xt[0]) == 0.0  # the last reverse step is x0_hat itself

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; x0, noise (B, n); t (B,) in 0..T-1."""
        abar = self.alpha_bar.to(x0.device)[t].float()[:, None]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) float32 MSE weights ``SNR(t-1) - SNR(t)``, 1 at t = 0."""
        snr = self.snr.to(t.device)
        weight = snr[(t - 1).clamp_min(0)] - snr[t]
        return torch.where(t == 0, torch.ones_like(weight), weight).float()

    def posterior_mean(self, x0_hat: torch.Tensor, xt: torch.Tensor, t: int) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0_hat) for a scalar step t in 0..T-1 (x0_hat itself at t = 0)."""
        return float(self.coef_x0[t]) * x0_hat + float(self.coef_xt[t]) * xt


class Denoiser(nn.Module):
    """One modality's denoiser: ``[x_t ; Linear(step_emb(t))] -> hidden (tanh) -> n_items``.

    The input layer is kept as an (n, hidden) matrix ``w_in`` (rows per item) plus the step part, so a
    sparse batch of clean rows (the first reverse step) costs only its nonzeros.

    Args:
        n_items: n, width of the interaction row.
        hidden: width of the hidden layer (1000).
        step_dim: size of the step embedding (10).
    """

    def __init__(self, n_items: int, hidden: int, step_dim: int) -> None:
        super().__init__()
        self.step_dim = step_dim
        self.step_layer = nn.Linear(step_dim, step_dim)
        std_in = math.sqrt(2.0 / (n_items + step_dim + hidden))  # DiffRec's initialisation
        self.w_in = nn.Parameter(torch.randn(n_items, hidden) * std_in)
        self.w_step = nn.Parameter(torch.randn(step_dim, hidden) * std_in)
        self.b_in = nn.Parameter(torch.randn(hidden) * 0.001)
        self.out = nn.Linear(hidden, n_items)
        for layer in (self.step_layer, self.out):
            fan_out, fan_in = layer.weight.shape
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0_hat (B, n) from x_t (B, n) (dense, or a sparse CSR batch of clean rows) at steps t (B,)."""
        emb = self.step_layer(step_embedding(t, self.step_dim))
        p = torch.sparse.mm(x, self.w_in) if x.layout == torch.sparse_csr else x @ self.w_in
        return self.out(torch.tanh(p + emb @ self.w_step + self.b_in))

    @torch.no_grad()
    def reverse(self, schedule: DiffusionSchedule, x0: torch.Tensor) -> torch.Tensor:
        """The reverse process from the clean rows x0 (B, n) (dense or sparse CSR) through all T steps,
        without sampling noise (the rebuild's generation): (B, n) dense.

        Run in the hidden space: ``x_{t-1} = a_t x0_hat + b_t x_t`` enters the next step only through
        ``x_{t-1} w_in = a_t (h_t (W_out^T w_in) + b_out w_in) + b_t (x_t w_in)``, so each step costs
        (B, hidden) x (hidden, hidden) with an (hidden, hidden) matrix made once, instead of two
        (B, n)-sized products; only the last step's x0_hat is (B, n) (the posterior at t = 0 is x0_hat)."""
        dense_in = torch.sparse.mm(x0, self.w_in) if x0.layout == torch.sparse_csr else x0 @ self.w_in
        out_in = self.out.weight.t() @ self.w_in  # (hidden, hidden)
        bias_in = self.out.bias @ self.w_in  # (hidden,)
        p = dense_in
        for t in reversed(range(1, schedule.steps)):
            h = self._hidden(p, t)
            p = float(schedule.coef_x0[t]) * (h @ out_in + bias_in) + float(schedule.coef_xt[t]) * p
        return float(schedule.coef_x0[0]) * self.out(self._hidden(p, 0))

    def _hidden(self, p: torch.Tensor, t: int) -> torch.Tensor:
        """The hidden layer (B, hidden) from the input product p = x_t w_in (B, hidden) at step t."""
        steps = torch.full((p.shape[0],), t, dtype=torch.int64, device=p.device)
        emb = self.step_layer(step_embedding(steps, self.step_dim))
        return torch.tanh(p + emb @ self.w_step + self.b_in)
