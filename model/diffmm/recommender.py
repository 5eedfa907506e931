"""DiffMM behind the model contract: build, one training epoch, fold-in, scoring, arrays.

An epoch (as the official code): (1) train each modality's denoiser on the users' interaction rows;
(2) rebuild one generated user-item graph per modality from the reverse process (top ``rebuild_k`` items per
user, users in chunks, kept sparse); (3) BPR + L2 + contrastive training of the modality-aware GCN over the
interaction graph and the generated graphs (edges dropped with ``keep_rate``), one full-graph forward per
mini-batch of interactions. After each epoch the final embeddings are computed over the generated graphs
without edge dropout (dropout is a training-time augmentation; the official code evaluates over the dropped
graph) and the fold-in map is refitted (:mod:`.foldin`). Scoring is an inner product: user state (the final
user embedding, d floats) . final item embeddings.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self, cast

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from model.base import (
    ConfigError,
    FitContext,
    ModelConfig,
    Recommender,
    TrainingData,
    UserBatch,
    as_tensor,
)
from model.diffmm.config import DiffMMConfig
from model.diffmm.diffusion import Denoiser, DiffusionSchedule, dropout
from model.diffmm.foldin import FoldInTables, fit_residual_map, fold_in, residual_features
from model.diffmm.graph import Graph, csr_tensor, drop_edges, normalised_adjacency, sample_negatives
from model.diffmm.network import DiffMMNet, info_nce

__all__ = ["DiffMM", "residual_features_size"]

log = logging.getLogger(__name__)


def residual_features_size(embed_dim: int) -> int:
    """P, the number of fold-in regression features (:func:`~model.diffmm.foldin.residual_features`)."""
    return 4 * embed_dim + 1


@dataclass
class _FitState:
    """What training carries from epoch to epoch."""

    net: DiffMMNet
    denoisers: nn.ModuleList
    schedule: DiffusionSchedule
    optimizer: torch.optim.Optimizer
    denoiser_optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    generator: torch.Generator
    adj: Graph
    generated: list[Graph]  # per modality, without edge dropout (inference)
    train: sp.csr_matrix


class DiffMM(Recommender):
    """DiffMM (Jiang et al., arXiv 2406.11781) with the official README's tiktok settings as defaults."""

    name = "diffmm"
    config_class = DiffMMConfig
    iterative = True

    def __init__(
        self,
        config: DiffMMConfig,
        n_users: int,
        tables: FoldInTables,
        user_final: np.ndarray | None,
        device: torch.device,
    ) -> None:
        self.config = config
        self.n_users = n_users
        self.n_items = int(tables.item_final.shape[0])
        self.device = device
        self.tables = tables
        self.item_final = as_tensor(tables.item_final).to(device)
        self._user_final = user_final
        self._fit: _FitState | None = None

    @property
    def cfg(self) -> DiffMMConfig:
        return cast(DiffMMConfig, self.config)

    # -- build and fit -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: ModelConfig, data: TrainingData, ctx: FitContext) -> Self:
        """A fresh DiffMM; refuses (ConfigError) a dataset without item features."""
        cfg = cast(DiffMMConfig, config)
        if not data.modality_features:
            raise ConfigError(
                "diffmm needs item features: its diffusion and graphs are per modality, and this dataset has "
                "no modality (<modality>_feat.npy); train ease, popularity or ld4mrec on it instead"
            )
        torch.manual_seed(ctx.seed)
        device = ctx.device
        net = DiffMMNet(
            data.n_users,
            data.n_items,
            data.modality_features,
            cfg.embed_dim,
            cfg.gcn_layers,
            cfg.projection,
            cfg.ris_lambda,
            cfg.ris_adj_lambda,
        ).to(device)
        denoisers = nn.ModuleList(
            [Denoiser(data.n_items, cfg.denoiser_dim, cfg.step_dim) for _ in data.modality_features]
        ).to(device)
        train = sp.csr_matrix(data.train, dtype=np.float32)
        train.sort_indices()
        coo = train.tocoo()
        adj = normalised_adjacency(coo.row, coo.col, data.n_users, data.n_items, device)
        empty = np.zeros(0, dtype=np.int64)
        no_edges = normalised_adjacency(empty, empty, data.n_users, data.n_items, device)  # identity
        fit = _FitState(
            net=net,
            denoisers=denoisers,
            schedule=DiffusionSchedule(cfg.steps, cfg.noise_scale, cfg.noise_min, cfg.noise_max),
            optimizer=torch.optim.Adam(net.parameters(), lr=cfg.lr),
            denoiser_optimizer=torch.optim.Adam(denoisers.parameters(), lr=cfg.lr),
            rng=np.random.default_rng(ctx.seed),
            generator=torch.Generator(device=device).manual_seed(ctx.seed),
            adj=adj,
            generated=[no_edges] * net.n_modalities,
            train=train,
        )
        item_degree = np.diff(train.tocsc().indptr).astype(np.float32)
        tables = _empty_tables(cfg, data.n_items, item_degree)
        model = cls(cfg, data.n_users, tables, None, device)
        model._fit = fit
        model._refresh()
        return model

    def fit_epoch(self, data: TrainingData, epoch: int, ctx: FitContext) -> dict[str, float]:
        """Denoisers, graph rebuild, then BPR + contrastive training of the GCN (module docstring)."""
        fit = self._require_fit()
        diffusion = self._train_denoisers(fit)
        fit.generated = self._rebuild(fit)
        bpr, cl, total = self._train_recommender(fit)
        self._refresh()
        return {"loss": total, "bpr": bpr, "contrastive": cl, "diffusion": diffusion}

    def _require_fit(self) -> _FitState:
        if self._fit is None:
            raise RuntimeError("this model was loaded from an artifact; create() a fresh one to train")
        return self._fit

    def _active_users(self, fit: _FitState) -> np.ndarray:
        return np.nonzero(np.diff(fit.train.indptr) > 0)[0]

    def _rows(self, fit: _FitState, users: np.ndarray) -> torch.Tensor:
        """(B, I) dense float32 interaction rows of ``users``."""
        return torch.from_numpy(fit.train[users].toarray()).to(self.device)

    def _train_denoisers(self, fit: _FitState) -> float:
        """One pass of every modality's denoiser over the users in shuffled mini-batches; mean loss."""
        cfg, net, device = self.cfg, fit.net, self.device
        with torch.no_grad():
            item_ids = net.item_emb.detach().clone()
            projected = [net.projected(m).detach() for m in range(net.n_modalities)]
        fit.denoisers.train()
        users = fit.rng.permutation(self._active_users(fit))
        total, batches = 0.0, 0
        for start in range(0, len(users), cfg.diffusion_batch_size):
            x0 = self._rows(fit, users[start : start + cfg.diffusion_batch_size])
            target_embedding = x0 @ item_ids
            loss = torch.zeros((), device=device)
            for denoiser, features in zip(fit.denoisers, projected, strict=True):
                t = torch.randint(0, cfg.steps, (x0.shape[0],), generator=fit.generator, device=device)
                noise = torch.randn(x0.shape, generator=fit.generator, device=device)
                x_t = fit.schedule.add_noise(x0, t, noise)
                x0_hat = denoiser(dropout(x_t, cfg.denoiser_dropout, fit.generator), t)
                mse = ((x0 - x0_hat) ** 2).mean(dim=1)
                modal = ((x0_hat @ features - target_embedding) ** 2).mean(dim=1)
                loss = loss + (fit.schedule.loss_weight(t) * mse).mean() + cfg.e_loss * modal.mean()
            fit.denoiser_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            fit.denoiser_optimizer.step()
            total += float(loss.detach())
            batches += 1
        fit.denoisers.eval()
        return total / max(batches, 1)

    @torch.no_grad()
    def _rebuild(self, fit: _FitState) -> list[Graph]:
        """Per modality, the generated graph (no edge dropout) of every active user's top ``rebuild_k`` items
        of the reverse process from the user's clean row; users in chunks, rows as sparse batches."""
        cfg = self.cfg
        users = self._active_users(fit)
        k = min(cfg.rebuild_k, self.n_items)
        edges: list[list[np.ndarray]] = [[] for _ in fit.denoisers]
        for start in range(0, len(users), cfg.diffusion_batch_size):
            chunk = users[start : start + cfg.diffusion_batch_size]
            x0 = csr_tensor(fit.train[chunk], self.device)
            for m, denoiser in enumerate(fit.denoisers):
                generated = cast(Denoiser, denoiser).reverse(fit.schedule, x0)
                edges[m].append(torch.topk(generated, k, dim=1).indices.cpu().numpy())
        graphs = []
        for per_chunk in edges:
            items = np.concatenate(per_chunk).reshape(-1)
            graphs.append(
                normalised_adjacency(np.repeat(users, k), items, self.n_users, self.n_items, self.device)
            )
        return graphs

    def _train_recommender(self, fit: _FitState) -> tuple[float, float, float]:
        """BPR + L2 + contrastive over the training interactions in shuffled mini-batches, one full-graph
        forward each; returns the mean BPR, contrastive and total losses per mini-batch."""
        cfg, net, device = self.cfg, fit.net, self.device
        dropped = [drop_edges(g, cfg.keep_rate, fit.generator) for g in fit.generated]
        coo = fit.train.tocoo()
        order = fit.rng.permutation(coo.nnz)
        users_np = coo.row[order].astype(np.int64)
        positives_np = coo.col[order].astype(np.int64)
        negatives_np = sample_negatives(users_np, fit.train, fit.rng)
        net.train()
        sums = np.zeros(3)
        batches = 0
        for start in range(0, len(order), cfg.batch_size):
            stop = start + cfg.batch_size
            users = torch.from_numpy(users_np[start:stop]).to(device)
            positives = torch.from_numpy(positives_np[start:stop]).to(device)
            negatives = torch.from_numpy(negatives_np[start:stop]).to(device)
            prop = net(fit.adj, dropped)
            u = prop.users[users]
            margin = (u * prop.items[positives]).sum(-1) - (u * prop.items[negatives]).sum(-1)
            bpr = -F.logsigmoid(margin).sum() / cfg.batch_size
            reg = cfg.reg * (net.user_emb.square().sum() + net.item_emb.square().sum())
            cl = cfg.ssl_reg * self._contrastive(fit, prop, dropped, users, positives)
            loss = bpr + reg + cl
            fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            fit.optimizer.step()
            sums += (float(bpr.detach()), float(cl.detach()), float(loss.detach()))
            batches += 1
        net.eval()
        bpr_mean, cl_mean, total_mean = sums / max(batches, 1)
        return float(bpr_mean), float(cl_mean), float(total_mean)

    def _contrastive(
        self,
        fit: _FitState,
        prop: Any,
        dropped: list[Graph],
        users: torch.Tensor,
        positives: torch.Tensor,
    ) -> torch.Tensor:
        """InfoNCE over the batch's users and positive items: fused view vs each modality's view ('main') or
        every pair of modality views ('modal')."""
        cfg, n_users = self.cfg, self.n_users
        views = fit.net.contrastive_views(fit.adj, dropped, prop.features)
        main = torch.cat([prop.users, prop.items])
        if cfg.cl_method == "main":
            pairs = [(main, v) for v in views]
        else:
            pairs = [(views[a], views[b]) for a in range(len(views)) for b in range(a + 1, len(views))]
        loss = torch.zeros((), device=self.device)
        for a, b in pairs:
            loss = loss + info_nce(a[:n_users], b[:n_users], users, cfg.temperature)
            loss = loss + info_nce(a[n_users:], b[n_users:], positives, cfg.temperature)
        return loss

    @torch.no_grad()
    def _refresh(self) -> None:
        """Final embeddings over the generated graphs (no edge dropout), the fold-in tables and map."""
        fit = self._require_fit()
        net, n_users = fit.net, self.n_users
        prop = net(fit.adj, fit.generated)
        weights = net.modality_weights()
        fused = sum((w * f for w, f in zip(weights, prop.features, strict=True)), torch.zeros(()))
        tables = FoldInTables(
            item_scale=self.tables.item_scale,
            fused_features=_numpy(fused),
            item_ids=_numpy(net.item_emb),
            item_final=_numpy(prop.items),
            layer_inputs=_numpy(torch.cat([layer[n_users:] for layer in prop.layers], dim=1)),
            residual_map=np.zeros_like(self.tables.residual_map),
            ris_lambda=self.cfg.ris_lambda,
        )
        active = self._active_users(fit)
        phi, known = residual_features(fit.train[active], tables)
        residual = _numpy(prop.modal[:n_users])[active] - known
        tables.residual_map = fit_residual_map(phi, residual, self.cfg.fold_in_ridge)
        self.tables = tables
        self.item_final = torch.from_numpy(tables.item_final).to(self.device)
        self._user_final = _numpy(prop.users)
        self.fitted_info = {
            "modality_weights": [round(float(w), 6) for w in weights.cpu()],
        }

    def snapshot(self) -> Any:
        fit = self._require_fit()
        return {
            "net": copy.deepcopy(fit.net.state_dict()),
            "denoisers": copy.deepcopy(fit.denoisers.state_dict()),
            "generated": list(fit.generated),  # never modified in place: a new list each epoch
        }

    def restore(self, snapshot: Any) -> None:
        fit = self._require_fit()
        fit.net.load_state_dict(snapshot["net"])
        fit.denoisers.load_state_dict(snapshot["denoisers"])
        fit.generated = list(snapshot["generated"])
        self._refresh()

    # -- user states and scoring ---------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self.cfg.embed_dim

    def fold_in(self, histories: sp.csr_matrix) -> np.ndarray:
        """Final user embeddings (B, d) of binary histories (B, I) (:mod:`model.diffmm.foldin`)."""
        return fold_in(sp.csr_matrix(histories), self.tables)

    def user_states(self) -> np.ndarray:
        if self._user_final is None:
            raise RuntimeError("a loaded model has no training data: the artifact stores the user states")
        return self._user_final

    def score(self, batch: UserBatch) -> torch.Tensor:
        """(B, I): user state . final item embedding."""
        return batch.states @ self.item_final.t()

    # -- persistence ---------------------------------------------------------------------------------------
    @classmethod
    def array_shapes(
        cls, config: ModelConfig, n_users: int, n_items: int, dims: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        cfg = cast(DiffMMConfig, config)
        d = cfg.embed_dim
        return {
            "item_final": (n_items, d),
            "item_scale": (n_items,),
            "fused_features": (n_items, d),
            "item_ids": (n_items, d),
            "layer_inputs": (n_items, cfg.gcn_layers * d),
            "residual_map": (residual_features_size(d), d),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        t = self.tables
        return {
            "item_final": t.item_final,
            "item_scale": t.item_scale,
            "fused_features": t.fused_features,
            "item_ids": t.item_ids,
            "layer_inputs": t.layer_inputs,
            "residual_map": t.residual_map,
        }

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
        cfg = cast(DiffMMConfig, config)
        tables = FoldInTables(
            item_scale=np.asarray(arrays["item_scale"], dtype=np.float32),
            fused_features=np.asarray(arrays["fused_features"], dtype=np.float32),
            item_ids=np.asarray(arrays["item_ids"], dtype=np.float32),
            item_final=np.asarray(arrays["item_final"], dtype=np.float32),
            layer_inputs=np.asarray(arrays["layer_inputs"], dtype=np.float32),
            residual_map=np.asarray(arrays["residual_map"], dtype=np.float32),
            ris_lambda=cfg.ris_lambda,
        )
        if tables.item_scale.size and not (
            float(tables.item_scale.min()) > 0 and float(tables.item_scale.max()) <= 1
        ):
            raise ConfigError("item_scale must lie in (0, 1]")
        return cls(cfg, n_users, tables, None, device)


def _empty_tables(cfg: DiffMMConfig, n_items: int, item_degree: np.ndarray) -> FoldInTables:
    d = cfg.embed_dim
    zeros = np.zeros((n_items, d), dtype=np.float32)
    return FoldInTables(
        item_scale=(1.0 / np.sqrt(item_degree + 1.0)).astype(np.float32),
        fused_features=zeros,
        item_ids=zeros,
        item_final=zeros,
        layer_inputs=np.zeros((n_items, cfg.gcn_layers * d), dtype=np.float32),
        residual_map=np.zeros((residual_features_size(d), d), dtype=np.float32),
        ris_lambda=cfg.ris_lambda,
    )


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().float().numpy())
