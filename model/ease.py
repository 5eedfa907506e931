"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), closed form.

``B = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1`` (so ``diag(B) = 0``), scores ``x_u B``. The
L2 strength ``lambda`` is chosen on the valid split from a grid. Memory grows with items^2:
:func:`ease_memory_bytes` is what a fit needs at its peak, and :meth:`EASE.create` refuses a catalogue
that would not fit, before allocating anything. Folding in a history is exact: scores are a function of
the history alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from model.base import (
    SELECT_METRIC,
    ConfigError,
    FitContext,
    ModelConfig,
    Recommender,
    TrainingData,
    UserBatch,
    Validate,
    as_tensor,
    make_score_fn,
    option,
)
from model.memory import available_bytes, gib

__all__ = ["EASE", "EASEConfig", "EASEMemoryError", "ease_memory_bytes"]

log = logging.getLogger(__name__)


class EASEMemoryError(MemoryError):
    """The catalogue is too large for EASE's items x items matrices on this machine."""


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    """Hyperparameters of EASE."""

    l2_grid: tuple[float, ...] = option(
        (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0),
        "L2 strengths lambda tried; the best on the valid split (recall@20) is kept",
    )
    max_items: int = option(
        40_000, "largest catalogue accepted (memory is 24 bytes x items^2 at the peak of a fit)"
    )

    def checks(self) -> list[tuple[str, bool]]:
        return [
            ("l2_grid", 1 <= len(self.l2_grid) <= 64 and all(0 < v <= 1e9 for v in self.l2_grid)),
            ("max_items", 1 <= self.max_items <= 1_000_000),
        ]


def ease_memory_bytes(n_items: int) -> int:
    """Peak bytes of a fit, an upper bound: the float64 Gram matrix (factorised and inverted in place), a
    float64 working copy LAPACK may take, and two float32 B matrices (the current and the best)."""
    return 24 * n_items * n_items


class EASE(Recommender):
    """EASE; ``weights`` is B (n, n) float32 on :attr:`device` with a zero diagonal."""

    name = "ease"
    config_class = EASEConfig

    def __init__(self, config: EASEConfig, n_users: int, weights: torch.Tensor) -> None:
        self.config = config
        self.n_users = n_users
        self.n_items = int(weights.shape[0])
        self.device = weights.device
        self.weights = weights

    @classmethod
    def create(cls, config: ModelConfig, data: TrainingData, ctx: FitContext) -> Self:
        """An empty EASE for ``data``; refuses (EASEMemoryError) a catalogue above ``max_items`` or too large
        for the memory available now."""
        assert isinstance(config, EASEConfig)
        n = data.n_items
        needed = ease_memory_bytes(n)
        if n > config.max_items:
            raise EASEMemoryError(
                f"EASE needs items x items matrices: {n} items would take {gib(needed)} at the peak of the "
                f"fit, above the limit of {config.max_items} items (--max-items); use another model"
            )
        available = available_bytes()
        if available is not None and needed > available:
            raise EASEMemoryError(
                f"EASE needs items x items matrices: {n} items would take {gib(needed)} at the peak of the "
                f"fit, but only {gib(available)} of memory is available; use another model"
            )
        return cls(config, data.n_users, torch.zeros((n, n), dtype=torch.float32, device=ctx.device))

    def fit(self, data: TrainingData, validate: Validate, ctx: FitContext) -> None:
        """For each lambda of the grid, the closed form, scored on valid; keeps the best (recall@20)."""
        assert isinstance(self.config, EASEConfig)
        x = sp.csr_matrix(data.train, dtype=np.float64)
        states = np.zeros((self.n_users, 0), dtype=np.float32)
        best: tuple[float, float, torch.Tensor] | None = None
        by_l2: dict[str, float] = {}
        for l2 in self.config.l2_grid:
            if best is not None:
                self.weights = best[2]  # frees the last candidate unless it is the best
            self.weights = _closed_form(_gram(x, self.device), l2)
            valid = validate(make_score_fn(self, data.train, states))
            by_l2[f"{l2:g}"] = round(valid[SELECT_METRIC], 6)
            log.info("EASE lambda %g: valid %s %.4f", l2, SELECT_METRIC, valid[SELECT_METRIC])
            if best is None or valid[SELECT_METRIC] > best[1]:
                best = (l2, valid[SELECT_METRIC], self.weights)
        assert best is not None
        self.weights = best[2]
        self.fitted_info = {"l2": best[0], f"valid_{SELECT_METRIC}_by_l2": by_l2}

    def score(self, batch: UserBatch) -> torch.Tensor:
        """(B, n): the sum of the rows of B of each history's items (an embedding bag)."""
        return F.embedding_bag(batch.item_ids, self.weights, batch.offsets, mode="sum")

    @classmethod
    def array_shapes(
        cls, config: ModelConfig, n_users: int, n_items: int, dims: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        assert isinstance(config, EASEConfig)
        if n_items > config.max_items:
            raise ConfigError(f"n_items {n_items} is above max_items {config.max_items}")
        return {"weights": (n_items, n_items)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights.cpu().numpy()}

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
        assert isinstance(config, EASEConfig)
        weights = as_tensor(arrays["weights"]).to(device)
        return cls(config, n_users, weights)


def _gram(x: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """X^T X (n, n) float64 on ``device`` for binary interactions ``x`` (users, n)."""
    return torch.from_numpy((x.T @ x).toarray()).to(device)


def _closed_form(gram: torch.Tensor, l2: float, block: int = 2048) -> torch.Tensor:
    """B (n, n) float32 for lambda ``l2``, from ``gram`` = X^T X (float64; overwritten: it ends as P).

    P = (G + lambda I)^-1 by a Cholesky factorisation and inversion in place (torch's LAPACK: MKL on the
    CPU, cuSOLVER on a GPU; scipy's multithreaded OpenBLAS potrf crashed at 18k items here), then
    B = -P / diag(P) by column blocks into float32."""
    gram.diagonal().add_(l2)
    info = torch.empty((), dtype=torch.int32, device=gram.device)
    torch.linalg.cholesky_ex(gram, out=(gram, info))
    if int(info) != 0:
        raise np.linalg.LinAlgError(
            f"EASE: the Gram matrix + {l2:g} I is not positive definite ({int(info)})"
        )
    p = torch.cholesky_inverse(gram, out=gram)
    n = p.shape[0]
    diag = p.diagonal().clone()
    weights = torch.empty((n, n), dtype=torch.float32, device=p.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        weights[:, start:stop] = (p[:, start:stop] / -diag[start:stop]).float()
    weights.fill_diagonal_(0.0)
    return weights
