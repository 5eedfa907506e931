"""Training loop of LD4MRec (spec Algorithm 1) with early stopping on valid Recall@20."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from model.cnet import CNetConfig
from model.ld4mrec import DiffusionConfig, HistoryBatch, LD4MRec
from model.signals import SignalBasis, compute_signal_basis, signals_from_histories
from training.config import TrainConfig
from training.dataset import InteractionData
from training.evaluate import evaluate
from training.sampler import ImportanceStepSampler

__all__ = ["TrainResult", "soft_target", "train", "make_score_fn", "prepare_model"]

log = logging.getLogger(__name__)

SELECT_METRIC = "recall@20"


@dataclass
class TrainResult:
    """A trained model with what the artifact needs. ``signals`` (n_users, width) are the offline signals."""

    model: LD4MRec
    basis: SignalBasis
    signals: np.ndarray
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: float = 0.0


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


def prepare_model(data: InteractionData, cfg: TrainConfig) -> tuple[LD4MRec, SignalBasis, np.ndarray]:
    """Signal basis, offline signals of every user and a fresh model with fixed signal standardisation."""
    basis = compute_signal_basis(data.train, data.modality_features, svd_rank=cfg.svd_rank, seed=cfg.seed)
    projection = basis.projection()
    signals = signals_from_histories(projection, data.train)
    cnet_cfg = CNetConfig(
        n_items=data.n_items,
        collab_dim=basis.collab_dim,
        modality_dims=basis.modality_dims,
        hidden_dim=cfg.hidden_dim,
        step_dim=cfg.step_dim,
        use_cg=cfg.use_cg,
        use_pg=cfg.use_pg,
        input_dropout=cfg.input_dropout,
        condition_dropout=cfg.condition_dropout,
        gate_bias=cfg.gate_bias,
        activation=cfg.activation,
        content_output=cfg.content_output,
        input_norm=cfg.input_norm,
    )
    diffusion = DiffusionConfig(cfg.steps, cfg.noise_scale, cfg.noise_min, cfg.noise_max, cfg.inference_step)
    model = LD4MRec(cnet_cfg, data.n_users, diffusion, projection)
    active = np.diff(data.train.indptr) > 0
    s = torch.from_numpy(signals[active])
    model.cnet.set_signal_stats(s.mean(dim=0), s.std(dim=0))
    if hasattr(model.cnet, "content_proj"):
        model.cnet.set_item_content([torch.from_numpy(f) for f in data.modality_features])
    return model, basis, signals


def make_score_fn(model: LD4MRec, histories: sp.csr_matrix, signals: np.ndarray, device: torch.device):
    """Forward-free scores of internal users (B,) from their histories and stored signals -> (B, n)."""

    @torch.inference_mode()
    def score(users: np.ndarray) -> torch.Tensor:
        batch = HistoryBatch.from_csr(histories[users], users, signals[users], device)
        return model.score(batch).cpu()

    return score


def _train_epoch(
    model: LD4MRec,
    optimizer: torch.optim.Optimizer,
    sampler: ImportanceStepSampler,
    train: sp.csr_matrix,
    users: np.ndarray,
    signals: torch.Tensor,
    cfg: TrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over ``users`` in shuffled mini-batches; returns the mean weighted loss."""
    model.train()
    order = rng.permutation(users)
    total, n_batches = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        x_in = torch.from_numpy(train[batch].toarray()).to(device)
        user_index = torch.from_numpy(batch).to(device)
        steps_np, weights_np = sampler.sample(len(batch))
        steps = torch.from_numpy(steps_np).to(device)
        noise = torch.randn(x_in.shape, generator=generator, device=device)
        x_t = model.schedule.add_noise(x_in, steps, noise)
        keep = None
        if cfg.signal_source == "visible":
            keep = (torch.rand(x_in.shape, generator=generator, device=device) >= cfg.input_dropout).float()
            batch_signals = model.signals_dense(x_in * keep)
            if cfg.signal_rescale:  # match the scale of full-history signals (as inverted dropout does)
                keep_p = 1.0 - cfg.input_dropout
                unscaled = model.projection.unscaled_width
                batch_signals = torch.cat(
                    [batch_signals[:, :unscaled] / keep_p, batch_signals[:, unscaled:] / keep_p**0.5], dim=1
                )
        else:
            batch_signals = signals[user_index]
        h = model.cnet.embed_dense(x_t, keep_mask=keep, history_len=x_in.sum(dim=1))
        z = model.training_step_embedding(user_index, steps)
        x0_hat = model.cnet.forward_hidden(h, z, batch_signals)
        target = soft_target(x_in, cfg.soft_p, cfg.soft_gamma, generator) if cfg.soft_labels else x_in
        if cfg.loss == "multinomial":
            per_user = -(torch.log_softmax(x0_hat, dim=1) * target).sum(dim=1)
        elif cfg.mask_visible_loss and keep is not None:  # only what the input does not show is scored
            per_user = (((x0_hat - target) ** 2) * (1.0 - keep * x_in)).sum(dim=1)
        else:
            per_user = ((x0_hat - target) ** 2).sum(dim=1)
        if cfg.loss_user_norm:
            per_user = per_user * x_in.sum(dim=1).clamp_min(1.0).rsqrt()
        loss = (per_user * torch.from_numpy(weights_np).float().to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sampler.update(steps_np, per_user.detach().cpu().numpy())
        total += float(loss.detach())
        n_batches += 1
    return total / max(n_batches, 1)


def train(data: InteractionData, cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Fit LD4MRec on ``data.train``; select the epoch by valid Recall@20; report valid and test there."""
    cfg.validate()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    model, basis, signals = prepare_model(data, cfg)
    model.to(device)
    signals_t = torch.from_numpy(signals).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = ImportanceStepSampler(
        cfg.steps, cfg.importance_history, cfg.importance_uniform_mix, seed=cfg.seed
    )
    users = np.nonzero(np.diff(data.train.indptr) > 0)[0]
    score_fn = make_score_fn(model, data.train, signals, device)

    best_valid, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    bad_evals, history, epoch_seconds = 0, [], []
    bar = tqdm(
        range(1, cfg.epochs + 1),
        desc=f"train {data.name}",
        unit="epoch",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        loss = _train_epoch(
            model, optimizer, sampler, data.train, users, signals_t, cfg, rng, generator, device
        )
        epoch_seconds.append(time.perf_counter() - t0)
        row: dict[str, Any] = {"epoch": epoch, "loss": loss, "seconds": epoch_seconds[-1]}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            model.eval()
            valid = evaluate(score_fn, data.train, data.valid, batch_size=cfg.eval_batch_size)
            row["valid"] = valid
            if valid[SELECT_METRIC] > best_valid:
                best_valid, best_epoch, bad_evals = valid[SELECT_METRIC], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_evals += 1
            bar.set_postfix(
                loss=f"{loss:.3f}",
                valid_r20=f"{valid[SELECT_METRIC]:.4f}",
                best=f"{best_valid:.4f}@{best_epoch}",
            )
            log.debug(
                "epoch %d loss %.4f valid recall@20 %.4f ndcg@20 %.4f (%.1f s/epoch)",
                epoch,
                loss,
                valid["recall@20"],
                valid["ndcg@20"],
                epoch_seconds[-1],
            )
        history.append(row)
        if bad_evals >= cfg.patience:
            log.info(
                "early stop at epoch %d: no valid %s gain for %d evaluations",
                epoch,
                SELECT_METRIC,
                cfg.patience,
            )
            break
    bar.close()

    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "valid": evaluate(score_fn, data.train, data.valid, batch_size=cfg.eval_batch_size),
        "test": evaluate(score_fn, data.train, data.test, batch_size=cfg.eval_batch_size),
    }
    log.info("best epoch %d: valid %s test %s", best_epoch, _fmt(metrics["valid"]), _fmt(metrics["test"]))
    return TrainResult(
        model=model.cpu(),
        basis=basis,
        signals=signals,
        best_epoch=best_epoch,
        metrics=metrics,
        log=history,
        seconds_per_epoch=float(np.median(epoch_seconds)) if epoch_seconds else 0.0,
    )


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
