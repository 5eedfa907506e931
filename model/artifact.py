"""The artifact directory: what the trainer writes and the service loads, for every registered model.

Nothing is pickled: arrays are ``.npy`` (read with ``allow_pickle=False``), everything else is JSON.
``manifest.json`` lists every other file with its sha256, size and (for arrays) shape and dtype. The
reader trusts nothing: it checks the manifest's types and ranges, the model's config, that the directory
holds exactly the listed files, every ``.npy`` header against the shape the model's config implies, and
every checksum, all before it allocates an array; then it builds the model. Every refusal is an
:class:`ArtifactError` naming the offending file.

Layout (``FORMAT_VERSION`` 2)::

    manifest.json               format, model {name, config, dims, fitted}, version, dataset, sizes,
                                modality order, training run, metrics, files
    model.<array>.npy           the model's arrays (``Recommender.arrays``), float32
    user_states.npy             (n_users, S) float32 states of the training users (absent when S = 0)
    history_indptr.npy          (n_users + 1,) int64 CSR row pointers of the training histories
    history_indices.npy         (nnz,) int64 item ids of the training histories
    user_ids.json / item_ids.json   external ids; position = internal id
    training_log.json           per-epoch losses, valid metrics and timing (optional)
    training_curve.png          loss and valid metric per epoch (optional)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from model.base import ConfigError, Recommender
from model.registry import get_model

__all__ = ["FORMAT_VERSION", "Artifact", "ArtifactError", "read_artifact", "write_artifact"]

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MODEL_PREFIX = "model."
STATES = "user_states.npy"
INDPTR = "history_indptr.npy"
INDICES = "history_indices.npy"
USER_IDS = "user_ids.json"
ITEM_IDS = "item_ids.json"
TRAINING_LOG = "training_log.json"
OPTIONAL_FILES = (TRAINING_LOG, "training_curve.png")
METRIC_KEYS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")

MAX_MANIFEST_BYTES = 16 << 20
MAX_USERS = 100_000_000
MAX_ITEMS = 100_000_000
MAX_STATE_DIM = 1 << 16
MAX_ID_BYTES = 1024  # longest external id (UTF-8)
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32), "int64": np.dtype(np.int64)}


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt or does not match itself; ``path`` names the offending file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Artifact:
    """A trained model with everything the service needs beside it.

    Attributes:
        model: the fitted model (on the device it was loaded to).
        train_histories: (n_users, n_items) binary float32 CSR of the training histories.
        user_states: (n_users, S) float32 states of the training users (``model.fold_in`` of them).
        training: how it was trained (run options, best epoch, timing), for the manifest.
    """

    model: Recommender
    dataset: str
    modality_names: tuple[str, ...]
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    train_histories: sp.csr_matrix
    user_states: np.ndarray
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
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

    @property
    def item_popularity(self) -> np.ndarray:
        """(n_items,) float32 training interactions per item."""
        return np.bincount(self.train_histories.indices, minlength=self.n_items).astype(np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing ------------------------------------------------------------------------------------------------
def _arrays_to_write(art: Artifact) -> dict[str, np.ndarray]:
    model = art.model
    arrays = model.arrays()
    expected = type(model).array_shapes(model.config, art.n_users, art.n_items, model.dims())
    if set(arrays) != set(expected):
        raise ValueError(
            f"{model.name}.arrays() keys differ from array_shapes(): {sorted(set(arrays) ^ set(expected))}"
        )
    files: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if tuple(array.shape) != expected[key]:
            raise ValueError(
                f"{model.name} array {key}: shape {array.shape}, array_shapes() says {expected[key]}"
            )
        files[f"{MODEL_PREFIX}{key}.npy"] = np.ascontiguousarray(array, dtype=np.float32)
    if art.user_states.shape != (art.n_users, model.state_dim):
        raise ValueError(f"user_states shape {art.user_states.shape} != ({art.n_users}, {model.state_dim})")
    if model.state_dim:
        files[STATES] = np.ascontiguousarray(art.user_states, dtype=np.float32)
    files[INDPTR] = art.train_histories.indptr.astype(np.int64)
    files[INDICES] = art.train_histories.indices.astype(np.int64)
    return files


def write_artifact(
    art: Artifact, out_dir: str | Path, extra_files: Mapping[str, bytes] | None = None
) -> Path:
    """Write ``art`` to ``out_dir`` atomically (a sibling temp dir, then rename); returns the path.

    ``extra_files`` (name -> bytes) may add the optional files (e.g. ``training_curve.png``). An existing
    *artifact* directory at ``out_dir`` is replaced; any other non-empty directory is refused.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ArtifactError(out_dir, "exists, is not empty and is not an artifact; refusing to overwrite it")
    for name in extra_files or {}:
        if name not in OPTIONAL_FILES:
            raise ValueError(f"{name} is not one of the optional artifact files {OPTIONAL_FILES}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files_meta: dict[str, dict[str, Any]] = {}
        for name, array in _arrays_to_write(art).items():
            np.save(tmp / name, array, allow_pickle=False)
            files_meta[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        texts = {USER_IDS: list(art.user_ids), ITEM_IDS: list(art.item_ids), TRAINING_LOG: art.training_log}
        for name, payload in texts.items():
            (tmp / name).write_text(json.dumps(payload), encoding="utf-8")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
            files_meta[p.name] = {"sha256": _sha256(p), "bytes": p.stat().st_size} | files_meta.get(
                p.name, {}
            )
        created = art.created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        content_hash = hashlib.sha256(
            "".join(
                f"{n}:{m['sha256']}" for n, m in sorted(files_meta.items()) if n.endswith(".npy")
            ).encode()
        ).hexdigest()
        stamp = created.replace(":", "").replace("-", "")
        version = art.model_version or f"{art.model.name}-{art.dataset}-{stamp}-{content_hash[:8]}"
        model = art.model
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": {
                "name": model.name,
                "config": model.config.to_dict(),
                "dims": model.dims(),
                "fitted": model.fitted(),
            },
            "model_version": version,
            "dataset": art.dataset,
            "created_at": created,
            "n_users": art.n_users,
            "n_items": art.n_items,
            "state_dim": model.state_dim,
            "modality_order": list(art.modality_names),
            "training": art.training,
            "metrics": art.metrics,
            "files": dict(sorted(files_meta.items())),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.chmod(tmp / MANIFEST, 0o644)
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


# -- reading ------------------------------------------------------------------------------------------------
def _load_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(root, "artifact directory not found")
    if not path.is_file():
        raise ArtifactError(path, "missing; this directory is not an artifact")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(path, f"larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(path, f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(path, "expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            path,
            f"format_version {json.dumps(version)[:20]} is not supported (this build reads {FORMAT_VERSION})",
        )
    expected_types: dict[str, type | tuple[type, ...]] = {
        "model": dict,
        "model_version": str,
        "dataset": str,
        "n_users": int,
        "n_items": int,
        "state_dim": int,
        "modality_order": list,
        "files": dict,
    }
    for key, kind in expected_types.items():
        value = manifest.get(key)
        if value is None:
            raise ArtifactError(path, f"missing key {key!r}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ArtifactError(path, f"{key!r} has the wrong type")
    for key, high in (("n_users", MAX_USERS), ("n_items", MAX_ITEMS), ("state_dim", MAX_STATE_DIM)):
        low = 0 if key == "state_dim" else 1
        if not low <= manifest[key] <= high:
            raise ArtifactError(path, f"{key} {manifest[key]} is outside {low}..{high}")
    if not all(isinstance(m, str) and 0 < len(m) <= 64 for m in manifest["modality_order"]):
        raise ArtifactError(path, "modality_order must be a list of short names")
    for key in ("model_version", "dataset"):
        if not 0 < len(manifest[key]) <= 256:
            raise ArtifactError(path, f"{key} must be 1..256 characters")
    return manifest


def _model_class_and_config(
    root: Path, manifest: dict[str, Any]
) -> tuple[type[Recommender], Any, dict[str, Any]]:
    path = root / MANIFEST
    spec = manifest["model"]
    name, config, dims = spec.get("name"), spec.get("config"), spec.get("dims", {})
    if not isinstance(name, str) or not isinstance(config, dict) or not isinstance(dims, dict):
        raise ArtifactError(path, "model must be an object with a name, a config object and a dims object")
    try:
        cls = get_model(name)
    except ConfigError as exc:
        raise ArtifactError(path, str(exc)) from None
    try:
        return cls, cls.config_class.from_dict(config), dims
    except ConfigError as exc:
        raise ArtifactError(path, f"invalid configuration of model {name}: {exc}") from None


def _expected_files(
    root: Path, manifest: dict[str, Any], cls: type[Recommender], config: Any, dims: dict[str, Any]
) -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """File name -> (dtype, shape; None = any length) of every array the artifact must hold."""
    n_users, n_items, state_dim = manifest["n_users"], manifest["n_items"], manifest["state_dim"]
    try:
        shapes = cls.array_shapes(config, n_users, n_items, dims)
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise ArtifactError(
            root / MANIFEST, f"model {cls.name}: dims do not fit the config ({exc})"
        ) from None
    expected: dict[str, tuple[str, tuple[int | None, ...]]] = {
        f"{MODEL_PREFIX}{key}.npy": ("float32", shape) for key, shape in shapes.items()
    }
    if state_dim:
        expected[STATES] = ("float32", (n_users, state_dim))
    expected[INDPTR] = ("int64", (n_users + 1,))
    expected[INDICES] = ("int64", (None,))
    return expected


def _check_listing(root: Path, manifest: dict[str, Any], required: set[str]) -> None:
    """The directory holds exactly the listed files, those are the expected ones, with the listed sizes."""
    files = manifest["files"]
    allowed = required | {USER_IDS, ITEM_IDS} | set(OPTIONAL_FILES)
    for name in sorted(files):
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise ArtifactError(root / MANIFEST, f"file entry {str(name)[:80]!r} is not a plain file name")
        if name not in allowed:
            raise ArtifactError(
                root / name, "listed in manifest.json but not a file of this model's artifact"
            )
        if not isinstance(files[name], dict):
            raise ArtifactError(root / MANIFEST, f"file entry {name} must be an object")
    for name in sorted((required | {USER_IDS, ITEM_IDS}) - set(files)):
        raise ArtifactError(root / name, "not listed in manifest.json (every file the loader reads must be)")
    for entry in sorted(root.iterdir()):
        if entry.name != MANIFEST and entry.name not in files:
            raise ArtifactError(entry, "not listed in manifest.json: an artifact holds only its listed files")
    for name in sorted(files):
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise ArtifactError(path, "missing or not a regular file (listed in manifest.json)")
        meta = files[name]
        if meta.get("bytes") != path.stat().st_size:
            raise ArtifactError(
                path, f"size {path.stat().st_size} bytes differs from the manifest's {meta.get('bytes')!r}"
            )


def _check_npy_header(path: Path, dtype: str, shape: tuple[int | None, ...], meta: Mapping[str, Any]) -> None:
    """Read only the ``.npy`` header: dtype, order and shape must be what the model implies."""
    try:
        with path.open("rb") as fh:
            major, _minor = np.lib.format.read_magic(fh)
            if major == 1:
                real_shape, fortran, real_dtype = np.lib.format.read_array_header_1_0(fh)
            elif major in (2, 3):
                real_shape, fortran, real_dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {major}")
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise ArtifactError(path, f"unreadable .npy header ({str(exc)[:200]})") from None
    if real_dtype != _DTYPES[dtype] or fortran:
        raise ArtifactError(path, f"dtype {real_dtype} (fortran order {fortran}) is not C-ordered {dtype}")
    if len(real_shape) != len(shape) or any(
        s is not None and s != r for s, r in zip(shape, real_shape, strict=True)
    ):
        shown = tuple("*" if s is None else s for s in shape)
        raise ArtifactError(path, f"shape {real_shape} does not match the expected {shown}")
    if list(real_shape) != meta.get("shape") or meta.get("dtype") != dtype:
        raise ArtifactError(path, "shape or dtype differs from its manifest entry")
    n_bytes = int(np.prod(real_shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
    if offset + n_bytes != path.stat().st_size:
        raise ArtifactError(
            path, f"holds {path.stat().st_size - offset} data bytes, its header says {n_bytes}"
        )


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise ArtifactError(path, f"unreadable .npy ({str(exc)[:200]})") from None


def _id_list(path: Path, n: int) -> tuple[str, ...]:
    if path.stat().st_size > n * (MAX_ID_BYTES * 6 + 4) + 2:
        raise ArtifactError(path, f"too large for {n} ids")
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(path, f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(path, f"expected a JSON list of {n} strings")
    if any(not 0 < len(i.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES for i in ids):
        raise ArtifactError(path, f"every id must be 1..{MAX_ID_BYTES} bytes")
    if len(set(ids)) != n:
        raise ArtifactError(path, "ids are not unique")
    return tuple(ids)


def _training_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(path, f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(log, list):
        raise ArtifactError(path, "expected a JSON list")
    return log


def read_artifact(path: str | Path, device: torch.device | str = "cpu", *, mmap: bool = False) -> Artifact:
    """Load and verify an artifact directory and build its model on ``device``.

    ``mmap=True`` maps the arrays read-only instead of reading them (processes that load the same artifact
    then share the pages; the model may still copy what it moves to another device or dtype).
    """
    root = Path(path).resolve()
    manifest = _load_manifest(root)
    cls, config, dims = _model_class_and_config(root, manifest)
    expected = _expected_files(root, manifest, cls, config, dims)
    _check_listing(root, manifest, set(expected))
    files = manifest["files"]
    for name, (dtype, shape) in expected.items():
        _check_npy_header(root / name, dtype, shape, files[name])
    for name in sorted(files):  # checksums last: they read every byte
        if _sha256(root / name) != files[name].get("sha256"):
            raise ArtifactError(root / name, "sha256 checksum mismatch: the file is corrupt or was modified")
    n_users, n_items = manifest["n_users"], manifest["n_items"]
    indptr = _load_npy(root / INDPTR, mmap=False)
    indices = _load_npy(root / INDICES, mmap=False)
    if indptr[0] != 0 or indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0):
        raise ArtifactError(root / INDPTR, f"row pointers are inconsistent with {INDICES}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ArtifactError(root / INDICES, f"item ids outside 0..{n_items - 1}")
    histories = sp.csr_matrix(
        (np.ones(indices.shape[0], dtype=np.float32), indices, indptr), shape=(n_users, n_items)
    )
    arrays: dict[str, np.ndarray] = {}
    for name in expected:
        if name.startswith(MODEL_PREFIX):
            array = _load_npy(root / name, mmap)
            if not np.isfinite(array).all():
                raise ArtifactError(root / name, "holds NaN or infinite values")
            arrays[name[len(MODEL_PREFIX) : -len(".npy")]] = array
    states = np.zeros((n_users, 0), dtype=np.float32)
    if manifest["state_dim"]:
        states = _load_npy(root / STATES, mmap)
        if not np.isfinite(states).all():
            raise ArtifactError(root / STATES, "holds NaN or infinite values")
    device = torch.device(device)
    try:
        model = cls.from_arrays(config, n_users, n_items, dims, arrays, device)
    except (ConfigError, ValueError, RuntimeError, KeyError) as exc:
        raise ArtifactError(
            root / MANIFEST, f"model {cls.name} does not match its arrays ({str(exc)[:300]})"
        ) from None
    fitted = manifest["model"].get("fitted", {})
    model.fitted_info = fitted if isinstance(fitted, dict) else {}
    if model.state_dim != manifest["state_dim"]:
        raise ArtifactError(
            root / MANIFEST, f"state_dim {manifest['state_dim']} but model {cls.name} has {model.state_dim}"
        )
    metrics = manifest.get("metrics", {})
    training = manifest.get("training", {})
    return Artifact(
        model=model,
        dataset=manifest["dataset"],
        modality_names=tuple(manifest["modality_order"]),
        user_ids=_id_list(root / USER_IDS, n_users),
        item_ids=_id_list(root / ITEM_IDS, n_items),
        train_histories=histories,
        user_states=np.asarray(states, dtype=np.float32),
        metrics=metrics if isinstance(metrics, dict) else {},
        training=training if isinstance(training, dict) else {},
        training_log=_training_log(root / TRAINING_LOG) if TRAINING_LOG in files else [],
        model_version=manifest["model_version"],
        created_at=str(manifest.get("created_at", ""))[:64],
        path=root,
    )
