"""Training configuration: every hyperparameter of a run, saved whole in the artifact manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Hyperparameters of LD4MRec training (defaults are the project's tuned defaults; see BENCHMARKS.md)."""

    # run
    epochs: int = 1000
    seed: int = 2026
    patience: int = 20
    eval_every: int = 1
    batch_size: int = 400
    eval_batch_size: int = 2048
    threads: int = 0
    device: str = "cpu"
    # optimiser
    lr: float = 1e-4
    weight_decay: float = 0.0
    # signals
    svd_rank: int = 100
    # "visible": training signals from the dropout-visible part of each history (the target is not leaked
    # into the condition); "full": from the whole row, as the paper. Ablation in BENCHMARKS.md.
    signal_source: str = "visible"
    signal_rescale: bool = False
    # C-Net
    hidden_dim: int = 1000
    step_dim: int = 10
    use_cg: bool = True
    use_pg: bool = True
    input_dropout: float = 0.5
    condition_dropout: float = 0.0
    gate_bias: float = -4.0
    activation: str = "tanh"
    content_output: bool = False
    input_norm: bool = False
    # diffusion
    steps: int = 5
    # s in 1 - abar_t = s * (a_min + ...): 0.5, not the spec's 0.1, chosen on the valid split of lastfm2k
    # and tiktok (BENCHMARKS.md, "Search", rows X8, N3, N5, N10, TN5)
    noise_scale: float = 0.5
    noise_min: float = 1e-4
    noise_max: float = 0.02
    # z at inference: 0 = z_in(u) alone (paper); t = sin_emb(t) + z_in(u), seen in training (BENCHMARKS.md)
    inference_step: int = 1
    # loss
    soft_labels: bool = True
    loss: str = "mse"
    mask_visible_loss: bool = False
    loss_user_norm: bool = True  # per-user loss / sqrt(history length): stabilises sparse data (tiktok)
    soft_p: float = 0.01
    soft_gamma: float = 0.01
    importance_history: int = 10
    importance_uniform_mix: float = 0.001

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range option."""
        checks = [
            ("epochs", self.epochs >= 1),
            ("batch_size", self.batch_size >= 1),
            ("lr", self.lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("svd_rank", self.svd_rank >= 1),
            ("hidden_dim", self.hidden_dim >= 1),
            ("step_dim", self.step_dim >= 2),
            ("steps", self.steps >= 1),
            ("inference_step", 0 <= self.inference_step <= self.steps),
            ("input_dropout", 0 <= self.input_dropout < 1),
            ("condition_dropout", 0 <= self.condition_dropout < 1),
            ("soft_p", 0 <= self.soft_p <= 1),
            ("soft_gamma", 0 <= self.soft_gamma <= 0.5),
            ("patience", self.patience >= 1),
            ("eval_every", self.eval_every >= 1),
            ("signal_source", self.signal_source in ("full", "visible")),
            ("loss", self.loss in ("mse", "multinomial")),
            ("activation", self.activation in ("tanh", "leaky_relu")),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"invalid value for {name}: {getattr(self, name)!r}")
