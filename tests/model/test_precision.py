"""Serving precision: fp32 is the model itself; int8 (dynamic int8 nn.Linear) scores every item, ranks
close to fp32 on a trained artifact, leaves the fp32 model untouched unless in place, and runs on the CPU
only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.artifact import Artifact, build_model, read_artifact
from model.ld4mrec import HistoryBatch, LD4MRec
from model.precision import PRECISIONS, PrecisionError, quantised_layers, to_precision
from model.ranking import mask_items, top_k


@pytest.fixture(scope="module")
def art(tiny_artifact: Path) -> Artifact:
    return read_artifact(tiny_artifact)


def fp32_model(art: Artifact) -> LD4MRec:
    return build_model(art, "cpu")


def training_batch(art: Artifact, users: np.ndarray) -> HistoryBatch:
    return HistoryBatch.from_csr(art.train_histories[users], users, art.signals[users], torch.device("cpu"))


def top20(model: LD4MRec, batch: HistoryBatch) -> np.ndarray:
    """(B, 20) ids of the best unseen items, as the service ranks them."""
    with torch.inference_mode():
        scores = model.score(batch)
        lengths = torch.diff(batch.offsets, append=torch.tensor([batch.item_ids.shape[0]]))
        mask_items(scores, torch.repeat_interleave(torch.arange(batch.size), lengths), batch.item_ids)
        return top_k(scores, 20)[1].numpy()


def test_the_precisions_are_fp32_and_int8() -> None:
    assert PRECISIONS == ("fp32", "int8")


def test_fp32_serves_the_model_itself(art: Artifact) -> None:
    model = fp32_model(art)
    assert to_precision(model, "fp32") is model
    assert quantised_layers(model) == []


def test_int8_quantises_every_linear_and_leaves_the_fp32_model_as_it_was(art: Artifact) -> None:
    model = fp32_model(art)
    int8 = to_precision(model, "int8")
    assert int8 is not model and not int8.training
    linear = {name for name, m in model.named_modules() if type(m) is nn.Linear}
    assert "cnet.out" in linear and "cnet.cg_first.hidden" in linear
    assert set(quantised_layers(int8)) == linear
    assert not any(type(m) is nn.Linear for m in int8.modules())
    assert all(type(m) is nn.Linear for name, m in model.named_modules() if name in linear)  # untouched
    # the embedding-bag first layer and the per-user table stay fp32 parameters
    assert int8.cnet.item_in.dtype == torch.float32 and int8.z_in.weight.dtype == torch.float32


def test_int8_in_place_returns_the_same_model(art: Artifact) -> None:
    model = fp32_model(art)
    assert to_precision(model, "int8", inplace=True) is model
    assert "cnet.out" in quantised_layers(model)


def test_int8_scores_every_item_in_float32(art: Artifact) -> None:
    int8 = to_precision(fp32_model(art), "int8")
    users = np.arange(7)
    with torch.inference_mode():
        scores = int8.score(training_batch(art, users))
    assert scores.shape == (7, art.n_items) and scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())


def test_int8_top20_stays_close_to_fp32_on_a_trained_artifact(art: Artifact) -> None:
    """Measured on the tiny artifact (240 users, 150 items, hidden 64): mean overlap 0.972, min 0.90."""
    model = fp32_model(art)
    int8 = to_precision(model, "int8")
    users = np.nonzero(np.diff(art.train_histories.indptr) > 0)[0]
    batch = training_batch(art, users)
    reference, quantised = top20(model, batch), top20(int8, batch)
    overlap = np.array(
        [len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(reference, quantised, strict=True)]
    )
    assert overlap.mean() >= 0.9, overlap.mean()
    assert overlap.min() >= 0.6, overlap.min()


def test_an_unknown_precision_is_refused(art: Artifact) -> None:
    with pytest.raises(PrecisionError, match="unknown precision 'int4'.*fp32, int8"):
        to_precision(fp32_model(art), "int4")


def test_int8_off_the_cpu_is_refused(art: Artifact) -> None:
    """No CUDA is needed to check the refusal: any device but the CPU is refused (here the meta device)."""
    off_cpu = fp32_model(art).to("meta")
    with pytest.raises(PrecisionError, match="CPU only.*meta"):
        to_precision(off_cpu, "int8")
    assert to_precision(off_cpu, "fp32") is off_cpu
