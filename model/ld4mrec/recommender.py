"""LD4MRec behind the model contract: build, one training epoch (spec Algorithm 1), fold-in, scoring, arrays.

The user state is the condition signal vector ``[c ; m_1 ; ...]`` of a history (:mod:`.signals`); scoring is
forward-free, one C-Net pass on the clean history (Algorithm 2).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self, cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from model.base import (
    ConfigError,
    FitContext,
    ModelConfig,
    PrecisionError,
    Recommender,
    TrainingData,
    UserBatch,
    as_tensor,
)
from model.distributed import batch_mean, gather_rows, local_part, mean_over_ranks, rank_seed, wrap_module
from model.ld4mrec.cnet import CNet, CNetConfig
from model.ld4mrec.config import LD4MRecConfig
from model.ld4mrec.diffusion import DiffusionSchedule
from model.ld4mrec.item_graphs import gfcf_prior, modality_knn_graph, standardised_features
from model.ld4mrec.memory import fitting_config, training_bytes
from model.ld4mrec.network import LD4MRecNet
from model.ld4mrec.sampler import ImportanceStepSampler
from model.ld4mrec.signals import SignalBasis, compute_signal_basis, signals_from_histories
from model.memory import available_bytes, gib
from model.precision import model_device, quantise_int8

__all__ = ["LD4MRec", "LD4MRecMemoryError", "soft_target"]

MAX_MODALITIES = 64
MAX_MODALITY_DIM = 1 << 16


def soft_target(
    x_in: torch.Tensor, p: float, gamma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Soft reconstruction target f_s(x_in) (Eqs. 6-7), resampled per call.

    Each entry joins S+ (clicked) or S- (not clicked) with probability ``p``; those get ``1 - gamma`` and
    ``gamma``; every other entry keeps x_in. x_in (B, n) binary -> (B, n).
    """
    chosen = torch.rand(x_in.shape, generator=generator, device=x_in.device) < p
    smoothed = torch.where(x_in > 0, 1.0 - gamma, gamma)
    return torch.where(chosen, smoothed, x_in)


