"""Loading and validation of a dataset in the MMRec layout.

``DIR/<name>.inter``: tab-separated, header with at least ``userID``, ``itemID``, ``x_label``
(0-based integer ids; x_label 0 = train, 1 = valid, 2 = test). ``DIR/<modality>_feat.npy``: one float
row per item id, one file per modality. Optional ``DIR/user_ids.txt`` and ``DIR/item_ids.txt`` (written by
``ld4mrec-convert``, format in :mod:`training.idmap`) give the external ids; without them the external id of
internal id *i* is ``str(i)``. Every problem raises :class:`DatasetError` naming the file and, where there
is one, the line or row. The valid and test splits must each have at least one evaluable user (one
training and one held-out interaction): an empty one is refused, since neither epoch selection nor the
reported metrics could be computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from training.evaluate import DEFAULT_KS, evaluable_users
from training.idmap import ITEM_IDS_FILE, USER_IDS_FILE, IdFileError, read_id_file

__all__ = ["DatasetError", "InteractionData", "load_dataset", "find_inter_file"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
SPLITS = {0: "train", 1: "valid", 2: "test"}
FEATURE_SUFFIX = "_feat.npy"


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line/row)."""


@dataclass(frozen=True)
class InteractionData:
    """A loaded dataset. Matrices are (n_users, n_items) binary float32 CSR.

    Attributes:
        modality_names: modality order, e.g. ("audio", "text"); features follow the same order.
        modality_features: one (n_items, d_m) float32 matrix per modality.
        user_ids / item_ids: external ids (strings); index = internal id.
    """

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    modality_names: tuple[str, ...]
    modality_features: tuple[np.ndarray, ...]
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    def summary(self) -> str:
        mods = ", ".join(
            f"{n} {f.shape[1]}" for n, f in zip(self.modality_names, self.modality_features, strict=True)
        )
        return (
            f"{self.name}: {self.n_users} users, {self.n_items} items, interactions train/valid/test "
            f"{self.train.nnz}/{self.valid.nnz}/{self.test.nnz}; modalities: {mods or 'none'}"
        )


def find_inter_file(directory: Path) -> Path:
    """``DIR/<DIR name>.inter``, else the only ``*.inter`` in DIR."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: dataset directory not found")
    preferred = directory / f"{directory.name}.inter"
    if preferred.is_file():
        return preferred
    candidates = sorted(directory.glob("*.inter"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(f"{directory}: no <name>.inter interaction file found")
    raise DatasetError(
        f"{directory}: several .inter files ({', '.join(c.name for c in candidates)}); "
        f"expected {preferred.name}"
    )


def _parse_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> user ids, item ids, split labels (int64), validated line by line."""
    with path.open("r", encoding="utf-8") as fh:
        header_line = fh.readline()
        if not header_line.strip():
            raise DatasetError(
                f"{path}: line 1: empty file or missing header (expected {' '.join(REQUIRED_COLUMNS)})"
            )
        header = header_line.rstrip("\r\n").split("\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: line 1: header {header!r} lacks column(s) {', '.join(missing)} "
                f"(expected tab-separated {' '.join(REQUIRED_COLUMNS)})"
            )
        cols = [header.index(c) for c in REQUIRED_COLUMNS]
        width = len(header)
        rows: list[tuple[int, int, int]] = []
        for line_no, line in enumerate(fh, start=2):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != width:
                raise DatasetError(
                    f"{path}: line {line_no}: expected {width} tab-separated fields, got {len(fields)}"
                )
            values = []
            for name, c in zip(REQUIRED_COLUMNS, cols, strict=True):
                raw = fields[c].strip()
                try:
                    v = int(raw)
                except ValueError:
                    raise DatasetError(f"{path}: line {line_no}: {name} {raw!r} is not an integer") from None
                if v < 0:
                    raise DatasetError(f"{path}: line {line_no}: {name} {v} is negative")
                values.append(v)
            if values[2] not in SPLITS:
                raise DatasetError(
                    f"{path}: line {line_no}: x_label {values[2]} is not 0 (train), 1 (valid) or 2 (test)"
                )
            rows.append((values[0], values[1], values[2]))
    if not rows:
        raise DatasetError(f"{path}: no interactions after the header")
    arr = np.asarray(rows, dtype=np.int64)
    users, items, labels = arr[:, 0], arr[:, 1], arr[:, 2]
    _check_duplicates(path, users, items)
    return users, items, labels


