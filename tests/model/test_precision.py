"""Serving precision: fp32 is the model itself; LD4MRec's int8 (dynamic int8 nn.Linear) scores every item,
ranks close to fp32 on a trained artifact, leaves the fp32 model untouched, and runs on the CPU only;
models without an int8 path refuse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from model.artifact import Artifact, read_artifact
from model.base import PrecisionError, Recommender, UserBatch
from model.precision import PRECISIONS, quantised_layers
from model.ranking import mask_items, top_k


@pytest.fixture()
def art(tiny_artifact: Path) -> Artifact:
    return read_artifact(tiny_artifact)


def training_batch(art: Artifact, users: np.ndarray) -> UserBatch:
    return UserBatch.from_csr(art.train_histories[users], users, art.user_states[users], torch.device("cpu"))


def top20(model: Recommender, batch: UserBatch) -> np.ndarray:
    """(B, 20) ids of the best unseen items, as the service ranks them."""
    with torch.inference_mode():
        scores = model.score(batch)
        mask_items(scores, torch.repeat_interleave(torch.arange(batch.size), batch.lengths()), batch.item_ids)
        return top_k(scores, 20)[1].numpy()


def net(model: Recommender) -> Any:
    return model.net  # type: ignore[attr-defined]


def test_the_precisions_are_fp32_and_int8() -> None:
    assert PRECISIONS == ("fp32", "int8")


def test_fp32_serves_the_model_itself(art: Artifact) -> None:
    assert art.model.with_precision("fp32") is art.model
    assert quantised_layers(net(art.model)) == []


def test_int8_quantises_every_linear_and_leaves_the_fp32_model_as_it_was(art: Artifact) -> None:
    model = art.model
    int8 = model.with_precision("int8")
    assert int8 is not model and int8.precision == "int8" and not net(int8).training
    linear = {name for name, m in net(model).named_modules() if type(m) is nn.Linear}
    assert "cnet.out" in linear and "cnet.cg_first.hidden" in linear
    assert set(quantised_layers(net(int8))) == linear
    assert not any(type(m) is nn.Linear for m in net(int8).modules())
    assert all(type(m) is nn.Linear for name, m in net(model).named_modules() if name in linear)  # untouched
    # the embedding-bag first layer and the per-user table stay fp32 parameters
    assert net(int8).cnet.item_in.dtype == torch.float32 and net(int8).z_in.weight.dtype == torch.float32
    with pytest.raises(PrecisionError, match="only an fp32 model is saved"):
        int8.arrays()


def test_int8_scores_every_item_in_float32(art: Artifact) -> None:
    int8 = art.model.with_precision("int8")
    users = np.arange(7)
    with torch.inference_mode():
        scores = int8.score(training_batch(art, users))
    assert scores.shape == (7, art.n_items) and scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())


def test_int8_top20_stays_close_to_fp32_on_a_trained_artifact(art: Artifact) -> None:
    """Measured on the tiny artifact (240 users, 150 items, hidden 64): mean overlap 0.972, min 0.90."""
    int8 = art.model.with_precision("int8")
    users = np.nonzero(np.diff(art.train_histories.indptr) > 0)[0]
    batch = training_batch(art, users)
    reference, quantised = top20(art.model, batch), top20(int8, batch)
    overlap = np.array(
        [len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(reference, quantised, strict=True)]
    )
    assert overlap.mean() >= 0.9, overlap.mean()
    assert overlap.min() >= 0.6, overlap.min()


def test_an_unknown_precision_is_refused(art: Artifact) -> None:
    with pytest.raises(PrecisionError, match="supports precision fp32, int8, not 'int4'"):
        art.model.with_precision("int4")


def test_int8_off_the_cpu_is_refused(tiny_artifact: Path) -> None:
    """No CUDA is needed to check the refusal: any device but the CPU is refused (here the meta device)."""
    off_cpu = read_artifact(tiny_artifact, "meta").model
    with pytest.raises(PrecisionError, match="CPU only.*meta"):
        off_cpu.with_precision("int8")
    assert off_cpu.with_precision("fp32") is off_cpu
