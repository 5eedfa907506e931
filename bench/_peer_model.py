"""The scoring function the peer servers of bench/serve_peers.py serve, built from ``model/`` only.

What it computes is what our service answers for ``GET /recommend/{user}?k=K`` when the user has no
stored history yet (``history_source: "artifact"``): the user's training history and the state the
trainer stored for it (the model's fold-in of that history, ``Artifact.user_states``), one batched
``model.score``, the history masked out (``model.ranking.mask_items``) and ``model.ranking.top_k``; only
finite scores are returned. The histories live in this process (the artifact's CSR), as the peers keep
them. The answer has the same shape as ours: ``{"user_id", "items": [{"item_id", "score", "rank"}],
"model_version", "history_source", "cold_start"}``.

This module never imports ``service/``: the peers serve the model layer, not our service.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artifact import read_artifact
from model.base import UserBatch
from model.ranking import mask_items, top_k

__all__ = ["MAX_K", "TopK", "UnknownUser"]

MAX_K = 100  # the service's default MAX_K


class UnknownUser(LookupError):
    """A user id the artifact does not know (our service answers 404)."""


class TopK:
    """An artifact loaded for the peers: ``recommend`` answers a batch of user ids in one forward pass.

    Args:
        artifact: the artifact directory (read and verified by ``model.artifact.read_artifact``).
        torch_threads: intra-op threads of this process (a peer runs one scorer per core: 1).
        precision: what ``Recommender.with_precision`` serves (our service's ``LD4MREC_PRECISION``).
    """

    def __init__(self, artifact: str | Path, torch_threads: int = 1, precision: str = "fp32") -> None:
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        art = read_artifact(artifact, "cpu", mmap=True)
        self.precision = precision
        self.model = art.model.with_precision(precision)
        self.model_version = art.model_version
        self.histories = art.train_histories
        self.states = art.user_states
        self.item_ids = art.item_ids
        self.user_index = {uid: i for i, uid in enumerate(art.user_ids)}

    def recommend(self, user_ids: Sequence[str], ks: Sequence[int]) -> list[dict[str, Any] | None]:
        """Top ``ks[j]`` items for each of B users (None for an unknown user); one forward pass."""
        index = [self.user_index.get(u, -1) for u in user_ids]
        rows = [j for j, i in enumerate(index) if i >= 0]
        out: list[dict[str, Any] | None] = [None] * len(user_ids)
        if not rows:
            return out
        users = np.asarray([index[j] for j in rows], dtype=np.int64)
        histories = self.histories[users]
        k = max(min(ks[j], MAX_K) for j in rows)
        with torch.inference_mode():
            scores = self.model.score(
                UserBatch.from_csr(histories, users, self.states[users], self.model.device)
            )
            lengths = np.diff(histories.indptr)
            seen_rows = torch.from_numpy(np.repeat(np.arange(len(rows)), lengths))
            seen_items = torch.from_numpy(histories.indices.astype(np.int64))
            mask_items(scores, seen_rows, seen_items)
            values, ids = top_k(scores, k)
        values_np, ids_np = values.numpy(), ids.numpy()
        item_ids = self.item_ids
        for r, j in enumerate(rows):
            kj = min(ks[j], MAX_K)
            row_values = values_np[r, :kj]
            keep = np.isfinite(row_values)
            out[j] = {
                "user_id": user_ids[j],
                "items": [
                    {"item_id": item_ids[i], "score": s, "rank": rank}
                    for rank, (i, s) in enumerate(
                        zip(ids_np[r, :kj][keep].tolist(), row_values[keep].tolist(), strict=True), start=1
                    )
                ],
                "model_version": self.model_version,
                "history_source": "artifact",
                "cold_start": False,
            }
        return out
