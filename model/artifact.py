"""The artifact directory: the one contract between the trainer and the service.

Nothing is pickled: arrays are ``.npy`` (read with ``allow_pickle=False``), weights are safetensors,
everything else is JSON. ``manifest.json`` lists every other file with its sha256; :func:`read_artifact`
verifies checksums and shapes and raises :class:`ArtifactError` naming the offending file.

Layout (``FORMAT_VERSION`` 1)::

    manifest.json                   format/model version, dataset, modality order, configs, metrics, files
    weights.safetensors             C-Net state dict (incl. the fixed signal standardisation)
    z_in.npy                        (n_users, d_fwd) initial-step embeddings
    signals.npy                     (n_users, width) condition signals [c ; m_1 ; ...] of training users
    item_degree.npy                 (n_items,) training clicks per item
    item_factors.npy                (n_items, d_svd) SVD item factors I
    singular_values.npy             (d_svd,) Lambda
    modality_<name>.npy             (n_items, d_m) item features, one per modality
    history_indptr.npy              (n_users + 1,) CSR row pointers of the training histories
    history_indices.npy             (nnz,) CSR item ids of the training histories
    item_popularity.npy             (n_items,) training clicks per item (for cold fallbacks and metrics)
    user_ids.json / item_ids.json   external ids; position = internal id
    training_log.json               per-epoch loss, valid metrics and timing
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.cnet import CNetConfig
from model.ld4mrec import DiffusionConfig, LD4MRec
from model.signals import SignalBasis

__all__ = ["FORMAT_VERSION", "Artifact", "ArtifactError", "build_model", "read_artifact", "write_artifact"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
METRIC_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt or does not match itself; ``path`` names the offending file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Artifact:
    """Everything the service needs, in memory. Shapes as in the module docstring."""

    dataset: str
    modality_names: tuple[str, ...]
    cnet_config: CNetConfig
    diffusion: DiffusionConfig
    weights: dict[str, torch.Tensor]
    z_in: np.ndarray
    signals: np.ndarray
    basis: SignalBasis
    train_histories: sp.csr_matrix
    item_popularity: np.ndarray
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    training_log: list[dict[str, Any]] = field(default_factory=list)
    model_version: str = ""
    created_at: str = ""
    path: Path | None = None

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _array_files(art: Artifact) -> dict[str, np.ndarray]:
    files = {
        "z_in.npy": art.z_in.astype(np.float32),
        "signals.npy": art.signals.astype(np.float32),
        "item_degree.npy": art.basis.item_degree.astype(np.float32),
        "item_factors.npy": art.basis.item_factors.astype(np.float32),
        "singular_values.npy": art.basis.singular_values.astype(np.float32),
        "history_indptr.npy": art.train_histories.indptr.astype(np.int64),
        "history_indices.npy": art.train_histories.indices.astype(np.int64),
        "item_popularity.npy": art.item_popularity.astype(np.float32),
    }
    for name, feats in zip(art.modality_names, art.basis.modality_features, strict=True):
        files[f"modality_{name}.npy"] = feats.astype(np.float32)
    return files


def write_artifact(art: Artifact, out_dir: str | Path) -> Path:
    """Write ``art`` to ``out_dir`` atomically (a sibling temp dir, then rename); returns the path.

    An existing *artifact* directory at ``out_dir`` is replaced; any other non-empty directory is refused.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ArtifactError(out_dir, "exists, is not empty and is not an artifact; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in art.weights.items()}, str(tmp / WEIGHTS))
        for name, array in _array_files(art).items():
            np.save(tmp / name, array, allow_pickle=False)
        for name, payload in (
            ("user_ids.json", list(art.user_ids)),
            ("item_ids.json", list(art.item_ids)),
            ("training_log.json", art.training_log),
        ):
            (tmp / name).write_text(json.dumps(payload), encoding="utf-8")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        files: dict[str, dict[str, Any]] = {
            p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())
        }
        created = art.created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        version = (
            art.model_version
            or f"{art.dataset}-{created.replace(':', '').replace('-', '')}-{files[WEIGHTS]['sha256'][:8]}"
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": "LD4MRec",
            "model_version": version,
            "dataset": art.dataset,
            "created_at": created,
            "n_users": art.n_users,
            "n_items": art.n_items,
            "modality_order": list(art.modality_names),
            "cnet": art.cnet_config.to_dict(),
            "diffusion": vars(art.diffusion).copy(),
            "hyperparameters": art.train_config,
            "metrics": art.metrics,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False), encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    art.model_version, art.created_at, art.path = version, created, out_dir
    return out_dir


# -- reading ------------------------------------------------------------------------------------------
def _load_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(root, "artifact directory not found")
    if not path.is_file():
        raise ArtifactError(path, "missing; this directory is not an LD4MRec artifact")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(path, "expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            path, f"format_version {version!r} is not supported (this build reads {FORMAT_VERSION})"
        )
    for key in (
        "model_version",
        "dataset",
        "n_users",
        "n_items",
        "modality_order",
        "cnet",
        "diffusion",
        "files",
    ):
        if key not in manifest:
            raise ArtifactError(path, f"missing key {key!r}")
    return manifest


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    required = {
        WEIGHTS,
        "user_ids.json",
        "item_ids.json",
        *(f"modality_{m}.npy" for m in manifest["modality_order"]),
    }
    for name in sorted(required - set(files)):
        raise ArtifactError(root / MANIFEST, f"file list lacks {name}")
    for name, meta in files.items():
        path = root / name
        if Path(name).name != name:
            raise ArtifactError(root / MANIFEST, f"file entry {name!r} is not a plain file name")
        if not path.is_file():
            raise ArtifactError(path, "missing (listed in manifest.json)")
        if _sha256(path) != meta.get("sha256"):
            raise ArtifactError(path, "sha256 checksum mismatch: the file is corrupt or was modified")


