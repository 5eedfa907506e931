"""Per-item feature files keyed by the user's own item ids, aligned to a dataset's internal item ids.

``--features NAME=SOURCE`` (one per modality; NAME becomes ``<NAME>_feat.npy``), SOURCE one of:

* ``FILE.npy:IDS.txt``: a 2-D numeric array (rows x dims) and a text file with one item id per line,
  line *i* = row *i*;
* ``FILE.npz``: arrays ``ids`` (1-D strings) and ``features`` (2-D numeric), row *i* = ``ids[i]``;
* ``FILE.csv`` / ``FILE.tsv``: a header row, the item id in the first column and one number per other
  column.

Ids are stripped of surrounding whitespace, as in the interaction log. Every problem raises
:class:`FeatureError` naming the file and the line (or row).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AlignedFeatures",
    "FeatureError",
    "FeatureSource",
    "ItemFeatures",
    "align",
    "parse_source",
    "read",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
FORMS = "NAME=FILE.npy:IDS.txt, NAME=FILE.npz (arrays ids, features) or NAME=FILE.csv / FILE.tsv"


class FeatureError(ValueError):
    """A feature file is malformed or does not fit the interactions; the message names the file."""


@dataclass(frozen=True)
class FeatureSource:
    """Where the features of one modality come from (``ids`` only for the .npy form)."""

    modality: str
    path: Path
    ids: Path | None = None


@dataclass(frozen=True)
class ItemFeatures:
    """Features as read: ``matrix`` (n, d) float32, row i = item ``ids[i]``; ``where(i)`` locates row i."""

    source: FeatureSource
    ids: tuple[str, ...]
    matrix: np.ndarray
    lines: tuple[int, ...] | None = None  # the line of each row (table form)

    def where(self, row: int) -> str:
        if self.lines is not None:
            return f"{self.source.path}: line {self.lines[row]}"
        if self.source.ids is not None:
            return f"{self.source.ids}: line {row + 1}"
        return f"{self.source.path}: ids[{row}]"


@dataclass(frozen=True)
class AlignedFeatures:
    """(n_items, d) float32 in internal item order; items without features are zero rows."""

    modality: str
    matrix: np.ndarray
    n_missing: int
    n_unknown: int


def parse_source(text: str) -> FeatureSource:
    """``NAME=...`` (see the module docstring) -> a :class:`FeatureSource`; nothing is read yet."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not spec:
        raise FeatureError(f"--features {text!r}: expected {FORMS}")
    if not _NAME.match(name) or name.endswith("_feat"):
        raise FeatureError(
            f"--features {text!r}: modality name {name!r} must be 1-64 letters, digits, '_' or '-'"
        )
    marker = spec.rfind(".npy:")
    if marker >= 0:
        return FeatureSource(name, Path(spec[: marker + 4]), Path(spec[marker + 5 :]))
    path = Path(spec)
    if path.suffix == ".npz" or path.suffix in _TABLE_SUFFIXES:
        return FeatureSource(name, path)
    if path.suffix == ".npy":
        raise FeatureError(f"--features {text!r}: a .npy file needs its ids file: {name}=FILE.npy:IDS.txt")
    raise FeatureError(f"--features {text!r}: unknown file type; expected {FORMS}")


