"""LD4MRec's memory estimate and its refusal: the estimate grows with the catalogue, width and batch; the
fitting config is the widest that fits a budget; a fit that would not fit is refused before allocating,
naming a width and batch that would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.ld4mrec.recommender as recommender
from model.base import FitContext
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.memory import BATCHES, WIDTHS, fitting_config, training_bytes
from model.ld4mrec.recommender import LD4MRecMemoryError
from model.registry import get_model
from training.cli import main as train_cli
from training.trainer import training_data

LD4MRec: Any = get_model("ld4mrec")  # its own attributes are used below

GIB = 2**30


def test_estimate_grows_with_catalogue_width_and_batch() -> None:
    cfg = LD4MRecConfig()
    sizes = [training_bytes(cfg, 10_000, n, [64], 200_000) for n in (10**4, 10**5, 10**6)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[2] > 40 * GIB, "two 10^6 x 1000 layers with Adam do not fit a small machine"
    narrow = LD4MRecConfig(hidden_dim=128, batch_size=100)
    assert training_bytes(narrow, 10_000, 10**6, [64], 200_000) < sizes[2] / 4


def test_fitting_config_keeps_what_fits_and_narrows_what_does_not() -> None:
    cfg = LD4MRecConfig()
    assert fitting_config(cfg, 10_000, 10**4, [64], 64 * GIB) is cfg
    budget = 12 * GIB
    fitted = fitting_config(cfg, 10_000, 10**6, [64], budget, 200_000)
    assert fitted is not None and fitted.hidden_dim in WIDTHS and fitted.batch_size in BATCHES
    assert training_bytes(fitted, 10_000, 10**6, [64], 200_000) <= budget
    wider = [w for w in WIDTHS if fitted.hidden_dim < w <= cfg.hidden_dim]
    for width in wider:  # nothing wider fits with a batch of at least 100
        for batch in (b for b in BATCHES if b >= 100):
            bigger = LD4MRecConfig(hidden_dim=width, batch_size=batch)
            assert training_bytes(bigger, 10_000, 10**6, [64], 200_000) > budget
    assert fitting_config(cfg, 10_000, 10**7, [64], 1 * GIB) is None


def test_a_fit_that_would_not_fit_is_refused_before_allocating(
    synthetic_data, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    data = training_data(synthetic_data)
    needed = training_bytes(LD4MRecConfig(), data.n_users, data.n_items, [12, 8], data.train.nnz)
    monkeypatch.setattr(recommender, "available_bytes", lambda: needed - 1)
    with pytest.raises(LD4MRecMemoryError, match=r"--hidden-dim \d+ --batch-size \d+ would fit"):
        LD4MRec.create(LD4MRecConfig(), data, FitContext())
    code = train_cli(["--data", "demo", "--out", str(tmp_path / "a"), "--quiet"])
    assert code == 2 and "cannot train ld4mrec" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(recommender, "available_bytes", lambda: needed)
    assert LD4MRec.create(LD4MRecConfig(), data, FitContext()).n_items == data.n_items


def test_the_int8_copy_shares_what_quantisation_does_not_change(tiny_artifact: Path) -> None:
    from model.artifact import read_artifact
    from model.base import UserBatch
    from model.precision import quantise_int8, quantised_layers

    model = read_artifact(tiny_artifact).model
    assert isinstance(model, LD4MRec)
    int8 = model.with_precision("int8")
    assert isinstance(int8, LD4MRec)
    fp32_net, int8_net = model.net, int8.net
    assert int8_net.cnet.item_in is fp32_net.cnet.item_in
    assert int8_net.z_in.weight is fp32_net.z_in.weight
    assert int8_net.projection is fp32_net.projection
    assert int8_net.signal_matrix.data_ptr() == fp32_net.signal_matrix.data_ptr()
    assert int8_net.signal_matrix.data_ptr() == torch.from_numpy(fp32_net.projection.matrix).data_ptr()
    assert "cnet.out" in quantised_layers(int8_net) and not quantised_layers(fp32_net)
    # the same numbers as a quantisation of a full copy
    histories = read_artifact(tiny_artifact)
    users = np.arange(16)
    batch = UserBatch.from_csr(
        histories.train_histories[users], users, histories.user_states[users], torch.device("cpu")
    )
    with torch.inference_mode():
        full_copy = quantise_int8(fp32_net).score(batch)
        torch.testing.assert_close(int8.score(batch), full_copy, rtol=0, atol=0)
