"""A Python API for notebooks and scripts: load an artifact of any registered model and ask it for
recommendations with the external ids of the data it was trained on::

    from model.api import load
    rec = load("artifacts/demo")
    rec.recommend("0", k=5)                 # a training user, from their training history
    rec.recommend_for_history(["3", "17"])  # anyone, from a history of item ids (cold start)
    rec.similar_items("17", k=5)            # what someone who has seen only "17" gets recommended

Scoring is the service's: the model's ``fold_in`` and ``score`` (:mod:`model.base`), ranked over the whole
catalogue; ties rank the lower internal item id first. Unknown ids raise :class:`UnknownIdError`. This module
imports only ``model/`` (never ``training/`` or ``service/``) and runs on the CPU unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from model.artifact import Artifact, read_artifact
from model.base import UserBatch
from model.ranking import mask_items, top_k

__all__ = ["ScoredItem", "TrainedRecommender", "UnknownIdError", "load"]

_SHOWN_IDS = 5  # unknown ids quoted in an error message, at most


class UnknownIdError(LookupError):
    """A user or item id the artifact does not know; the message quotes it (shortened)."""


class ScoredItem(NamedTuple):
    """One recommended item: its external id and the model's score (higher is better; the scale is the
    model's own, comparable only within one answer)."""

    item_id: str
    score: float


def _quote(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i[:64]) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


class TrainedRecommender:
    """An artifact loaded for use from Python (see :func:`load`); ids in and out are external strings."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.model
        self._user_index = {uid: i for i, uid in enumerate(artifact.user_ids)}
        self._item_index = {iid: i for i, iid in enumerate(artifact.item_ids)}

    # -- what the artifact holds -----------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def model_version(self) -> str:
        return self.artifact.model_version

    @property
    def user_ids(self) -> tuple[str, ...]:
        """External ids of the training users, in internal order."""
        return self.artifact.user_ids

    @property
    def item_ids(self) -> tuple[str, ...]:
        """External ids of the catalogue, in internal order."""
        return self.artifact.item_ids

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """The manifest's valid and test metrics (``{"valid": {"recall@20": ...}, "test": ...}``)."""
        return self.artifact.metrics

    def history(self, user_id: str) -> list[str]:
        """A training user's training history (external item ids, by internal id)."""
        user = self._user(user_id)
        indptr, indices = self.artifact.train_histories.indptr, self.artifact.train_histories.indices
        return [self.artifact.item_ids[i] for i in indices[indptr[user] : indptr[user + 1]].tolist()]

    # -- recommendations -------------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 20, exclude_seen: bool = True) -> list[ScoredItem]:
        """Top ``k`` items for a training user, from their training history and the state the trainer
        stored (what the service answers before the user's first new click). ``exclude_seen`` leaves out
        the items of that history."""
        user = self._user(user_id)
        histories = self.artifact.train_histories[[user]]
        states = self.artifact.user_states[[user]]
        return self._top(histories, np.asarray([user]), states, k, exclude_seen)

    def recommend_for_history(
        self, item_ids: Iterable[str], k: int = 20, exclude_seen: bool = True
    ) -> list[ScoredItem]:
        """Top ``k`` items for a user the model never saw, who clicked ``item_ids`` (order and duplicates do
        not matter; empty is allowed): the history is folded in (``fold_in``), as the service's ``POST
        /recommend`` does. ``exclude_seen`` leaves out the history's items."""
        items = self._items(item_ids)
        histories = self._histories([items])
        return self._top(histories, np.asarray([-1]), self.model.fold_in(histories), k, exclude_seen)

    def similar_items(self, item_id: str, k: int = 20) -> list[ScoredItem]:
        """The ``k`` items most related to ``item_id``, the item itself left out.

        Defined for every model alike as what it recommends to a new user whose whole history is this one
        item (``recommend_for_history([item_id])``): for EASE that is the item's row of its item-item
        weights; for LD4MRec, the items its denoiser ranks highest from that history; popularity has no
        item-item notion and gives the most popular items for every item."""
        return self.recommend_for_history([item_id], k=k, exclude_seen=True)

    # -- internals -------------------------------------------------------------------------------------------
    def _user(self, user_id: str) -> int:
        index = self._user_index.get(user_id) if isinstance(user_id, str) else None
        if index is None:
            raise UnknownIdError(
                f"unknown user id {str(user_id)[:64]!r}: not a training user of this artifact "
                f"({len(self._user_index):,} users; .user_ids lists them; recommend_for_history takes anyone)"
            )
        return index

    def _items(self, item_ids: Iterable[str]) -> np.ndarray:
        """(h,) int64 unique internal ids of external item ids, sorted; UnknownIdError for unknown ones."""
        if isinstance(item_ids, str):
            raise TypeError("item_ids must be a list of item ids, not one string")
        known: list[int] = []
        unknown: list[str] = []
        for item_id in item_ids:
            index = self._item_index.get(item_id) if isinstance(item_id, str) else None
            if index is None:
                unknown.append(str(item_id))
            else:
                known.append(index)
        if unknown:
            unknown = list(dict.fromkeys(unknown))
            raise UnknownIdError(
                f"unknown item id{'s' if len(unknown) > 1 else ''} {_quote(unknown)}: not in this artifact's "
                f"catalogue ({len(self._item_index):,} items; .item_ids lists them)"
            )
        return np.unique(np.asarray(known, dtype=np.int64))

    def _histories(self, rows: Sequence[np.ndarray]) -> sp.csr_matrix:
        """(B, n) binary float32 CSR of B arrays of sorted unique internal item ids."""
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        data = np.ones(indices.shape[0], dtype=np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.artifact.n_items))

    def _top(
        self, histories: sp.csr_matrix, users: np.ndarray, states: np.ndarray, k: int, exclude_seen: bool
    ) -> list[ScoredItem]:
        """Top ``k`` of one user (row 0 of ``histories``), the history masked when ``exclude_seen``."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        model = self.model
        batch = UserBatch.from_csr(histories, users, states, model.device)
        with torch.inference_mode():
            scores = model.score(batch).float().clone()
            if exclude_seen:
                mask_items(scores, torch.zeros_like(batch.item_ids), batch.item_ids)
            values, ids = top_k(scores, int(k), stable=True)
        keep = torch.isfinite(values[0])
        item_ids = self.artifact.item_ids
        return [
            ScoredItem(item_ids[i], float(v))
            for i, v in zip(ids[0][keep].tolist(), values[0][keep].tolist(), strict=True)
        ]

    def __repr__(self) -> str:
        art = self.artifact
        return (
            f"TrainedRecommender({self.model_name}, {self.model_version}, {art.n_users:,} users, "
            f"{art.n_items:,} items)"
        )


def load(path: str | Path, device: str | torch.device = "cpu") -> TrainedRecommender:
    """Read and verify an artifact directory (``ArtifactError`` names a bad file) and wrap its model."""
    return TrainedRecommender(read_artifact(path, device))
