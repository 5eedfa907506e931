"""Forward-diffusion schedule and step embeddings (spec: Eq. 3 and Eq. 17).

Steps are numbered ``t = 1 .. T``. ``one_minus_abar[t-1] = s * (a_min + (t-1)/(T-1) * (a_max - a_min))``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DiffusionSchedule", "step_embedding"]


def step_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps (Eq. 17).

    Args:
        steps: (B,) integer or float steps.
        dim: d_fwd; even and odd indices get sin and cos of ``t / 10000^(2j/dim)``.
    Returns:
        (B, dim) float32.
    """
    half = (dim + 1) // 2
    j = torch.arange(half, dtype=torch.float32, device=steps.device)
    freqs = torch.exp(-math.log(10000.0) * 2.0 * j / dim)
    angles = steps.float()[:, None] * freqs[None, :]
    out = torch.empty(steps.shape[0], dim, dtype=torch.float32, device=steps.device)
    out[:, 0::2] = torch.sin(angles[:, : (dim + 1) // 2])
    out[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return out


class DiffusionSchedule:
    """Noise levels of the forward process and the DiffRec-style posterior for multi-step inference.

    Args:
        steps: T (>= 1).
        noise_scale: s.
        noise_min: a_min.
        noise_max: a_max.
    """

    def __init__(self, steps: int, noise_scale: float, noise_min: float, noise_max: float) -> None:
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        self.steps = steps
        self.noise_scale, self.noise_min, self.noise_max = noise_scale, noise_min, noise_max
        frac = torch.linspace(0.0, 1.0, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1)
        one_minus_abar = noise_scale * (noise_min + frac.double() * (noise_max - noise_min))
        self.alpha_bar = (1.0 - one_minus_abar).double()  # (T,), index t-1
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.betas = 1.0 - self.alpha_bar / prev
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 * x0 + coef_xt * x_t, ...), DDPM Eq. 7
        self.posterior_coef_x0 = self.betas * prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_coef_xt = (1.0 - prev) * (1.0 - self.betas).sqrt() / (1.0 - self.alpha_bar)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; x0, noise (B, n), t (B,) in 1..T."""
        abar = self.alpha_bar.to(x0.device)[t - 1].float()[:, None]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def posterior_mean(self, x0_hat: torch.Tensor, xt: torch.Tensor, t: int) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0_hat) for a scalar step t in 1..T."""
        return float(self.posterior_coef_x0[t - 1]) * x0_hat + float(self.posterior_coef_xt[t - 1]) * xt