def _npy(root: Path, name: str, shape: tuple[int | None, ...], dtype: type) -> np.ndarray:
    path = root / name
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(path, f"unreadable .npy ({exc})") from None
    if array.ndim != len(shape) or any(
        s is not None and s != a for s, a in zip(shape, array.shape, strict=True)
    ):
        raise ArtifactError(path, f"shape {array.shape} does not match the expected {shape}")
    if not np.issubdtype(array.dtype, dtype):
        raise ArtifactError(path, f"dtype {array.dtype} is not {dtype.__name__}")
    return array


def _id_list(root: Path, name: str, n: int) -> tuple[str, ...]:
    path = root / name
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"not valid JSON ({exc})") from None
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(path, f"expected a JSON list of {n} strings")
    if len(set(ids)) != n:
        raise ArtifactError(path, "ids are not unique")
    return tuple(ids)


def read_artifact(path: str | Path) -> Artifact:
    """Load and verify an artifact directory (checksums, shapes, consistency)."""
    root = Path(path).resolve()
    manifest = _load_manifest(root)
    _verify_files(root, manifest)
    n_users, n_items = int(manifest["n_users"]), int(manifest["n_items"])
    try:
        cfg = CNetConfig.from_dict(manifest["cnet"])
        diffusion = DiffusionConfig(**manifest["diffusion"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(root / MANIFEST, f"invalid model configuration ({exc})") from None
    names = tuple(manifest["modality_order"])
    if cfg.n_items != n_items or len(cfg.modality_dims) != len(names):
        raise ArtifactError(root / MANIFEST, "cnet configuration does not match n_items / modality_order")
    d_svd = cfg.collab_dim // 2
    width = cfg.collab_dim + sum(cfg.modality_dims)
    f32 = np.floating
    z_in = _npy(root, "z_in.npy", (n_users, cfg.step_dim), f32)
    signals = _npy(root, "signals.npy", (n_users, width), f32)
    degree = _npy(root, "item_degree.npy", (n_items,), f32)
    factors = _npy(root, "item_factors.npy", (n_items, d_svd), f32)
    singular = _npy(root, "singular_values.npy", (d_svd,), f32)
    features = tuple(
        _npy(root, f"modality_{m}.npy", (n_items, dm), f32)
        for m, dm in zip(names, cfg.modality_dims, strict=True)
    )
    indptr = _npy(root, "history_indptr.npy", (n_users + 1,), np.integer)
    indices = _npy(root, "history_indices.npy", (None,), np.integer)
    if indptr[0] != 0 or indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0):
        raise ArtifactError(
            root / "history_indptr.npy", "row pointers are inconsistent with history_indices.npy"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ArtifactError(root / "history_indices.npy", f"item ids outside 0..{n_items - 1}")
    popularity = _npy(root, "item_popularity.npy", (n_items,), f32)
    histories = sp.csr_matrix(
        (np.ones(indices.shape[0], dtype=np.float32), indices, indptr), shape=(n_users, n_items)
    )
    try:
        weights = load_file(str(root / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(root / WEIGHTS, f"unreadable safetensors file ({exc})") from None
    log_path = root / "training_log.json"
    training_log = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else []
    art = Artifact(
        dataset=str(manifest["dataset"]),
        modality_names=names,
        cnet_config=cfg,
        diffusion=diffusion,
        weights=weights,
        z_in=z_in.astype(np.float32),
        signals=signals.astype(np.float32),
        basis=SignalBasis(
            degree.astype(np.float32), factors.astype(np.float32), singular.astype(np.float32), features
        ),
        train_histories=histories,
        item_popularity=popularity.astype(np.float32),
        user_ids=_id_list(root, "user_ids.json", n_users),
        item_ids=_id_list(root, "item_ids.json", n_items),
        metrics=manifest.get("metrics", {}),
        train_config=manifest.get("hyperparameters", {}),
        training_log=training_log,
        model_version=str(manifest["model_version"]),
        created_at=str(manifest.get("created_at", "")),
        path=root,
    )
    build_model(art)  # refuses weights that do not fit the configuration, naming the weights file
    return art


def build_model(art: Artifact, device: torch.device | str = "cpu") -> LD4MRec:
    """An :class:`LD4MRec` in eval mode on ``device`` with the artifact's weights."""
    model = LD4MRec(art.cnet_config, art.n_users, art.diffusion, art.basis.projection())
    try:
        model.cnet.load_state_dict(art.weights, strict=True)
    except RuntimeError as exc:
        where = art.path / WEIGHTS if art.path else Path(WEIGHTS)
        raise ArtifactError(where, f"weights do not match the configuration ({exc})") from None
    with torch.no_grad():
        model.z_in.weight.copy_(torch.from_numpy(art.z_in))
    return model.to(device).eval()
