"""``ld4mrec-train``: load (or generate) a dataset, train LD4MRec, evaluate, export an artifact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

from model.artifact import ArtifactError
from training.config import TrainConfig
from training.dataset import DatasetError, InteractionData, load_dataset
from training.export import export_artifact
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import train

__all__ = ["main", "build_parser"]

log = logging.getLogger("ld4mrec.train")

DEMO = "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ld4mrec-train",
        description="Train LD4MRec on a dataset in the MMRec layout and export a service artifact.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, help=f"dataset directory (<name>.inter + <modality>_feat.npy) or '{DEMO}'"
    )
    parser.add_argument(
        "--out", required=True, help="artifact directory to write (an existing artifact there is replaced)"
    )
    parser.add_argument(
        "--modalities", default=None, help="comma-separated modality order (default: all, sorted)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    defaults = TrainConfig()
    group = parser.add_argument_group("hyperparameters")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=default)
    return parser


def _load(data_arg: str, modalities: list[str] | None, workdir: Path) -> InteractionData:
    if data_arg == DEMO:
        directory = write_synthetic_dataset(workdir / DEMO, SyntheticSpec())
        return load_dataset(directory, modalities)
    return load_dataset(data_arg, modalities)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"ld4mrec-train: error: {exc}", file=sys.stderr)
        return 2
    modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
    with tempfile.TemporaryDirectory(prefix="ld4mrec-") as tmp:
        try:
            data = _load(args.data, modalities, Path(tmp))
        except DatasetError as exc:
            print(f"ld4mrec-train: dataset error: {exc}", file=sys.stderr)
            return 2
        log.info("dataset %s", data.summary())
        log.info("config %s", json.dumps(cfg.to_dict(), sort_keys=True))
        result = train(data, cfg, progress=not args.quiet)
        try:
            path = export_artifact(result, data, cfg, args.out)
        except ArtifactError as exc:
            print(f"ld4mrec-train: cannot write artifact: {exc}", file=sys.stderr)
            return 2
    test = result.metrics["test"]
    log.info(
        "done: best epoch %d, test recall@20 %.4f ndcg@20 %.4f; artifact at %s (manifest: %s)",
        result.best_epoch,
        test["recall@20"],
        test["ndcg@20"],
        path,
        path / "manifest.json",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