@dataclass
class _FitState:
    """What training carries from epoch to epoch; ``module`` is the network to train through (itself, or
    its DistributedDataParallel wrapper under torchrun)."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: ImportanceStepSampler
    rng: np.random.Generator
    generator: torch.Generator


def _cnet_config(
    cfg: LD4MRecConfig, n_items: int, svd_rank: int, modality_dims: tuple[int, ...]
) -> CNetConfig:
    return CNetConfig(
        n_items=n_items,
        collab_dim=2 * svd_rank,
        modality_dims=modality_dims,
        hidden_dim=cfg.hidden_dim,
        step_dim=cfg.step_dim,
        use_cg=cfg.use_cg,
        use_pg=cfg.use_pg,
        input_dropout=cfg.input_dropout,
        gate_bias=cfg.gate_bias,
        activation=cfg.activation,
        item_graph=cfg.item_graph if modality_dims else 0.0,
        feature_dim=sum(modality_dims) if cfg.feature_output else 0,
        gfcf_prior=cfg.gfcf_prior,
    )


def _set_item_structures(net: LD4MRecNet, basis: SignalBasis) -> None:
    """The item graph and features of the structural switches that are on, rebuilt from the item features."""
    cfg = net.cnet.cfg
    graph = modality_knn_graph(basis.modality_features) if cfg.item_graph > 0 else None
    features = (
        torch.from_numpy(standardised_features(basis.modality_features)) if cfg.feature_dim > 0 else None
    )
    net.cnet.set_item_structures(graph, features)


def _set_gfcf_prior(net: LD4MRecNet, train: sp.csr_matrix, rank: int, seed: int) -> None:
    """Fix the GF-CF prior P of ``train`` and start its weight at the least-squares scale
    ``<X, XP> / <XP, XP>`` over the training rows X."""
    prior = gfcf_prior(train, rank, seed=seed)
    x = sp.csr_matrix(train, dtype=np.float32)
    num, den = 0.0, 0.0
    for start in range(0, x.shape[0], 4096):
        rows = x[start : start + 4096]
        filtered = np.asarray(rows @ prior)
        num += float(rows.multiply(filtered).sum())
        den += float((filtered.astype(np.float64) ** 2).sum())
    with torch.no_grad():
        net.cnet.prior.copy_(torch.from_numpy(prior))
        net.cnet.prior_weight.fill_(num / den if den > 0 else 0.0)


def _schedule(cfg: LD4MRecConfig) -> DiffusionSchedule:
    return DiffusionSchedule(cfg.steps, cfg.noise_scale, cfg.noise_min, cfg.noise_max)


class LD4MRec(Recommender):
    """LD4MRec (Zhu et al., arXiv 2309.15363) with the project's defaults (:class:`LD4MRecConfig`)."""

    name = "ld4mrec"
    config_class = LD4MRecConfig
    iterative = True
    distributed = True
    precisions = ("fp32", "bf16", "int8")

    def __init__(
        self, config: LD4MRecConfig, net: LD4MRecNet, basis: SignalBasis, signals: np.ndarray | None
    ) -> None:
        self.config = config
        self.net = net
        self.basis = basis
        self.n_users = net.n_users
        self.n_items = net.n_items
        self.device = model_device(net)
        self._signals = signals
        self._fit: _FitState | None = None

    @property
    def cfg(self) -> LD4MRecConfig:
        return cast(LD4MRecConfig, self.config)

    # -- build and fit -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: ModelConfig, data: TrainingData, ctx: FitContext) -> Self:
        """Signal basis (randomized SVD of ``data.train``), offline signals of every user, a fresh network
        with the signal standardisation fixed from the users who have a training history."""
        cfg = cast(LD4MRecConfig, config)
        if ctx.device.type == "cpu":
            _check_memory(cfg, data)
        torch.manual_seed(ctx.seed)
        basis = compute_signal_basis(data.train, data.modality_features, svd_rank=cfg.svd_rank, seed=ctx.seed)
        projection = basis.projection()
        signals = signals_from_histories(projection, data.train)
        cnet_cfg = _cnet_config(cfg, data.n_items, basis.svd_rank, basis.modality_dims)
        net = LD4MRecNet(cnet_cfg, data.n_users, _schedule(cfg), cfg.inference_step, projection)
        _set_item_structures(net, basis)
        if cfg.gfcf_prior:
            _set_gfcf_prior(net, data.train, cfg.svd_rank, ctx.seed)
        active = np.diff(data.train.indptr) > 0
        s = torch.from_numpy(signals[active])
        net.cnet.set_signal_stats(s.mean(dim=0), s.std(dim=0))
        net.to(ctx.device).eval()  # fit_epoch switches to training mode and back
        model = cls(cfg, net, basis, signals)
        if ctx.world_size > 1:
            torch.manual_seed(rank_seed(ctx))  # same init on every rank (above); own dropout draws from here
        model._fit = _FitState(
            module=wrap_module(net, ctx),
            optimizer=torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
            sampler=ImportanceStepSampler(
                cfg.steps, cfg.importance_history, cfg.importance_uniform_mix, seed=ctx.seed
            ),
            rng=np.random.default_rng(ctx.seed),
            generator=torch.Generator(device=ctx.device).manual_seed(rank_seed(ctx)),
        )
        return model

    def fit_epoch(self, data: TrainingData, epoch: int, ctx: FitContext) -> dict[str, float]:
        """One pass over the users with a training history, in shuffled mini-batches.

        Under torchrun (``ctx.world_size`` W > 1) every rank draws the same permutation and the same steps
        of each global mini-batch and computes its :func:`~model.distributed.local_part` of it; DDP
        averages the gradients and the gathered per-user losses keep every rank's step sampler identical.
        """
        if self._fit is None:
            raise RuntimeError("this model was loaded from an artifact; create() a fresh one to train")
        cfg, net, fit = self.cfg, self.net, self._fit
        net.train()
        users = np.nonzero(np.diff(data.train.indptr) > 0)[0]
        order = fit.rng.permutation(users)
        total, n_batches = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            steps, weights = fit.sampler.sample(len(batch))
            mine = local_part(np.arange(len(batch)), ctx)
            loss, per_user = self._batch_loss(
                data.train, batch[mine], steps[mine], weights[mine], len(batch), ctx
            )
            fit.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            fit.optimizer.step()
            fit.sampler.update(steps, gather_rows(per_user.detach(), ctx, len(batch)).cpu().numpy())
            total += float(loss.detach())
            n_batches += 1
        net.eval()
        return mean_over_ranks({"loss": total / max(n_batches, 1)}, ctx)

    def _batch_loss(
        self,
        train: sp.csr_matrix,
        batch: np.ndarray,
        steps_np: np.ndarray,
        weights_np: np.ndarray,
        n_global: int,
        ctx: FitContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of this process's users ``batch`` (b,) of a global mini-batch of ``n_global`` users, at
        diffusion steps ``steps_np`` (b,) with importance weights ``weights_np`` (b,), and the per-user
        losses (b,). One process: the weighted mean (b = n_global)."""
        assert self._fit is not None
        cfg, net, fit, device = self.cfg, self.net, self._fit, self.device
        x_in = torch.from_numpy(train[batch].toarray()).to(device)
        user_index = torch.from_numpy(batch).to(device)
        steps = torch.from_numpy(steps_np).to(device)
        noise = torch.randn(x_in.shape, generator=fit.generator, device=device)
        x_t = net.schedule.add_noise(x_in, steps, noise)
        keep = None
        if cfg.signal_source == "visible" or cfg.gfcf_prior:
            keep = (
                torch.rand(x_in.shape, generator=fit.generator, device=device) >= cfg.input_dropout
            ).float()
        if cfg.signal_source == "visible":
            assert keep is not None
            signals = net.signals_dense(x_in * keep)
        else:
            assert self._signals is not None
            signals = torch.from_numpy(self._signals[batch]).to(device)
        # the prior filters the visible part only (as the signals: the target must not leak into it),
        # rescaled as the input dropout rescales C-Net's input
        prior_input = x_in * keep / (1.0 - cfg.input_dropout) if cfg.gfcf_prior and keep is not None else None
        x0_hat = fit.module(x_t, user_index, steps, signals, keep, prior_input)
        target = soft_target(x_in, cfg.soft_p, cfg.soft_gamma, fit.generator) if cfg.soft_labels else x_in
        per_user = ((x0_hat - target) ** 2).sum(dim=1)
        if cfg.rank_loss > 0:
            per_user = per_user - cfg.rank_loss * (torch.log_softmax(x0_hat, dim=1) * x_in).sum(dim=1)
        if cfg.loss_user_norm:
            per_user = per_user * x_in.sum(dim=1).clamp_min(1.0).rsqrt()
        loss = batch_mean(per_user * torch.from_numpy(weights_np).float().to(device), ctx, n_global)
        return loss, per_user

    def snapshot(self) -> Any:
        return copy.deepcopy(self.net.state_dict())

    def restore(self, snapshot: Any) -> None:
        self.net.load_state_dict(snapshot)
        self.net.eval()

    # -- user states and scoring ---------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return int(self.net.projection.matrix.shape[1])

    def fold_in(self, histories: sp.csr_matrix) -> np.ndarray:
        """Condition signals (B, width) of binary histories (B, n), from what training fixed."""
        return signals_from_histories(self.net.projection, histories)

    def user_states(self) -> np.ndarray:
        if self._signals is None:
            raise RuntimeError("a loaded model has no training data: the artifact stores the user states")
        return self._signals

    def score(self, batch: UserBatch) -> torch.Tensor:
        if self.precision == "bf16":  # a bf16 network: bf16 states in, fp32 scores out
            states = batch.states.to(torch.bfloat16)
            return self.net.score(dataclasses.replace(batch, states=states)).float()
        return self.net.score(batch)

    # -- persistence ---------------------------------------------------------------------------------------
    def dims(self) -> dict[str, Any]:
        return {"svd_rank": self.basis.svd_rank, "modality_dims": list(self.basis.modality_dims)}

    @classmethod
    def array_shapes(
        cls, config: ModelConfig, n_users: int, n_items: int, dims: Mapping[str, Any]
    ) -> dict[str, tuple[int, ...]]:
        cfg = cast(LD4MRecConfig, config)
        svd_rank, modality_dims = _checked_dims(cfg, dims)
        with torch.device("meta"):  # shapes only, nothing allocated
            cnet = CNet(_cnet_config(cfg, n_items, svd_rank, modality_dims))
        shapes = {f"cnet.{k}": tuple(v.shape) for k, v in cnet.state_dict().items()}
        shapes |= {
            "z_in": (n_users, cfg.step_dim),
            "item_degree": (n_items,),
            "item_factors": (n_items, svd_rank),
            "singular_values": (svd_rank,),
        }
        shapes |= {f"modality_features.{k}": (n_items, d) for k, d in enumerate(modality_dims)}
        return shapes

    def arrays(self) -> dict[str, np.ndarray]:
        if self.precision != "fp32":
            raise PrecisionError("only an fp32 model is saved")
        out = {f"cnet.{k}": v.detach().cpu().float().numpy() for k, v in self.net.cnet.state_dict().items()}
        out["z_in"] = self.net.z_in.weight.detach().cpu().float().numpy()
        out["item_degree"] = self.basis.item_degree.astype(np.float32)
        out["item_factors"] = self.basis.item_factors.astype(np.float32)
        out["singular_values"] = self.basis.singular_values.astype(np.float32)
        for k, features in enumerate(self.basis.modality_features):
            out[f"modality_features.{k}"] = features.astype(np.float32)
        return out

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
        cfg = cast(LD4MRecConfig, config)
        svd_rank, modality_dims = _checked_dims(cfg, dims)
        basis = SignalBasis(
            item_degree=np.asarray(arrays["item_degree"], dtype=np.float32),
            item_factors=np.asarray(arrays["item_factors"], dtype=np.float32),
            singular_values=np.asarray(arrays["singular_values"], dtype=np.float32),
            modality_features=tuple(
                np.asarray(arrays[f"modality_features.{k}"], dtype=np.float32)
                for k in range(len(modality_dims))
            ),
        )
        if basis.singular_values.size and float(basis.singular_values.min()) <= 0:
            raise ConfigError("singular_values must all be > 0")
        cnet_cfg = _cnet_config(cfg, n_items, svd_rank, modality_dims)
        net = LD4MRecNet(cnet_cfg, n_users, _schedule(cfg), cfg.inference_step, basis.projection())
        state = {k[len("cnet.") :]: as_tensor(v) for k, v in arrays.items() if k.startswith("cnet.")}
        # assign: the network reads the loaded arrays in place (memory-mapped ones stay shared between the
        # processes that map them) instead of copying them into its freshly initialised parameters
        net.cnet.load_state_dict(state, strict=True, assign=True)
        _set_item_structures(net, basis)
        with torch.no_grad():
            net.z_in.weight.copy_(as_tensor(arrays["z_in"]))
        return cls(cfg, net.to(device).eval(), basis, None)

    # -- serving -------------------------------------------------------------------------------------------
    def with_precision(self, precision: str) -> Self:
        """``fp32`` (self), ``bf16`` (a bfloat16 copy of the network; the fold-in projection stays fp32 and
        shared) or ``int8``: every ``nn.Linear`` dynamically quantised (CPU only)."""
        if precision == "fp32":
            return self
        if precision == "bf16":
            net = copy.deepcopy(self.net, memo={id(self.net.projection): self.net.projection}).to(
                torch.bfloat16
            )
            served = type(self)(self.cfg, net.eval(), self.basis, self._signals)
            served.precision = "bf16"
            return served
        if precision != "int8":
            return super().with_precision(precision)
        if self.device.type != "cpu":
            raise PrecisionError(
                f"int8 precision runs on the CPU only (dynamic int8 quantisation has no CUDA kernels); the "
                f"model is on {self.device}: use the CPU device with int8, or fp32 on {self.device}"
            )
        net = self.net
        # everything but the Linear layers stays as it is: shared, not copied (item_in, z_in, the fold-in
        # projection and its tensor are items- or users-sized)
        kept = [t for name, t in (*net.named_parameters(), *net.named_buffers()) if not _in_linear(net, name)]
        quantised = type(self)(
            self.cfg, quantise_int8(net, share=[*kept, net.projection]), self.basis, self._signals
        )
        quantised.precision = "int8"
        return quantised


class LD4MRecMemoryError(MemoryError):
    """The catalogue is too large for LD4MRec's items x width layers at this width and batch here."""


def _check_memory(cfg: LD4MRecConfig, data: TrainingData) -> None:
    """Refuse (LD4MRecMemoryError), before allocating anything, a fit whose estimated peak
    (:func:`~model.ld4mrec.memory.training_bytes`) is above the memory available now; say what would fit."""
    dims = [int(f.shape[1]) for f in data.modality_features]
    needed = training_bytes(cfg, data.n_users, data.n_items, dims, data.train.nnz)
    available = available_bytes()
    if available is None or needed <= available:
        return
    smaller = fitting_config(cfg, data.n_users, data.n_items, dims, available, data.train.nnz)
    hint = (
        f"--hidden-dim {smaller.hidden_dim} --batch-size {smaller.batch_size} would fit"
        if smaller is not None
        else "no width or batch of the ladders would fit"
    )
    raise LD4MRecMemoryError(
        f"LD4MRec at {data.n_items} items, --hidden-dim {cfg.hidden_dim} and --batch-size {cfg.batch_size} "
        f"needs about {gib(needed)} to train (two items x width layers with gradients and Adam moments, "
        f"and dense batch x items steps), but only {gib(available)} of memory is available; {hint}"
    )


def _in_linear(net: nn.Module, name: str) -> bool:
    """Whether the parameter or buffer ``name`` belongs to an ``nn.Linear`` of ``net``."""
    owner = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    return isinstance(owner, nn.Linear)


def _checked_dims(cfg: LD4MRecConfig, dims: Mapping[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(svd_rank, modality_dims) from a manifest's ``dims``, range-checked."""
    svd_rank = dims.get("svd_rank")
    modality_dims = dims.get("modality_dims")
    if isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or not 1 <= svd_rank <= cfg.svd_rank:
        raise ConfigError(
            f"dims.svd_rank must be an integer in 1..{cfg.svd_rank} (svd_rank), got {svd_rank!r}"
        )
    if (
        not isinstance(modality_dims, list | tuple)
        or len(modality_dims) > MAX_MODALITIES
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_MODALITY_DIM
            for d in modality_dims
        )
    ):
        raise ConfigError(
            f"dims.modality_dims must be a list of at most {MAX_MODALITIES} integers in 1..{MAX_MODALITY_DIM}"
        )
    return svd_rank, tuple(modality_dims)
