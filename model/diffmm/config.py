"""DiffMM's hyperparameters: the one place their defaults live.

The defaults are the official README's tiktok settings (HKUDS/DiffMM: ``--reg 1e-4 --ssl_reg 1e-2
--trans 1 --e_loss 0.1 --cl_method 1``) over the official code's general defaults; see ``DIFFMM.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.base import ModelConfig, option

__all__ = ["DiffMMConfig"]


@dataclass(frozen=True)
class DiffMMConfig(ModelConfig):
    """Hyperparameters of DiffMM (GCN recommender, per-modality denoisers, losses, optimisers)."""

    # recommender (modality-aware GCN)
    embed_dim: int = option(64, "d, size of the user and item embeddings (latdim)")
    gcn_layers: int = option(1, "LightGCN layers over the interaction graph after the modal fusion")
    projection: str = option(
        "linear",
        "item feature projection to d: 'linear' (trans 1, the tiktok setting) or 'leaky' (a matrix + "
        "LeakyReLU(0.2), trans 0)",
    )
    ris_lambda: float = option(0.5, "weight of the normalised fused modal embedding added at the end")
    ris_adj_lambda: float = option(0.2, "weight of the propagation over each generated graph")
    keep_rate: float = option(0.5, "share of generated-graph edges kept in training (1 = no edge dropout)")
    # losses and optimiser of the recommender
    batch_size: int = option(1024, "training interactions per BPR mini-batch")
    lr: float = option(1e-3, "Adam learning rate (recommender and denoisers)")
    reg: float = option(1e-4, "L2 weight on the user and item ID embedding tables")
    ssl_reg: float = option(1e-2, "weight of the contrastive (InfoNCE) loss")
    temperature: float = option(0.5, "InfoNCE temperature")
    cl_method: str = option(
        "main",
        "contrastive pairs: 'main' (fused view vs each modality, cl_method 1) or 'modal' (pairs of "
        "modalities, cl_method 0)",
    )
    # per-modality diffusion
    steps: int = option(5, "T, diffusion steps")
    noise_scale: float = option(0.1, "s in the variance schedule s * [noise_min .. noise_max]")
    noise_min: float = option(1e-4, "lower end of the variance schedule")
    noise_max: float = option(0.02, "upper end of the variance schedule")
    denoiser_dim: int = option(1000, "hidden width of each modality's denoiser MLP (dims [1000])")
    step_dim: int = option(10, "size of the sinusoidal step embedding (d_emb_size)")
    denoiser_dropout: float = option(0.5, "dropout on the denoiser's input row (training only)")
    e_loss: float = option(0.1, "weight of the modality-aware term ||x0_hat F_m - x0 E_id||^2")
    diffusion_batch_size: int = option(1024, "users per denoiser mini-batch and per rebuild chunk")
    rebuild_k: int = option(1, "items kept per user from the reverse process in the generated graphs")
    # fold-in
    fold_in_ridge: float = option(
        1.0, "ridge strength of the fold-in map (history aggregate -> the user's own-embedding terms)"
    )

    def checks(self) -> list[tuple[str, bool]]:
        return [
            ("embed_dim", 1 <= self.embed_dim <= 4096),
            ("gcn_layers", 1 <= self.gcn_layers <= 16),
            ("projection", self.projection in ("linear", "leaky")),
            ("ris_lambda", 0 <= self.ris_lambda <= 100),
            ("ris_adj_lambda", 0 <= self.ris_adj_lambda <= 100),
            ("keep_rate", 0 < self.keep_rate <= 1),
            ("batch_size", 1 <= self.batch_size <= 1_000_000),
            ("lr", 0 < self.lr <= 10),
            ("reg", 0 <= self.reg <= 100),
            ("ssl_reg", 0 <= self.ssl_reg <= 100),
            ("temperature", 0 < self.temperature <= 100),
            ("cl_method", self.cl_method in ("main", "modal")),
            ("steps", 1 <= self.steps <= 1000),
            ("noise_scale", 0 < self.noise_scale <= 1),
            ("noise_min", 0 < self.noise_min <= 1),
            ("noise_max", self.noise_min <= self.noise_max <= 1),
            ("denoiser_dim", 1 <= self.denoiser_dim <= 16384),
            ("step_dim", 2 <= self.step_dim <= 1024),
            ("denoiser_dropout", 0 <= self.denoiser_dropout < 1),
            ("e_loss", 0 <= self.e_loss <= 100),
            ("diffusion_batch_size", 1 <= self.diffusion_batch_size <= 1_000_000),
            ("rebuild_k", 1 <= self.rebuild_k <= 1024),
            ("fold_in_ridge", 0 < self.fold_in_ridge <= 1e9),
        ]
