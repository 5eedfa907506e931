"""``ld4mrec-convert``: a CSV/TSV interaction log or a RecBole ``.inter`` file -> a dataset in our layout.

Writes ``OUT/<name>.inter`` (integer ids, x_label split, the timestamp when there is one),
``OUT/user_ids.txt`` and ``OUT/item_ids.txt`` (line *i* = the external id of internal id *i*, in order of
first appearance in the log), one ``OUT/<modality>_feat.npy`` per ``--features`` source, and
``OUT/conversion.json`` (options and counts); then loads the result with the trainer's own loader as a
check and prints a summary. Steps, in order: read (:mod:`training.rawlog`), keep ratings >=
``--min-rating``, handle repeated (user, item) pairs (``--duplicates``), number users and items, split
(:mod:`training.split`), align item features (:mod:`training.item_features`). Nothing is written unless
every step succeeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training import item_features
from training.dataset import DatasetError, load_dataset
from training.idmap import ITEM_IDS_FILE, USER_IDS_FILE, IdFileError, write_id_file
from training.rawlog import FORMATS, LogError, RawLog, read_log
from training.split import leave_out_labels, min_interactions, random_order

__all__ = ["ConvertError", "ConvertOptions", "Conversion", "build_parser", "convert", "main"]

log = logging.getLogger("ld4mrec.convert")

SPLITS = ("auto", "time", "random")
DUPLICATES = ("error", "first", "last")
REPORT_FILE = "conversion.json"
_OWN_FILES = ("*.inter", "*_feat.npy", USER_IDS_FILE, ITEM_IDS_FILE, REPORT_FILE)


class ConvertError(ValueError):
    """The options or the data cannot make a dataset; the message says why."""


@dataclass(frozen=True)
class ConvertOptions:
    """Everything a conversion depends on (the CLI's flags; defaults are the CLI's defaults)."""

    input: Path
    out: Path
    name: str | None = None
    format: str = "auto"
    sep: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    min_rating: float | None = None
    split: str = "auto"
    n_valid: int = 1
    n_test: int = 1
    seed: int = 0
    duplicates: str = "error"
    features: tuple[str, ...] = ()
    drop_unknown_feature_items: bool = False
    force: bool = False


@dataclass
class Conversion:
    """What a conversion read, kept and wrote (printed, and saved as ``conversion.json``)."""

    source: str
    format: str
    columns: dict[str, str]
    rows_read: int
    below_min_rating: int
    duplicates_dropped: int
    n_users: int
    n_items: int
    n_interactions: int
    split: str
    split_sizes: dict[str, int]
    users_train_only: int
    items_without_train: int
    features: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    out: str = ""
    files: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        cols = ", ".join(f"{role}={name!r}" for role, name in self.columns.items())
        dropped = []
        if self.below_min_rating:
            dropped.append(f"{self.below_min_rating:,} below --min-rating")
        if self.duplicates_dropped:
            dropped.append(f"{self.duplicates_dropped:,} repeated (user, item) pairs")
        lines = [
            f"source      {self.source} ({self.format}; {cols})",
            f"rows        {self.rows_read:,} read, {self.n_interactions:,} interactions kept"
            + (f" (dropped: {', '.join(dropped)})" if dropped else ""),
            f"users       {self.n_users:,} ({self.users_train_only:,} with fewer than "
            f"{min_interactions(self.options['n_valid'], self.options['n_test'])} interactions: train only)",
            f"items       {self.n_items:,} ({self.items_without_train:,} never in train)",
            f"split       {self.split}: train {self.split_sizes['train']:,}, valid "
            f"{self.split_sizes['valid']:,}, test {self.split_sizes['test']:,}",
        ]
        for feat in self.features:
            lines.append(
                f"features    {feat['modality']}: {feat['dims']} dims, "
                f"{self.n_items - feat['items_without']:,} of {self.n_items:,} items; "
                f"{feat['items_without']:,} items without features (zero rows)"
                + (f"; {feat['unknown_dropped']:,} unknown items dropped" if feat["unknown_dropped"] else "")
            )
        if not self.features:
            lines.append("features    none (collaborative signals only)")
        lines.append(f"wrote       {self.out}/ {', '.join(self.files)}")
        return lines


def _check_options(opts: ConvertOptions) -> str:
    """Validate the options that need no data; returns the dataset name."""
    if opts.format not in FORMATS:
        raise ConvertError(f"--format must be one of {', '.join(FORMATS)}")
    if opts.split not in SPLITS:
        raise ConvertError(f"--split must be one of {', '.join(SPLITS)}")
    if opts.duplicates not in DUPLICATES:
        raise ConvertError(f"--duplicates must be one of {', '.join(DUPLICATES)}")
    if opts.n_valid < 1 or opts.n_test < 1:
        raise ConvertError("--n-valid and --n-test must be >= 1 (the trainer needs both splits)")
    if opts.sep is not None and len(opts.sep) != 1:
        raise ConvertError(f"--sep must be one character, got {opts.sep!r}")
    name = opts.name or opts.out.resolve().name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ConvertError(f"dataset name {name!r} is not a plain file name (set --name)")
    if not opts.input.is_file():
        raise ConvertError(f"{opts.input}: input file not found")
    if opts.out.exists() and not opts.out.is_dir():
        raise ConvertError(f"{opts.out}: exists and is not a directory")
    if opts.out.is_dir() and not opts.force:
        existing = sorted(p.name for pattern in _OWN_FILES for p in opts.out.glob(pattern))
        if existing:
            raise ConvertError(
                f"{opts.out}: already holds a dataset ({', '.join(existing[:4])}); pass --force to replace it"
            )
    return name


def _keep_one_per_pair(raw: RawLog, keep: np.ndarray, policy: str) -> tuple[np.ndarray, int]:
    """Rows to keep (indices into ``raw``, file order) with one row per (user, item) pair."""
    rows = np.nonzero(keep)[0]
    order = rows if raw.times is None else rows[np.lexsort((rows, raw.times[rows]))]
    if policy == "last":
        order = order[::-1]
    first_row: dict[tuple[str, str], int] = {}
    for row in order.tolist():
        pair = (raw.users[row], raw.items[row])
        seen = first_row.get(pair)
        if seen is None:
            first_row[pair] = row
        elif policy == "error":
            earlier, later = sorted((seen, row))
            raise ConvertError(
                f"{raw.path}: line {raw.lines[later]}: duplicate interaction of user {pair[0][:40]!r} "
                f"with item {pair[1][:40]!r} (first on line {raw.lines[earlier]}); pass --duplicates first "
                "or last to keep one of them"
            )
    kept = np.sort(np.fromiter(first_row.values(), dtype=np.int64, count=len(first_row)))
    return kept, len(rows) - len(kept)


def _number(values: list[str], rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Internal ids (in order of first appearance among ``rows``) of ``values[rows]`` -> (ids, id list)."""
    index: dict[str, int] = {}
    ids = np.empty(len(rows), dtype=np.int64)
    for position, row in enumerate(rows.tolist()):
        ids[position] = index.setdefault(values[row], len(index))
    return ids, list(index)


