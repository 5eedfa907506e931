"""``ld4mrec-eval``: the valid and test metrics of any model's artifact on a dataset in our layout, under the
all-ranking protocol (rules in :mod:`training.artifact_eval`), as a table or one JSON object."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from model.artifact import METRIC_KEYS, Artifact, ArtifactError, read_artifact
from training.artifact_eval import SPLITS, ArtifactEvaluation, DatasetMismatch, evaluate_artifact
from training.cli import DEMO, load_data
from training.dataset import DatasetError, InteractionData

__all__ = ["build_parser", "main"]

PROG = "ld4mrec-eval"
PROTOCOL = "all-ranking: every item ranked, the user's training items masked"
_ORDER = tuple(sorted(METRIC_KEYS, key=lambda k: (k.split("@")[0] != "recall", int(k.split("@")[1]))))


class _Refused(Exception):
    """A one-line reason to stop with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Recall and NDCG @10/20/50 of a trained artifact (any model) on a dataset in the MMRec "
        "layout, under the all-ranking protocol. The dataset must have the artifact's user and item ids, in "
        "the same order; on the dataset it was trained on, the manifest's metrics are reproduced exactly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--artifact", required=True, help="artifact directory (ld4mrec-train --out)")
    parser.add_argument(
        "--data", required=True, help=f"dataset directory (<name>.inter, optional id files) or '{DEMO}'"
    )
    parser.add_argument(
        "--split", choices=(*SPLITS, "both"), default="both", help="which split(s) to evaluate"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="users per scoring batch (default: the eval_batch_size the artifact was trained with)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to score on: cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of torch; 0 = torch's default")
    return parser


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise _Refused(f"--device {name[:40]!r} is not a torch device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Refused(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise _Refused(f"--device {name[:40]!r}: only cpu and cuda are supported")
    return device


def _batch_size(args: argparse.Namespace, art: Artifact) -> int:
    value = args.batch_size if args.batch_size is not None else art.training.get("eval_batch_size", 2048)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise _Refused(f"--batch-size must be 1..1000000, not {value!r}")
    return value


def _manifest_difference(art: Artifact, result: ArtifactEvaluation) -> float | None:
    """Largest |ours - manifest's| over the evaluated metrics; None when the manifest lacks one."""
    diffs = []
    for split, values in result.metrics.items():
        stored = art.metrics.get(split, {})
        for key, value in values.items():
            if not isinstance(stored.get(key), int | float):
                return None
            diffs.append(abs(value - float(stored[key])))
    return max(diffs, default=None)


def _report(art: Artifact, data: InteractionData, result: ArtifactEvaluation) -> dict[str, Any]:
    return {
        "artifact": str(art.path),
        "model": art.model.name,
        "model_version": art.model_version,
        "dataset": data.name,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "protocol": PROTOCOL,
        "histories": "dataset, folded in" if result.changed_users else "artifact",
        "changed_users": result.changed_users,
        "users": result.users,
        "metrics": {split: {k: values[k] for k in _ORDER} for split, values in result.metrics.items()},
        "manifest_max_abs_difference": _manifest_difference(art, result),
        "notes": result.notes,
    }


def _table(report: dict[str, Any]) -> str:
    diff = report["manifest_max_abs_difference"]
    if report["changed_users"]:
        histories = f"the dataset's, {report['changed_users']} users folded in (see the note above)"
    else:
        histories = "the artifact's (the dataset's training split is the one it was trained on)"
    lines = [
        f"artifact   {report['artifact']} ({report['model']}, {report['model_version']})",
        f"dataset    {report['dataset']}: {report['n_users']:,} users, {report['n_items']:,} items",
        f"histories  {histories}",
        f"protocol   {report['protocol']}",
        "manifest   "
        + (
            "no stored metrics to compare"
            if diff is None
            else f"largest difference to its metrics: {diff:.3g}"
        ),
        "",
        f"{'split':<6} {'users':>7}  " + "  ".join(f"{k:>9}" for k in _ORDER),
    ]
    for split, values in report["metrics"].items():
        row = "  ".join(f"{values[k]:>9.4f}" for k in _ORDER)
        lines.append(f"{split:<6} {report['users'][split]:>7,}  {row}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    device = _device(args.device)
    if not 0 <= args.threads <= 1024:
        raise _Refused(f"--threads must be 0..1024, not {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        art = read_artifact(args.artifact, device)
    except ArtifactError as exc:
        raise _Refused(f"artifact refused: {exc}") from None
    batch_size = _batch_size(args, art)
    splits = SPLITS if args.split == "both" else (args.split,)
    with tempfile.TemporaryDirectory(prefix="ld4mrec-eval-") as tmp:
        try:
            data = load_data(args.data, [], Path(tmp))  # [] = no feature files: the model holds what it needs
        except DatasetError as exc:
            raise _Refused(f"dataset error: {exc}") from None
    try:
        result = evaluate_artifact(art, data, splits, batch_size=batch_size)
    except DatasetMismatch as exc:
        raise _Refused(f"dataset {args.data} does not match artifact {args.artifact}: {exc}") from None
    return _report(art, data, result)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        report = _run(args)
    except _Refused as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for note in report["notes"]:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(json.dumps(report) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
