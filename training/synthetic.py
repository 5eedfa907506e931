"""A seeded synthetic multimodal dataset, for tests, the demo and the README's own-data example.

Users and items get latent factors; each modality is a noisy linear projection of the item factors;
every user's clicks are sampled without replacement from a softmax over their affinities.
:func:`write_synthetic_dataset` splits each user's clicks at random into train / valid / test and writes
the MMRec layout; :func:`write_synthetic_log` writes what a user would bring instead: a ``user,item,
timestamp`` CSV log with string ids (``user_12``, ``song_7``) and item features keyed by those ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["EXAMPLE_LOG_SPEC", "SyntheticSpec", "write_synthetic_dataset", "write_synthetic_log"]

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


# The README's own-data example (examples/clicks.csv, examples/items_text.csv; a test keeps them equal).
EXAMPLE_LOG_SPEC = SyntheticSpec(
    n_users=300, n_items=80, latent_dim=8, mean_clicks=12, min_clicks=4, modalities=(("text", 8),), seed=7
)


def _latent(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> item factors (n_items, latent_dim), user-item affinities (n_users, n_items) as softmax logits."""
    users = rng.standard_normal((spec.n_users, spec.latent_dim)) / np.sqrt(spec.latent_dim)
    items = rng.standard_normal((spec.n_items, spec.latent_dim))
    popularity = spec.popularity_scale * rng.standard_normal(spec.n_items)
    return items, (users @ items.T * 3.0 + popularity[None, :]) / spec.temperature


def _clicks(spec: SyntheticSpec, affinity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One user's clicked item ids (n_clicks,), in click order, from their affinities (n_items,)."""
    n_clicks = int(np.clip(rng.poisson(spec.mean_clicks), spec.min_clicks, spec.n_items // 2))
    logits = affinity - affinity.max()
    probs = np.exp(logits)
    probs /= probs.sum()
    return rng.choice(spec.n_items, size=n_clicks, replace=False, p=probs)


def _features(spec: SyntheticSpec, items: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n_items, dim) float32: a noisy random projection of the item factors."""
    projection = rng.standard_normal((spec.latent_dim, dim)) / np.sqrt(spec.latent_dim)
    feats = items @ projection + spec.feature_noise * rng.standard_normal((spec.n_items, dim))
    return feats.astype(np.float32)


def write_synthetic_dataset(
    directory: str | Path, spec: SyntheticSpec = SyntheticSpec(), name: str | None = None
) -> Path:
    """Generate the dataset and write ``DIR/<name>.inter`` and ``DIR/<modality>_feat.npy``; returns DIR."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or directory.name
    rng = np.random.default_rng(spec.seed)
    items, affinity = _latent(spec, rng)

    lines = ["userID\titemID\tx_label"]
    for u in range(spec.n_users):
        clicked = _clicks(spec, affinity[u], rng)
        n_clicks = len(clicked)
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
        feats = _features(spec, items, dim, rng)
        np.save(directory / f"{modality}_feat.npy", feats, allow_pickle=False)
    log.info("wrote synthetic dataset (%d users, %d items) to %s", spec.n_users, spec.n_items, directory)
    return directory


def write_synthetic_log(
    directory: str | Path,
    spec: SyntheticSpec = SyntheticSpec(),
    *,
    missing_feature_fraction: float = 0.05,
    start_time: int = 1_700_000_000,
) -> tuple[Path, list[Path]]:
    """Write ``DIR/clicks.csv`` and one ``DIR/items_<modality>.csv`` per modality; returns their paths.

    ``clicks.csv``: header ``user,item,timestamp``; ids ``user_<n>`` and ``song_<n>`` numbered by a seeded
    shuffle (so they differ from any internal numbering); each user's timestamps (POSIX seconds) increase
    in click order. ``items_<modality>.csv``: header ``item,f0,f1,...``, one row per item of the log, less
    ``missing_feature_fraction`` of all items (seeded; to exercise items without features), 4 decimals.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    items, affinity = _latent(spec, rng)
    user_names = [f"user_{n}" for n in rng.permutation(spec.n_users) + 1]
    item_names = [f"song_{n}" for n in rng.permutation(spec.n_items) + 1]
    rows: list[tuple[int, int, int]] = []  # (timestamp, user, item)
    for u in range(spec.n_users):
        clicked = _clicks(spec, affinity[u], rng)
        times = start_time + np.cumsum(rng.integers(60, 86_400, size=len(clicked)))
        rows.extend((int(t), u, int(i)) for t, i in zip(times, clicked, strict=True))
    rows.sort()  # a log in time order, users interleaved
    clicks = directory / "clicks.csv"
    lines = ["user,item,timestamp"] + [f"{user_names[u]},{item_names[i]},{t}" for t, u, i in rows]
    clicks.write_text("\n".join(lines) + "\n", encoding="utf-8")
    feature_files = []
    for modality, dim in spec.modalities:
        feats = _features(spec, items, dim, rng)
        keep = np.zeros(spec.n_items, dtype=bool)
        keep[[i for _, _, i in rows]] = True  # only items of the log
        n_missing = round(missing_feature_fraction * spec.n_items)
        keep[rng.choice(spec.n_items, size=n_missing, replace=False)] = False
        header = ",".join(["item"] + [f"f{j}" for j in range(dim)])
        body = [
            ",".join([item_names[i]] + [f"{v:.4f}" for v in feats[i]]) for i in range(spec.n_items) if keep[i]
        ]
        path = directory / f"items_{modality}.csv"
        path.write_text("\n".join([header] + body) + "\n", encoding="utf-8")
        feature_files.append(path)
    log.info(
        "wrote a synthetic click log (%d rows) and %d feature file(s) to %s",
        len(rows),
        len(feature_files),
        directory,
    )
    return clicks, feature_files