def _check_duplicates(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    key = users * (int(items.max()) + 1) + items
    order = np.argsort(key, kind="stable")
    dup = np.nonzero(key[order][1:] == key[order][:-1])[0]
    if dup.size:
        first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise DatasetError(
            f"{path}: line {second + 2}: duplicate pair userID {users[second]} itemID {items[second]} "
            f"(first seen on line {first + 2})"
        )


def _load_features(path: Path, n_items: int) -> np.ndarray:
    try:
        feats = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if feats.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D (items x dims) array, got shape {feats.shape}")
    if not np.issubdtype(feats.dtype, np.number):
        raise DatasetError(f"{path}: expected numeric features, got dtype {feats.dtype}")
    if feats.shape[0] != n_items:
        raise DatasetError(f"{path}: {feats.shape[0]} feature rows but the interactions have {n_items} items")
    feats = feats.astype(np.float32)
    bad = ~np.isfinite(feats)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise DatasetError(f"{path}: row {row} (item {row}) has NaN or infinite values")
    return feats


def _split_matrix(
    users: np.ndarray, items: np.ndarray, mask: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    data = np.ones(int(mask.sum()), dtype=np.float32)
    m = sp.csr_matrix((data, (users[mask], items[mask])), shape=shape, dtype=np.float32)
    m.sort_indices()
    return m


def _external_ids(path: Path, n: int) -> tuple[str, ...]:
    """The ids in ``path`` when it exists (validated: ``n`` unique ids), else ``"0" .. str(n - 1)``."""
    if not path.is_file():
        return tuple(str(i) for i in range(n))
    try:
        return read_id_file(path, n)
    except IdFileError as exc:
        raise DatasetError(str(exc)) from None


def _check_evaluable(inter: Path, data: InteractionData) -> None:
    """Refuse a valid or test split without evaluable users; warn about cut-offs beyond the catalogue."""
    for label, split in ((1, data.valid), (2, data.test)):
        if len(evaluable_users(data.train, split)) == 0:
            name = SPLITS[label]
            detail = (
                f"no interactions with x_label {label}"
                if split.nnz == 0
                else f"its {split.nnz} interaction(s) belong to users without training interactions"
            )
            raise DatasetError(
                f"{inter}: the {name} split is empty ({detail}); every evaluation needs users with at least "
                f"one train and one {name} interaction (ld4mrec-convert makes such splits)"
            )
    beyond = [k for k in DEFAULT_KS if k >= data.n_items]
    if beyond:
        log.warning(
            "%s: the catalogue has %d items, not more than the metric cut-off(s) %s: those rank the whole "
            "catalogue, so recall@K is 1.0 for any model there%s (README: Small catalogues)",
            inter,
            data.n_items,
            ", ".join(map(str, beyond)),
            "; valid recall@20 cannot choose the epoch" if 20 in beyond else "",
        )


def load_dataset(directory: str | Path, modalities: list[str] | None = None) -> InteractionData:
    """Load and validate ``DIR``; ``modalities`` picks and orders feature files (default: all, sorted)."""
    directory = Path(directory)
    inter = find_inter_file(directory)
    users, items, labels = _parse_inter(inter)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    train_mask = labels == 0
    if not train_mask.any():
        raise DatasetError(f"{inter}: the train split (x_label 0) is empty")

    available = {p.name[: -len(FEATURE_SUFFIX)]: p for p in directory.glob(f"*{FEATURE_SUFFIX}")}
    if modalities is None:
        names = sorted(available)
    else:
        unknown = [m for m in modalities if m not in available]
        if unknown:
            raise DatasetError(
                f"{directory}: no feature file for modality {', '.join(unknown)} "
                f"(expected {', '.join(m + FEATURE_SUFFIX for m in unknown)}; "
                f"found: {sorted(available) or 'none'})"
            )
        names = list(modalities)
    features = tuple(_load_features(available[n], n_items) for n in names)

    shape = (n_users, n_items)
    data = InteractionData(
        name=directory.name,
        train=_split_matrix(users, items, train_mask, shape),
        valid=_split_matrix(users, items, labels == 1, shape),
        test=_split_matrix(users, items, labels == 2, shape),
        modality_names=tuple(names),
        modality_features=features,
        user_ids=_external_ids(directory / USER_IDS_FILE, n_users),
        item_ids=_external_ids(directory / ITEM_IDS_FILE, n_items),
    )
    _check_evaluable(inter, data)
    log.info("loaded %s from %s", data.summary(), directory)
    return data
