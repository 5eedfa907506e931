"""Serving precision: fp32 is the model itself; LD4MRec's int8 (dynamic int8 nn.Linear) scores every item,
ranks close to fp32 on a trained artifact, leaves the fp32 model untouched, and runs on the CPU only;
models without an int8 path refuse it. LD4MRec's bf16 is a bfloat16 copy that returns fp32 scores and
ranks close to fp32; ``ranking_overlap`` measures that, ``native_bf16`` says where bf16 is native."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from model.artifact import Artifact, read_artifact
from model.base import PrecisionError, Recommender, UserBatch
from model.precision import PRECISIONS, native_bf16, quantised_layers, ranking_overlap
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


def test_the_precisions_are_fp32_bf16_and_int8() -> None:
    assert PRECISIONS == ("fp32", "bf16", "int8")


def test_bf16_is_a_copy_that_scores_in_fp32_and_ranks_close_to_it(art: Artifact) -> None:
    model = art.model
    before = {k: v.clone() for k, v in net(model).state_dict().items()}
    bf16 = model.with_precision("bf16")
    assert bf16.precision == "bf16" and model.precision == "fp32"
    assert all(p.dtype == torch.bfloat16 for p in net(bf16).parameters())
    assert all(torch.equal(before[k], v) for k, v in net(model).state_dict().items())  # fp32 untouched
    users = np.arange(art.n_users)
    batch = training_batch(art, users)
    with torch.inference_mode():
        reference, reduced = model.score(batch), bf16.score(batch)
    assert reduced.dtype == torch.float32 and reduced.shape == reference.shape
    seen = torch.from_numpy(art.train_histories[users].toarray() > 0)
    overlap = ranking_overlap(reference, reduced, seen, 20)
    assert overlap >= 0.95
    ids, ref_ids = top20(bf16, batch), top20(model, batch)
    by_hand = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, ref_ids, strict=True)])
    assert overlap == pytest.approx(by_hand, abs=1e-6)


def test_ranking_overlap_counts_shared_top_k_items() -> None:
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[4.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    none = torch.zeros_like(a, dtype=torch.bool)
    assert ranking_overlap(a, b, none, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert ranking_overlap(a, a, none, 2) == 1.0
    masked = torch.tensor([[False, True, False, True], [False, False, False, False]])
    assert ranking_overlap(a, b, masked, 2) == 1.0  # items 1 and 3 are never ranked: both pick 0 and 2


def test_native_bf16_is_false_off_cuda_and_cpu() -> None:
    assert native_bf16(torch.device("meta")) is False
    assert isinstance(native_bf16(torch.device("cpu")), bool)


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
    with pytest.raises(PrecisionError, match="supports precision fp32, bf16, int8, not 'int4'"):
        art.model.with_precision("int4")


def test_int8_off_the_cpu_is_refused(tiny_artifact: Path) -> None:
    """No CUDA is needed to check the refusal: any device but the CPU is refused (here the meta device)."""
    off_cpu = read_artifact(tiny_artifact, "meta").model
    with pytest.raises(PrecisionError, match="CPU only.*meta"):
        off_cpu.with_precision("int8")
    assert off_cpu.with_precision("fp32") is off_cpu
