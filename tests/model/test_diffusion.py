"""Noise schedule (Eq. 3), step embeddings (Eq. 17) and the posterior used by multi-step inference."""

from __future__ import annotations

import math

import torch

from model.ld4mrec.diffusion import DiffusionSchedule, step_embedding


def test_schedule_is_linear_in_one_minus_alpha_bar() -> None:
    schedule = DiffusionSchedule(steps=5, noise_scale=0.1, noise_min=1e-4, noise_max=0.02)
    expected = [0.1 * (1e-4 + (t - 1) / 4 * (0.02 - 1e-4)) for t in range(1, 6)]
    torch.testing.assert_close(1 - schedule.alpha_bar, torch.tensor(expected, dtype=torch.float64))


def test_add_noise_mixes_signal_and_noise() -> None:
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    x0, noise = torch.ones(2, 3), torch.full((2, 3), 2.0)
    t = torch.tensor([1, 5])
    out = schedule.add_noise(x0, t, noise)
    for row, step in enumerate((1, 5)):
        abar = float(schedule.alpha_bar[step - 1])
        torch.testing.assert_close(out[row], torch.full((3,), math.sqrt(abar) + 2 * math.sqrt(1 - abar)))


def test_posterior_at_step_one_returns_x0_hat() -> None:
    schedule = DiffusionSchedule(5, 0.1, 1e-4, 0.02)
    x0_hat, xt = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(schedule.posterior_mean(x0_hat, xt, 1), x0_hat, rtol=1e-6, atol=1e-6)


def test_step_embedding_puts_sin_on_even_and_cos_on_odd_indices() -> None:
    emb = step_embedding(torch.tensor([3]), 10)[0]
    for j in range(5):
        angle = 3 / 10000 ** (2 * j / 10)
        assert math.isclose(float(emb[2 * j]), math.sin(angle), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(float(emb[2 * j + 1]), math.cos(angle), rel_tol=1e-5, abs_tol=1e-6)
