"""The engine: id maps, stored signals vs fold-in, and per-request masks/top-k inside one batched pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine import Engine, ScoringRequest

EMPTY = np.zeros(0, dtype=np.int64)


@pytest.fixture(scope="module")
def engine(tiny_artifact: Path) -> Engine:
    return Engine.load(tiny_artifact, torch.device("cpu"))


def test_id_maps(engine: Engine) -> None:
    art = engine.artifact
    assert engine.user_index(art.user_ids[5]) == 5
    assert engine.user_index("no-such-user") == -1
    known, unknown = engine.item_indices([art.item_ids[7], "nope", art.item_ids[3], "nope", art.item_ids[7]])
    assert known.tolist() == [3, 7] and unknown == ["nope"]
    assert engine.item_ids_of(np.array([3, 7])) == [art.item_ids[3], art.item_ids[7]]
    assert engine.artifact_history_ids(2) == [art.item_ids[i] for i in art.train_histories[2].indices]


def test_fold_in_of_an_unchanged_history_equals_the_stored_state(engine: Engine) -> None:
    users = [0, 1, 17, 100]
    folded = engine.fold_in([engine.artifact_history(u) for u in users])
    np.testing.assert_allclose(folded, engine.artifact.user_states[users], rtol=1e-5, atol=1e-6)


def test_batched_rows_equal_rows_scored_alone(engine: Engine) -> None:
    requests = [
        ScoringRequest(0, engine.artifact_history(0), engine.stored_state(0), 5, engine.artifact_history(0)),
        ScoringRequest(3, engine.artifact_history(3), None, 12, np.array([1, 2, 3])),
        ScoringRequest(-1, np.array([4, 9], dtype=np.int64), None, 3, EMPTY, np.array([10, 11, 12, 13])),
    ]
    together = engine.score(requests)
    for request, result in zip(requests, together, strict=True):
        alone = engine.score([request])[0]
        assert result.items.tolist() == alone.items.tolist()
        np.testing.assert_allclose(result.scores, alone.scores, rtol=1e-5, atol=1e-6)
        assert len(result.items) == request.k
        assert not set(result.items.tolist()) & set(request.exclude.tolist())
        assert np.all(np.diff(result.scores) <= 0)
    assert set(together[2].items.tolist()) <= {10, 11, 12, 13}
    assert together[0].folded_state is None  # stored signals were used
    folded = together[1].folded_state
    assert folded is not None
    np.testing.assert_allclose(folded, engine.stored_state(3), rtol=1e-5, atol=1e-6)


def test_fewer_eligible_items_than_k_returns_all_eligible(engine: Engine) -> None:
    everything_but_two = np.setdiff1d(np.arange(engine.n_items), [5, 6])
    result = engine.score([ScoringRequest(0, engine.artifact_history(0), None, 50, everything_but_two)])[0]
    assert sorted(result.items.tolist()) == [5, 6]
    nothing = engine.score([ScoringRequest(0, EMPTY, None, 10, EMPTY, np.array([8])[:0])])[0]
    assert nothing.items.size == 0


def test_cold_start_with_an_empty_history_scores_the_catalogue(engine: Engine) -> None:
    result = engine.score([ScoringRequest(-1, EMPTY, None, 10)])[0]
    assert len(result.items) == 10 and np.all(np.isfinite(result.scores))


def test_cached_signals_of_another_width_are_ignored(engine: Engine) -> None:
    signals = engine.stored_state(0)
    decoded = engine.decode_state(signals.tobytes())
    assert decoded is not None and np.array_equal(decoded, signals)
    assert engine.decode_state(signals[:-1].tobytes()) is None
    assert engine.decode_state(None) is None


def test_a_column_major_projection_is_made_row_major_with_the_same_fold_in(tiny_artifact: Path) -> None:
    """scipy copies a non-C-ordered dense operand on every CSR product (milliseconds per fold-in at a
    real catalogue size), so the network keeps the projection C-ordered; the signals do not change."""
    base = Engine.load(tiny_artifact, torch.device("cpu"))
    histories = [base.artifact_history(u) for u in (0, 1, 17)]
    expected = base.fold_in(histories)
    net = base.model.net  # type: ignore[attr-defined]
    fortran = replace(net.projection, matrix=np.asfortranarray(net.projection.matrix))
    assert not fortran.matrix.flags.c_contiguous
    rebuilt = type(net)(net.cnet.cfg, net.n_users, net.schedule, net.inference_step, fortran)
    assert rebuilt.projection.matrix.flags.c_contiguous
    base.model.net = rebuilt  # type: ignore[attr-defined]
    np.testing.assert_array_equal(base.fold_in(histories), expected)