def _id_warnings(user_ids: list[str], item_ids: list[str]) -> list[str]:
    warnings = []
    slashed = [u for u in user_ids if "/" in u]
    if slashed:
        warnings.append(
            f"{len(slashed)} user id(s) contain '/' (e.g. {slashed[0][:40]!r}): GET /recommend/{{user_id}} "
            "cannot address them; POST /recommend/batch can"
        )
    commas = [i for i in item_ids if "," in i]
    if commas:
        warnings.append(
            f"{len(commas)} item id(s) contain ',' (e.g. {commas[0][:40]!r}): the ?exclude= and ?candidates= "
            "query lists split on commas; pass such ids in a POST body"
        )
    return warnings


def _format_time(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _write(
    out: Path,
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    times: np.ndarray | None,
    user_ids: list[str],
    item_ids: list[str],
    features: list[item_features.AlignedFeatures],
) -> list[str]:
    """Write the dataset files into ``out`` (replacing a previous conversion's files); returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _OWN_FILES:
        for old in out.glob(pattern):
            old.unlink()
    header = "userID\titemID\tx_label" + ("\ttimestamp" if times is not None else "")
    lines = [header]
    for row in np.lexsort((np.arange(len(users)), users)).tolist():  # by user, then log order
        line = f"{users[row]}\t{items[row]}\t{labels[row]}"
        lines.append(line + (f"\t{_format_time(float(times[row]))}" if times is not None else ""))
    inter = out / f"{name}.inter"
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_id_file(out / USER_IDS_FILE, user_ids)
    write_id_file(out / ITEM_IDS_FILE, item_ids)
    files = [inter.name, USER_IDS_FILE, ITEM_IDS_FILE]
    for feat in features:
        path = out / f"{feat.modality}_feat.npy"
        np.save(path, feat.matrix, allow_pickle=False)
        files.append(path.name)
    return files


def convert(opts: ConvertOptions) -> Conversion:
    """Run a conversion (see the module docstring); raises ConvertError / LogError / FeatureError."""
    name = _check_options(opts)
    sources = [item_features.parse_source(text) for text in opts.features]
    modalities = [s.modality for s in sources]
    if len(set(modalities)) != len(modalities):
        raise ConvertError(f"--features: a modality is given twice ({', '.join(modalities)})")

    raw = read_log(
        opts.input,
        fmt=opts.format,
        sep=opts.sep,
        columns={
            "user": opts.user_col,
            "item": opts.item_col,
            "time": opts.time_col,
            "rating": opts.rating_col,
        },
        want_time=opts.split != "random",
        want_rating=opts.min_rating is not None,
    )
    if opts.split == "time" and raw.times is None:
        raise ConvertError(
            f"{opts.input}: --split time needs a time column (none found; name it with --time-col)"
        )
    keep = np.ones(len(raw), dtype=bool)
    if raw.ratings is not None and opts.min_rating is not None:
        keep = raw.ratings >= opts.min_rating
        if not keep.any():
            raise ConvertError(f"{opts.input}: no row has a rating >= --min-rating {opts.min_rating}")
    below = int((~keep).sum())
    rows, duplicates = _keep_one_per_pair(raw, keep, opts.duplicates)
    users, user_ids = _number(raw.users, rows)
    items, item_ids = _number(raw.items, rows)

    chronological = raw.times is not None
    order = raw.times[rows] if raw.times is not None else random_order(len(rows), opts.seed)
    labels = leave_out_labels(users, order, opts.n_valid, opts.n_test)
    counts = np.bincount(users)
    needed = min_interactions(opts.n_valid, opts.n_test)
    if not (counts >= needed).any():
        raise ConvertError(
            f"{opts.input}: no user has the {needed} interactions that holding out {opts.n_valid} valid and "
            f"{opts.n_test} test interaction(s) needs; valid and test would be empty"
        )
    in_train = np.zeros(len(item_ids), dtype=bool)
    in_train[items[labels == 0]] = True

    item_index = {item: i for i, item in enumerate(item_ids)}
    aligned = [
        item_features.align(item_features.read(s), item_index, drop_unknown=opts.drop_unknown_feature_items)
        for s in sources
    ]
    kind = "chronological" if chronological else f"random (seed {opts.seed})"
    report = Conversion(
        source=str(opts.input),
        format=raw.format,
        columns=raw.columns,
        rows_read=len(raw),
        below_min_rating=below,
        duplicates_dropped=duplicates,
        n_users=len(user_ids),
        n_items=len(item_ids),
        n_interactions=len(rows),
        split=f"{kind} leave-out, per user: last {opts.n_test} to test, the {opts.n_valid} before to valid",
        split_sizes={s: int((labels == label).sum()) for label, s in enumerate(("train", "valid", "test"))},
        users_train_only=int((counts < needed).sum()),
        items_without_train=int((~in_train).sum()),
        features=[
            {
                "modality": a.modality,
                "dims": int(a.matrix.shape[1]),
                "items_without": a.n_missing,
                "unknown_dropped": a.n_unknown,
            }
            for a in aligned
        ],  # fmt: skip
        warnings=_id_warnings(user_ids, item_ids),
        out=str(opts.out),
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    )
    times = raw.times[rows] if raw.times is not None else None
    report.files = _write(opts.out, name, users, items, labels, times, user_ids, item_ids, aligned)
    report.files.append(REPORT_FILE)
    (opts.out / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    load_dataset(opts.out)  # the trainer's loader accepts what was written
    return report


def build_parser() -> argparse.ArgumentParser:
    d = ConvertOptions(input=Path(), out=Path())
    parser = argparse.ArgumentParser(
        prog="ld4mrec-convert",
        description="Convert an interaction log (CSV/TSV with a header, or a RecBole .inter file) and "
        "optional item features into a dataset directory for ld4mrec-train, keeping your own user and "
        "item ids.",
        epilog="Example: ld4mrec-convert --input clicks.csv --out data/clicks --features "
        "text=item_text.csv   (README: 'Your own data in three commands')",
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument(
        "--input", required=True, type=Path, help="the interaction log (CSV, TSV or .inter)"
    )
    io_group.add_argument(
        "--out", required=True, type=Path, help="dataset directory to write (created; see --force)"
    )
    io_group.add_argument(
        "--name", default=d.name, help="dataset name, OUT/<name>.inter (default: OUT's name)"
    )
    io_group.add_argument(
        "--format",
        choices=FORMATS,
        default=d.format,
        help="auto: .inter or a NAME:TYPE header = RecBole; .tsv or a tab in the header = TSV; else CSV",
    )
    io_group.add_argument(
        "--sep", default=d.sep, help="CSV field separator (default: ',' or ';' from the header)"
    )
    io_group.add_argument(
        "--force", action="store_true", help="replace the dataset files of a previous conversion in OUT"
    )
    cols = parser.add_argument_group(
        "columns (found by name when not given: e.g. user/user_id, item/item_id/song_id, "
        "timestamp/time/date, rating/score)"
    )
    cols.add_argument("--user-col", default=d.user_col, help="header name of the user id column")
    cols.add_argument("--item-col", default=d.item_col, help="header name of the item id column")
    cols.add_argument(
        "--time-col", default=d.time_col, help="header name of the timestamp column (numbers or ISO 8601)"
    )
    cols.add_argument("--rating-col", default=d.rating_col, help="header name of the rating column")
    rows = parser.add_argument_group("rows")
    rows.add_argument(
        "--min-rating",
        type=float,
        default=d.min_rating,
        help="keep only rows with rating >= this (default: keep every row; the rating column is then unused)",
    )
    rows.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        default=d.duplicates,
        help="a repeated (user, item) pair: error, or keep the first / last (by timestamp, else by line)",
    )
    split = parser.add_argument_group(
        "split (per user; users with fewer than n-valid + n-test + 1 stay in train)"
    )
    split.add_argument(
        "--split",
        choices=SPLITS,
        default=d.split,
        help="time: chronological; random: seeded random order; auto: time when there is a time column",
    )
    split.add_argument("--n-valid", type=int, default=d.n_valid, help="interactions per user for valid")
    split.add_argument(
        "--n-test", type=int, default=d.n_test, help="interactions per user for test (the last)"
    )
    split.add_argument("--seed", type=int, default=d.seed, help="seed of the random split")
    feats = parser.add_argument_group("item features (optional, keyed by your item ids)")
    feats.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="one modality: NAME=FILE.npy:IDS.txt, NAME=FILE.npz (arrays ids, features) or NAME=FILE.csv "
        "(header; item id first, then numbers); repeat for more; items without features get zero rows",
    )
    feats.add_argument(
        "--drop-unknown-feature-items",
        action="store_true",
        help="ignore feature rows of items that are not in the interactions (default: an error)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ld4mrec-convert: warning: %(message)s")
    opts = ConvertOptions(
        **{k: v for k, v in vars(args).items() if k != "features"}, features=tuple(args.features)
    )
    try:
        report = convert(opts)
    except (ConvertError, LogError, item_features.FeatureError, IdFileError, DatasetError) as exc:
        print(f"ld4mrec-convert: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ld4mrec-convert: error: {exc}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"ld4mrec-convert: warning: {warning}", file=sys.stderr)
    print("\n".join(report.summary_lines()))
    print(f"next        ld4mrec-train --data {opts.out} --out artifacts/{opts.out.resolve().name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
