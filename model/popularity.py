"""Item popularity: every user gets the items with the most training interactions.

Score of item i = number of training interactions of i; ties rank the lower item id first (the evaluator's
and the service's top-k are stable). The reference point every recommender must beat, and the protocol
conformance check of ``ANCHORS.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch

from model.base import FitContext, ModelConfig, Recommender, TrainingData, UserBatch, Validate, as_tensor

__all__ = ["Popularity", "PopularityConfig"]


@dataclass(frozen=True)
class PopularityConfig(ModelConfig):
    """Popularity has no hyperparameters."""


class Popularity(Recommender):
    """Training-interaction counts as scores, the same for every user."""

    name = "popularity"
    config_class = PopularityConfig

    def __init__(self, config: ModelConfig, n_users: int, counts: np.ndarray, device: torch.device) -> None:
        self.config = config
        self.n_users = n_users
        self.n_items = int(counts.shape[0])
        self.device = device
        self.counts = as_tensor(np.asarray(counts, dtype=np.float32)).to(
            device
        )  # a mapped array: shared, read-only

    @classmethod
    def create(cls, config: ModelConfig, data: TrainingData, ctx: FitContext) -> Self:
        return cls(config, data.n_users, np.zeros(data.n_items, dtype=np.float32), ctx.device)

    def fit(self, data: TrainingData, validate: Validate, ctx: FitContext) -> None:
        """Count the training interactions of every item."""
        counts = np.bincount(data.train.indices, minlength=data.n_items).astype(np.float32)
        self.counts = torch.from_numpy(counts).to(self.device)

    def score(self, batch: UserBatch) -> torch.Tensor:
        """(B, n): every row is the item counts."""
        return self.counts.expand(batch.size, -1).clone()

    @classmethod
    def array_shapes(
        cls, config: ModelConfig, n_users: int, n_items: int, dims: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        return {"item_counts": (n_items,)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_counts": self.counts.cpu().numpy()}

    @classmethod
    def from_arrays(
        cls,
        config: ModelConfig,
        n_users: int,
        n_items: int,
        dims: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        device: torch.device,
    ) -> Self:
        return cls(config, n_users, np.asarray(arrays["item_counts"]), device)
