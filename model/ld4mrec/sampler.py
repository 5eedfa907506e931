"""Importance sampling of diffusion steps (spec Eq. 8, as in DiffRec's code)."""

from __future__ import annotations

import numpy as np

__all__ = ["ImportanceStepSampler"]


class ImportanceStepSampler:
    """Samples steps t in 1..T for a batch and keeps the loss history that drives the sampling.

    Uniform until every step has ``history_len`` recorded losses; then ``p_t`` is proportional to
    ``sqrt(mean(loss_t^2))`` over the history, mixed with ``uniform_mix`` of the uniform distribution.
    A user's loss is weighted by ``1 / (T * p_t)`` (1 in the uniform phase).

    Args:
        steps: T.
        history_len: losses kept per step (10).
        uniform_mix: share of the uniform distribution (0.001).
        seed: for the step draws.
    """

    def __init__(self, steps: int, history_len: int = 10, uniform_mix: float = 0.001, seed: int = 0) -> None:
        self.steps = steps
        self.history_len = history_len
        self.uniform_mix = uniform_mix
        self.history = np.zeros((steps, history_len), dtype=np.float64)
        self.count = np.zeros(steps, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @property
    def warmed_up(self) -> bool:
        """True once every step has ``history_len`` losses."""
        return bool((self.count == self.history_len).all())

    def probabilities(self) -> np.ndarray:
        """(T,) sampling probabilities of steps 1..T."""
        if not self.warmed_up:
            return np.full(self.steps, 1.0 / self.steps)
        p = np.sqrt(np.mean(self.history**2, axis=1))
        p = p / p.sum() if p.sum() > 0 else np.full(self.steps, 1.0 / self.steps)
        return p * (1.0 - self.uniform_mix) + self.uniform_mix / self.steps

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """-> steps (B,) int64 in 1..T and loss weights (B,) = 1 / (T * p_t)."""
        p = self.probabilities()
        index = self.rng.choice(self.steps, size=batch_size, p=p)
        return index + 1, 1.0 / (self.steps * p[index])

    def update(self, steps: np.ndarray, losses: np.ndarray) -> None:
        """Record each user's unweighted loss under its step (FIFO of ``history_len`` per step)."""
        for t, loss in zip(steps.tolist(), losses.tolist(), strict=True):
            row = t - 1
            if self.count[row] == self.history_len:
                self.history[row, :-1] = self.history[row, 1:]
                self.history[row, -1] = loss
            else:
                self.history[row, self.count[row]] = loss
                self.count[row] += 1
