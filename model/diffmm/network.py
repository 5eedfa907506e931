"""DiffMM's recommender network: ID embeddings, per-modality projections, the modality-aware GCN with fused
modal embeddings, and the contrastive views.

Graphs are (N, N) sparse normalised adjacencies over users then items (:mod:`.graph`); ``adj`` is the
interaction graph A, ``generated[m]`` modality m's generated graph. Shapes: U users, I items, d = embed_dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.diffmm.graph import Graph

__all__ = ["DiffMMNet", "Propagation", "info_nce"]


@dataclass
class Propagation:
    """What the forward computes. ``users`` (U, d), ``items`` (I, d): final embeddings (scores are inner
    products); ``modal`` (N, d): the fused modal embedding M; ``layers``: the inputs of each LightGCN
    layer (N, d) each (M first); ``features``: the normalised projected features (I, d) of each modality."""

    users: torch.Tensor
    items: torch.Tensor
    modal: torch.Tensor
    layers: list[torch.Tensor]
    features: list[torch.Tensor]


class DiffMMNet(nn.Module):
    """The recommender side of DiffMM.

    Args:
        n_users, n_items: U, I.
        modality_features: one (I, d_m) float32 matrix per modality (at least one).
        embed_dim: d.
        gcn_layers: LightGCN layers after the fusion.
        projection: 'linear' or 'leaky' (a matrix + LeakyReLU(0.2)).
        ris_lambda, ris_adj_lambda: weights of the normalised modal term and of the generated graphs.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        modality_features: Sequence[np.ndarray],
        embed_dim: int,
        gcn_layers: int,
        projection: str,
        ris_lambda: float,
        ris_adj_lambda: float,
    ) -> None:
        super().__init__()
        if not modality_features:
            raise ValueError("DiffMM needs at least one modality")
        self.n_users, self.n_items = n_users, n_items
        self.gcn_layers = gcn_layers
        self.ris_lambda, self.ris_adj_lambda = ris_lambda, ris_adj_lambda
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, embed_dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, embed_dim)))
        self.leaky = projection == "leaky"
        projections = [nn.Linear(f.shape[1], embed_dim, bias=not self.leaky) for f in modality_features]
        if self.leaky:
            for layer in projections:
                nn.init.xavier_uniform_(layer.weight)
        self.projections = nn.ModuleList(projections)
        self.modal_weight = nn.Parameter(torch.full((len(modality_features),), 1.0 / len(modality_features)))
        for m, f in enumerate(modality_features):
            self.register_buffer(f"features_{m}", torch.from_numpy(np.asarray(f, dtype=np.float32)))

    @property
    def n_modalities(self) -> int:
        return len(self.projections)

    def modality_weights(self) -> torch.Tensor:
        """(M,) softmax of the learned fusion weights."""
        return torch.softmax(self.modal_weight, dim=0)

    def projected(self, m: int) -> torch.Tensor:
        """(I, d) modality m's item features projected to d (not normalised; the denoisers' F_m)."""
        out = self.projections[m](getattr(self, f"features_{m}"))
        return F.leaky_relu(out, 0.2) if self.leaky else out

    def forward(self, adj: Graph, generated: Sequence[Graph]) -> Propagation:
        """The modality-aware GCN: per modality m, ``e1 = A [u ; f_m]``, ``e2 = A [e1_users ; i]``,
        ``e1 + e2 + ris_adj_lambda G_m [u ; i]``; fused by the softmax weights into M; LightGCN layers over A
        summed with M; plus ``ris_lambda`` x the row-normalised M."""
        u, i = self.user_emb, self.item_emb
        ids = torch.cat([u, i])
        weights = self.modality_weights()
        features = [F.normalize(self.projected(m)) for m in range(self.n_modalities)]
        modal = torch.zeros_like(ids)
        for m, (f, gen) in enumerate(zip(features, generated, strict=True)):
            e1 = adj @ torch.cat([u, f])
            e2 = adj @ torch.cat([e1[: self.n_users], i])
            modal = modal + weights[m] * (e1 + e2 + self.ris_adj_lambda * (gen @ ids))
        layers = [modal]
        total = modal
        for _ in range(self.gcn_layers):
            layers.append(adj @ layers[-1])
            total = total + layers[-1]
        out = total + self.ris_lambda * F.normalize(modal)
        return Propagation(out[: self.n_users], out[self.n_users :], modal, layers[:-1], features)

    def contrastive_views(
        self, adj: Graph, generated: Sequence[Graph], features: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per modality m, (N, d): ``G_m [u ; f_m]`` then LightGCN layers over A, summed."""
        views = []
        for f, gen in zip(features, generated, strict=True):
            view = gen @ torch.cat([self.user_emb, f])
            total = view
            for _ in range(self.gcn_layers):
                view = adj @ view
                total = total + view
            views.append(total)
        return views


class _LogSumExpMean(torch.autograd.Function):
    """``mean_r logsumexp_j (a_r . b_j)`` for a (R, d) and b (N, d), with one (R, N) buffer reused in place
    (logits, then exp, then softmax for the backward) instead of autograd's chain of temporaries."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        buffer = a @ b.t()
        top = buffer.amax(dim=1, keepdim=True)
        buffer.sub_(top).exp_()
        total = buffer.sum(dim=1, keepdim=True)
        buffer.div_(total)  # softmax, what the backward needs
        ctx.save_for_backward(a, b, buffer)
        return (top + total.log()).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, softmax = ctx.saved_tensors
        scale = grad / a.shape[0]
        return (softmax @ b) * scale, (softmax.t() @ a) * scale


def info_nce(a: torch.Tensor, b: torch.Tensor, nodes: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of rows ``nodes`` of views a and b (R, d) (cosine / temperature; negatives: every row of b):
    ``mean(logsumexp_j cos(a_r, b_j) / temperature - cos(a_r, b_r) / temperature)``."""
    a_n = F.normalize(a[nodes]) / temperature
    b_all = F.normalize(b)
    positive = (a_n * b_all[nodes]).sum(dim=-1).mean()
    lse: torch.Tensor = _LogSumExpMean.apply(a_n, b_all)
    return lse - positive