def _numeric_matrix(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] == 0:
        raise FeatureError(f"{path}: expected a 2-D (items x dims) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise FeatureError(f"{path}: expected numeric features, got dtype {array.dtype}")
    return array.astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FeatureError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise FeatureError(f"{path}: cannot read ({exc})") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FeatureError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FeatureError(f"{path}: line {line}: not UTF-8 text (byte {exc.start})") from None


def _read_npy_with_ids(source: FeatureSource) -> ItemFeatures:
    assert source.ids is not None
    matrix = _numeric_matrix(source.path, _load_npy(source.path))
    lines = _read_text(source.ids).split("\n")
    if lines and lines[-1].strip() == "":
        lines.pop()
    ids = tuple(line.strip() for line in lines)
    if len(ids) != matrix.shape[0]:
        raise FeatureError(
            f"{source.ids}: {len(ids)} ids, but {source.path} has {matrix.shape[0]} rows (one id per row)"
        )
    return ItemFeatures(source, ids, matrix)


def _read_npz(source: FeatureSource) -> ItemFeatures:
    try:
        with np.load(source.path, allow_pickle=False) as archive:
            missing = {"ids", "features"} - set(archive.files)
            if missing:
                raise FeatureError(
                    f"{source.path}: no array {', '.join(sorted(missing))} (has {', '.join(archive.files)})"
                )
            ids, features = archive["ids"], archive["features"]
    except ValueError as exc:
        raise FeatureError(f"{source.path}: not a plain .npz archive ({exc})") from None
    except OSError as exc:
        raise FeatureError(f"{source.path}: cannot read ({exc})") from None
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise FeatureError(
            f"{source.path}: 'ids' must be a 1-D array of strings (numpy dtype str), got {ids.dtype} "
            f"with shape {ids.shape}"
        )
    matrix = _numeric_matrix(source.path, features)
    if ids.shape[0] != matrix.shape[0]:
        raise FeatureError(f"{source.path}: {ids.shape[0]} ids but {matrix.shape[0]} feature rows")
    return ItemFeatures(source, tuple(str(i).strip() for i in ids), matrix)


def _read_table(source: FeatureSource) -> ItemFeatures:
    path = source.path
    reader = csv.reader(
        io.StringIO(_read_text(path), newline=""), delimiter=_TABLE_SUFFIXES[path.suffix], strict=True
    )
    ids: list[str] = []
    rows: list[list[float]] = []
    lines: list[int] = []
    try:
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise FeatureError(f"{path}: line 1: expected a header: the item id column, then feature columns")
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise FeatureError(f"{path}: line {line}: expected {len(header)} fields, got {len(row)}")
            values = []
            for name, raw in zip(header[1:], row[1:], strict=True):
                try:
                    value = float(raw)
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise FeatureError(
                        f"{path}: line {line}: column {name.strip()!r}: {raw.strip()[:40]!r} is not a finite "
                        "number"
                    )
                values.append(value)
            ids.append(row[0].strip())
            rows.append(values)
            lines.append(line)
    except csv.Error as exc:
        raise FeatureError(f"{path}: line {reader.line_num}: {exc}") from None
    if not rows:
        raise FeatureError(f"{path}: no rows after the header")
    return ItemFeatures(source, tuple(ids), np.asarray(rows, dtype=np.float32), tuple(lines))


def read(source: FeatureSource) -> ItemFeatures:
    """Read and check one source: finite values, non-empty unique ids."""
    if source.ids is not None:
        features = _read_npy_with_ids(source)
    elif source.path.suffix == ".npz":
        features = _read_npz(source)
    else:
        features = _read_table(source)
    first: dict[str, int] = {}
    for row, item in enumerate(features.ids):
        if not item:
            raise FeatureError(f"{features.where(row)}: empty item id")
        if item in first:
            raise FeatureError(
                f"{features.where(row)}: duplicate item id {item[:40]!r} "
                f"(first at {features.where(first[item])})"
            )
        first[item] = row
    bad = ~np.isfinite(features.matrix).all(axis=1)
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise FeatureError(
            f"{features.where(row)}: item {features.ids[row][:40]!r} has NaN or infinite values"
        )
    return features


def align(
    features: ItemFeatures, item_index: dict[str, int], *, drop_unknown: bool = False
) -> AlignedFeatures:
    """Rows in internal item order (``item_index``: external -> internal id); missing items get zeros.

    Feature rows of items that are not in the interactions are an error unless ``drop_unknown``.
    """
    n_items = len(item_index)
    matrix = np.zeros((n_items, features.matrix.shape[1]), dtype=np.float32)
    has = np.zeros(n_items, dtype=bool)
    unknown = [row for row, item in enumerate(features.ids) if item not in item_index]
    if unknown and not drop_unknown:
        row = unknown[0]
        raise FeatureError(
            f"{features.where(row)}: item {features.ids[row][:40]!r} is not in the interactions "
            f"({len(unknown)} of {len(features.ids)} feature rows are not; --drop-unknown-feature-items "
            "ignores them)"
        )
    for row, item in enumerate(features.ids):
        index = item_index.get(item)
        if index is not None:
            matrix[index] = features.matrix[row]
            has[index] = True
    if not has.any():
        raise FeatureError(
            f"{features.source.path}: none of its {len(features.ids)} items is in the interactions"
        )
    return AlignedFeatures(features.source.modality, matrix, int(n_items - has.sum()), len(unknown))
