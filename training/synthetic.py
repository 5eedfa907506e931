"""A seeded synthetic multimodal dataset in the MMRec layout, for tests and the demo.

Users and items get latent factors; each modality is a noisy linear projection of the item factors;
every user's clicks are sampled without replacement from a softmax over their affinities; each user's
clicks are split at random into train / valid / test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticSpec", "write_synthetic_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of the synthetic dataset."""

    n_users: int = 800
    n_items: int = 500
    latent_dim: int = 12
    mean_clicks: float = 24.0
    min_clicks: int = 6
    temperature: float = 0.3
    popularity_scale: float = 0.5
    modalities: tuple[tuple[str, int], ...] = (("image", 32), ("text", 24))
    feature_noise: float = 0.3
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


def write_synthetic_dataset(
    directory: str | Path, spec: SyntheticSpec = SyntheticSpec(), name: str | None = None
) -> Path:
    """Generate the dataset and write ``DIR/<name>.inter`` and ``DIR/<modality>_feat.npy``; returns DIR."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or directory.name
    rng = np.random.default_rng(spec.seed)
    users = rng.standard_normal((spec.n_users, spec.latent_dim)) / np.sqrt(spec.latent_dim)
    items = rng.standard_normal((spec.n_items, spec.latent_dim))
    popularity = spec.popularity_scale * rng.standard_normal(spec.n_items)
    affinity = (users @ items.T * 3.0 + popularity[None, :]) / spec.temperature

    lines = ["userID\titemID\tx_label"]
    for u in range(spec.n_users):
        n_clicks = int(np.clip(rng.poisson(spec.mean_clicks), spec.min_clicks, spec.n_items // 2))
        logits = affinity[u] - affinity[u].max()
        probs = np.exp(logits)
        probs /= probs.sum()
        clicked = rng.choice(spec.n_items, size=n_clicks, replace=False, p=probs)
        n_test = max(1, int(round(spec.test_fraction * n_clicks)))
        n_valid = max(1, int(round(spec.valid_fraction * n_clicks)))
        labels = np.zeros(n_clicks, dtype=np.int64)
        labels[:n_valid] = 1
        labels[n_valid : n_valid + n_test] = 2
        for item, label in zip(clicked, labels, strict=True):
            lines.append(f"{u}\t{item}\t{label}")
    # Every item id must occur so that feature rows == items; give unseen items one training click.
    seen = {int(line.split("\t")[1]) for line in lines[1:]}
    for item in sorted(set(range(spec.n_items)) - seen):
        lines.append(f"{int(rng.integers(spec.n_users))}\t{item}\t0")
    (directory / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")

    for modality, dim in spec.modalities:
        projection = rng.standard_normal((spec.latent_dim, dim)) / np.sqrt(spec.latent_dim)
        feats = items @ projection + spec.feature_noise * rng.standard_normal((spec.n_items, dim))
        np.save(directory / f"{modality}_feat.npy", feats.astype(np.float32), allow_pickle=False)
    log.info("wrote synthetic dataset (%d users, %d items) to %s", spec.n_users, spec.n_items, directory)
    return directory
