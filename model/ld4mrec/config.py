"""LD4MRec's hyperparameters: the one place their defaults live (spec ``LD4MREC.md``; the four changes
from the spec were chosen on the valid split and each has its ablation in BENCHMARKS.md)."""

from __future__ import annotations

from dataclasses import dataclass

from model.base import ModelConfig, option

__all__ = ["LD4MRecConfig"]


@dataclass(frozen=True)
class LD4MRecConfig(ModelConfig):
    """Hyperparameters of LD4MRec (C-Net, diffusion, condition signals, loss and optimiser)."""

    # optimiser
    batch_size: int = option(400, "users per training mini-batch")
    lr: float = option(1e-4, "Adam learning rate")
    weight_decay: float = option(0.0, "Adam weight decay (L2)")
    # condition signals
    svd_rank: int = option(100, "d_svd, rank of the truncated SVD behind the collaborative signal")
    signal_source: str = option(
        "visible",
        "training signals from the dropout-'visible' part of each history (the target does not leak into "
        "the condition) or from the 'full' row, as the paper (ablation in BENCHMARKS.md)",
    )
    # C-Net
    hidden_dim: int = option(1000, "d, width of C-Net")
    step_dim: int = option(10, "d_fwd, size of the step embeddings")
    use_cg: bool = option(True, "collaboration-aware generation blocks (--no-use-cg: the paper's ablation)")
    use_pg: bool = option(True, "preference-aware generation blocks (--no-use-pg: the paper's ablation)")
    input_dropout: float = option(0.5, "dropout on the noisy behaviour vector before FC_in (training only)")
    gate_bias: float = option(-4.0, "initial bias of the CG gates (negative: conditions start near off)")
    activation: str = option("tanh", "activation of the CG blocks: tanh (DiffRec) or leaky_relu")
    # diffusion
    steps: int = option(5, "T, diffusion steps")
    noise_scale: float = option(0.5, "s in 1 - abar_t = s * (a_min + ...); 0.5, not the spec's 0.1 (valid)")
    noise_min: float = option(1e-4, "a_min of the noise schedule")
    noise_max: float = option(0.02, "a_max of the noise schedule")
    inference_step: int = option(
        1,
        "step embedding at inference: 0 = z_in(u) alone (the paper's Algorithm 2), t = sin_emb(t) + z_in(u), "
        "as seen in training (still one pass; BENCHMARKS.md)",
    )
    # loss
    soft_labels: bool = option(True, "soft reconstruction target (--no-soft-labels: the paper's ablation)")
    soft_p: float = option(0.01, "p of the soft target: share of entries smoothed")
    soft_gamma: float = option(0.01, "gamma of the soft target: smoothed entries get gamma / 1 - gamma")
    loss_user_norm: bool = option(
        True, "divide each user's loss by sqrt(history length) (stabilises sparse data; ablation)"
    )
    # structural ablation switches, all off by default (BENCHMARKS.md, "Structural candidates")
    item_graph: float = option(
        0.0,
        "w of the frozen modality kNN item graph S (top-10 cosine per modality, FREEDOM-style, mean over "
        "modalities): input table item_in + w S item_in and scores y + w y S^T; 0 = off (no effect without "
        "item features)",
    )
    feature_output: bool = option(
        False,
        "output layer's item side = free weights + standardised item features x a learned projection (scores "
        "items without training clicks from their features; no effect without item features)",
    )
    gfcf_prior: bool = option(
        False,
        "add GF-CF's item-item filter of the history (training: of its visible part) to C-Net's output, "
        "with a learned weight calibrated at start (a residual denoiser on a closed-form prior)",
    )
    rank_loss: float = option(
        0.0,
        "weight of a listwise term -sum_(i in history) log softmax(x0_hat)_i in each user's loss; 0 = off",
    )
    importance_history: int = option(10, "losses kept per step for importance sampling of steps")
    importance_uniform_mix: float = option(0.001, "share of uniform step sampling mixed in")

    def checks(self) -> list[tuple[str, bool]]:
        return [
            ("batch_size", 1 <= self.batch_size <= 1_000_000),
            ("lr", 0 < self.lr <= 10),
            ("weight_decay", 0 <= self.weight_decay <= 10),
            ("svd_rank", 1 <= self.svd_rank <= 4096),
            ("signal_source", self.signal_source in ("full", "visible")),
            ("hidden_dim", 1 <= self.hidden_dim <= 16384),
            ("step_dim", 2 <= self.step_dim <= 1024),
            ("input_dropout", 0 <= self.input_dropout < 1),
            ("gate_bias", -100 <= self.gate_bias <= 100),
            ("activation", self.activation in ("tanh", "leaky_relu")),
            ("steps", 1 <= self.steps <= 1000),
            ("noise_scale", 0 <= self.noise_scale <= 1),
            ("noise_min", 0 <= self.noise_min <= 1),
            ("noise_max", self.noise_min <= self.noise_max <= 1),
            ("inference_step", 0 <= self.inference_step <= self.steps),
            ("soft_p", 0 <= self.soft_p <= 1),
            ("soft_gamma", 0 <= self.soft_gamma <= 0.5),
            ("item_graph", 0 <= self.item_graph <= 10),
            ("rank_loss", 0 <= self.rank_loss <= 100),
            ("importance_history", 1 <= self.importance_history <= 10_000),
            ("importance_uniform_mix", 0 <= self.importance_uniform_mix <= 1),
        ]
