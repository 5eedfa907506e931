"""Importance sampling of diffusion steps (Eq. 8)."""

from __future__ import annotations

import numpy as np

from model.ld4mrec.sampler import ImportanceStepSampler


def test_uniform_until_every_step_has_ten_losses() -> None:
    sampler = ImportanceStepSampler(steps=4, history_len=10, seed=0)
    for t in (1, 2, 3):
        sampler.update(np.full(10, t), np.full(10, float(t)))
    sampler.update(np.full(9, 4), np.ones(9))
    assert not sampler.warmed_up
    np.testing.assert_allclose(sampler.probabilities(), 0.25)
    steps, weights = sampler.sample(1000)
    assert set(np.unique(steps)) == {1, 2, 3, 4}
    np.testing.assert_allclose(weights, 1.0)
    sampler.update(np.array([4]), np.array([1.0]))
    assert sampler.warmed_up


def test_then_proportional_to_rms_of_the_history_with_uniform_mix() -> None:
    sampler = ImportanceStepSampler(steps=3, history_len=10, uniform_mix=0.001, seed=0)
    losses = {1: np.full(10, 1.0), 2: np.full(10, 2.0), 3: np.r_[np.zeros(5), np.full(5, 4.0)]}
    for t, values in losses.items():
        sampler.update(np.full(10, t), values)
    rms = np.array([1.0, 2.0, np.sqrt(np.mean(losses[3] ** 2))])
    expected = rms / rms.sum() * 0.999 + 0.001 / 3
    np.testing.assert_allclose(sampler.probabilities(), expected)
    steps, weights = sampler.sample(20000)
    np.testing.assert_allclose(weights, 1.0 / (3 * expected[steps - 1]))
    freq = np.bincount(steps, minlength=4)[1:] / len(steps)
    np.testing.assert_allclose(freq, expected, atol=0.02)


def test_history_keeps_the_last_ten_losses() -> None:
    sampler = ImportanceStepSampler(steps=1, history_len=10)
    sampler.update(np.ones(15, dtype=np.int64), np.arange(15, dtype=float))
    np.testing.assert_array_equal(sampler.history[0], np.arange(5, 15))
