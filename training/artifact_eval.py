"""Evaluating a trained artifact, of any registered model, on a dataset in our layout, under the all-ranking
protocol of :mod:`training.evaluate` (every item ranked, the dataset's training items masked).

The dataset must be the artifact's: the same external user and item ids in the same order (else
:class:`DatasetMismatch`). Its training split decides the histories the model ranks from:

* the same training split as the artifact's training histories (the usual case): the artifact's stored
  user states are used, so the artifact's own dataset reproduces the manifest's metrics exactly;
* another training split (e.g. the same users and items with more clicks): the users whose training history
  differs are *folded in* with the model's ``fold_in`` and keep their internal ids, exactly as the service
  ranks a user whose history changed after training; the result says how many. Such a dataset is refused
  (:class:`DatasetMismatch`) when an evaluated valid or test interaction is in the artifact's training
  histories: the model was fitted on it, so the metrics would be inflated (typically a re-split log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from model.artifact import Artifact
from model.base import make_score_fn
from training.dataset import InteractionData
from training.evaluate import evaluable_users, evaluate

__all__ = ["SPLITS", "ArtifactEvaluation", "DatasetMismatch", "check_ids", "evaluate_artifact"]

SPLITS = ("valid", "test")


class DatasetMismatch(ValueError):
    """The dataset is not the one the artifact was trained on (ids differ, or its held-out interactions
    were training interactions of the artifact); the message says what differs."""


@dataclass(frozen=True)
class ArtifactEvaluation:
    """Metrics of an artifact on a dataset.

    Attributes:
        metrics: split -> ``recall@K`` / ``ndcg@K`` (K = 10, 20, 50) -> mean over the evaluated users.
        users: split -> users evaluated (at least one training and one held-out item).
        changed_users: users whose training history in the dataset differs from the artifact's (folded in);
            0 = the artifact's stored states were used.
    """

    metrics: dict[str, dict[str, float]]
    users: dict[str, int]
    changed_users: int = 0
    notes: list[str] = field(default_factory=list)


def _first_difference(ours: Sequence[str], theirs: Sequence[str]) -> int:
    return next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)


def check_ids(art: Artifact, data: InteractionData) -> None:
    """Raise :class:`DatasetMismatch` unless ``data`` has the artifact's user and item ids, in order."""
    if (data.n_users, data.n_items) != (art.n_users, art.n_items):
        raise DatasetMismatch(
            f"the dataset has {data.n_users} users and {data.n_items} items, the artifact "
            f"{art.n_users} users and {art.n_items} items: it is not the dataset the artifact was trained on"
        )
    for kind, ours, theirs in (("user", data.user_ids, art.user_ids), ("item", data.item_ids, art.item_ids)):
        if ours == theirs:
            continue
        i = _first_difference(ours, theirs)
        hint = "the same ids in another order" if set(ours) == set(theirs) else "other ids"
        raise DatasetMismatch(
            f"{kind} {i} is {ours[i][:64]!r} in the dataset but {theirs[i][:64]!r} in the artifact ({hint}; "
            f"the {kind} ids must be the artifact's, in the same order)"
        )


def _changed_rows(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """(c,) int64 rows where two binary CSR matrices of one shape differ."""
    diff = abs(a - b).tocsr()
    diff.eliminate_zeros()
    return np.nonzero(np.diff(diff.indptr) > 0)[0].astype(np.int64)


def evaluate_artifact(
    art: Artifact, data: InteractionData, splits: Sequence[str] = SPLITS, *, batch_size: int = 2048
) -> ArtifactEvaluation:
    """Valid and/or test metrics of ``art`` on ``data`` (see the module docstring for the rules)."""
    check_ids(art, data)
    model = art.model
    changed = _changed_rows(art.train_histories, data.train)
    states = art.user_states
    notes: list[str] = []
    if changed.size:
        for name in splits:
            split = getattr(data, name)
            rows = evaluable_users(data.train, split)
            leaked = art.train_histories[rows].multiply(split[rows]).nnz
            if leaked:
                raise DatasetMismatch(
                    f"{leaked} of the dataset's {name} interactions are training interactions of the "
                    "artifact: the model was fitted on them, so its metrics would be inflated (was the log "
                    "split again?); evaluate on the dataset the artifact was trained on"
                )
        states = np.array(art.user_states, dtype=np.float32, copy=True)
        for start in range(0, changed.size, batch_size):
            rows = changed[start : start + batch_size]
            states[rows] = model.fold_in(data.train[rows])
        notes.append(
            f"the dataset's training split differs from the artifact's training histories for {changed.size} "
            f"of {data.n_users} users: their dataset histories were folded in (as the service does for a "
            "changed history), so these metrics are not the manifest's"
        )
    score_fn = make_score_fn(model, data.train, states)
    metrics = {
        name: evaluate(score_fn, data.train, getattr(data, name), batch_size=batch_size) for name in splits
    }
    users = {name: int(evaluable_users(data.train, getattr(data, name)).size) for name in splits}
    return ArtifactEvaluation(metrics, users, int(changed.size), notes)
