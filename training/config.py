"""Options of a training run that every model shares (the models' own hyperparameters live in their
configs, ``model/<name>``): seed, device, threads, the epoch loop and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from model.base import ModelConfig, option

__all__ = ["RunConfig"]


@dataclass(frozen=True)
class RunConfig(ModelConfig):
    """How a model is trained and evaluated; saved in the manifest's ``training`` section."""

    seed: int = option(2026, "seed of every random draw (same seed, same artifact)")
    device: str = option("cpu", "torch device to train on: cpu, cuda or cuda:N")
    threads: int = option(0, "CPU threads of torch (intra-op); 0 = torch's default (one per core)")
    epochs: int = option(1000, "most epochs of an iterative model; early stopping usually ends sooner")
    patience: int = option(20, "stop after this many evaluations without a better valid recall@20")
    eval_every: int = option(1, "evaluate on the valid split every this many epochs")
    eval_batch_size: int = option(2048, "users per scoring batch of the evaluation")

    def checks(self) -> list[tuple[str, bool]]:
        return [
            ("seed", 0 <= self.seed < 2**63),
            ("threads", 0 <= self.threads <= 1024),
            ("epochs", 1 <= self.epochs <= 1_000_000),
            ("patience", 1 <= self.patience <= 1_000_000),
            ("eval_every", 1 <= self.eval_every <= 1_000_000),
            ("eval_batch_size", 1 <= self.eval_batch_size <= 1_000_000),
        ]
