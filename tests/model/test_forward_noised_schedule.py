"""Forward-noised inference with another number of reverse steps T' (for bench/paper_analyses.py, Fig. 3 and
ratio b): the training schedule reproduces the default, and C-Net sees the training step ceil(t * T / T')."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.base import UserBatch
from model.ld4mrec.diffusion import DiffusionSchedule, step_embedding
from model.ld4mrec.network import LD4MRecNet
from tests.model.test_cnet import _model


def _batch() -> tuple[LD4MRecNet, UserBatch]:
    model, train = _model()
    users = np.arange(4)
    batch = UserBatch.from_csr(train[users], users, model.fold_in(train[users]), torch.device("cpu"))
    return model, batch


def _schedule(steps: int, model: LD4MRecNet) -> DiffusionSchedule:
    d = model.schedule
    return DiffusionSchedule(steps, d.noise_scale, d.noise_min, d.noise_max)


def test_training_schedule_gives_the_default_scores() -> None:
    model, batch = _batch()
    steps = model.schedule.steps
    with torch.inference_mode():
        default = model.score_forward_noised(batch, steps, torch.Generator().manual_seed(1))
        explicit = model.score_forward_noised(
            batch, steps, torch.Generator().manual_seed(1), schedule=_schedule(steps, model)
        )
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_longer_schedule_maps_steps_to_trained_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch = _batch()
    assert model.schedule.steps == 5
    seen: list[torch.Tensor] = []
    forward_hidden = model.cnet.forward_hidden

    def spy(h: torch.Tensor, z: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return forward_hidden(h, z, signals)

    monkeypatch.setattr(model.cnet, "forward_hidden", spy)
    long = _schedule(10, model)
    with torch.inference_mode():
        out = model.score_forward_noised(batch, 10, torch.Generator().manual_seed(0), schedule=long)
    assert out.shape == (4, model.n_items) and torch.isfinite(out).all()
    z_in = model.initial_step_embedding(batch.user_index)
    expected = [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]  # ceil(t * 5 / 10) for t = 10 .. 1
    assert len(seen) == len(expected)
    for z, t in zip(seen, expected, strict=True):
        want = step_embedding(torch.full((4,), t), model.cnet.cfg.step_dim) + z_in
        torch.testing.assert_close(z, want)
    # same noise range: the last step of T' noises as much as the last trained step
    assert float(long.alpha_bar[-1]) == pytest.approx(float(model.schedule.alpha_bar[-1]))


def test_start_step_beyond_the_schedule_is_refused() -> None:
    model, batch = _batch()
    with pytest.raises(ValueError, match="start_step"):
        model.score_forward_noised(batch, 6)
