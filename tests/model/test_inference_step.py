"""Forward-free inference with the step embedding of a training step (``LD4MRecConfig.inference_step``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.base import ConfigError, UserBatch
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.diffusion import DiffusionSchedule, step_embedding
from model.ld4mrec.network import LD4MRecNet
from tests.model.test_cnet import _model


def test_step_zero_is_the_paper_z_in_alone_and_step_t_adds_its_embedding() -> None:
    model, train = _model()
    users = np.arange(5)
    batch = UserBatch.from_csr(train[users], users, model.fold_in(train[users]), torch.device("cpu"))
    x = batch.dense(model.n_items)
    z_in = model.z_in(torch.from_numpy(users))
    with torch.inference_mode():
        paper = model.score(batch)
        torch.testing.assert_close(paper, model.cnet(x, z_in, batch.states))
        model.inference_step = 1
        stepped = model.score(batch)
        z1 = step_embedding(torch.ones(5, dtype=torch.long), model.cnet.cfg.step_dim) + z_in
        torch.testing.assert_close(stepped, model.cnet(x, z1, batch.states))
    assert not torch.allclose(paper, stepped)


@pytest.mark.parametrize("step", [-1, 6])
def test_inference_step_outside_the_schedule_is_refused(step: int) -> None:
    with pytest.raises(ConfigError, match="inference_step"):
        LD4MRecConfig(steps=5, inference_step=step).validate()
    model, _ = _model()
    with pytest.raises(ValueError, match="inference_step"):
        LD4MRecNet(model.cnet.cfg, 3, DiffusionSchedule(5, 0.1, 1e-4, 0.02), step, model.projection)
