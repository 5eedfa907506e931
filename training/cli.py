"""``ld4mrec-train``: load (or generate) a dataset, train the chosen model, evaluate, export an artifact.

Also under ``torchrun --nproc_per_node=W -m training ...`` (:mod:`training.distributed`): an iterative
model that supports it trains on W processes and rank 0 writes the artifact; a closed-form model is fitted
by rank 0 alone while the other ranks exit at once; any other model is refused (exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

from model.artifact import ArtifactError
from model.base import ConfigError, ModelConfig
from model.registry import DEFAULT_MODEL, get_model, model_names
from training import distributed
from training.config import RunConfig
from training.curve import CURVE_FILE, curve_files
from training.dataset import DatasetError, InteractionData, load_dataset
from training.distributed import Launch, LaunchError
from training.export import export_artifact
from training.synthetic import SyntheticSpec, write_synthetic_dataset
from training.trainer import train

__all__ = ["DEMO", "build_parser", "load_data", "main"]

log = logging.getLogger("ld4mrec.train")

DEMO = "demo"


def _add_options(group: argparse._ArgumentGroup, config_class: type[ModelConfig]) -> None:
    """One flag per config field, with its default and help line."""
    defaults = config_class()
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata.get("help", "")
        if isinstance(default, bool):
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif typing.get_origin(hints[f.name]) is tuple:
            (inner, *_rest) = typing.get_args(hints[f.name])
            group.add_argument(
                flag, dest=f.name, type=inner, nargs="+", default=list(default), help=help_text, metavar="X"
            )
        else:
            group.add_argument(flag, dest=f.name, type=type(default), default=default, help=help_text)


def build_parser(model_name: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The parser with the run options and ``model_name``'s hyperparameters."""
    parser = argparse.ArgumentParser(
        prog="ld4mrec-train",
        description="Train a recommender on a dataset in the MMRec layout and export a service artifact. "
        f"Hyperparameters shown are {model_name}'s; `--model NAME --help` shows another model's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=model_names(), help="which model to train")
    parser.add_argument(
        "--data", required=True, help=f"dataset directory (<name>.inter + <modality>_feat.npy) or '{DEMO}'"
    )
    parser.add_argument(
        "--out", required=True, help="artifact directory to write (an existing artifact there is replaced)"
    )
    parser.add_argument(
        "--modalities", default=None, help="comma-separated modality order (default: all, sorted by name)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    _add_options(parser.add_argument_group("run options"), RunConfig)
    config_class = get_model(model_name).config_class
    none = None if dataclasses.fields(config_class) else f"{model_name} has no hyperparameters."
    _add_options(parser.add_argument_group(f"{model_name} hyperparameters", none), config_class)
    return parser


def _chosen_model(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default=DEFAULT_MODEL, choices=model_names())
    known, _ = pre.parse_known_args(argv)
    return str(known.model)


def _config(config_class: type[ModelConfig], args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
    return config_class.from_dict(values)


def load_data(data_arg: str, modalities: list[str] | None, workdir: Path) -> InteractionData:
    """The dataset of a ``--data`` argument: a directory, or ``demo`` (the built-in synthetic dataset, written
    into ``workdir``; the same seeded data every time)."""
    if data_arg == DEMO:
        directory = write_synthetic_dataset(workdir / DEMO, SyntheticSpec())
        return load_dataset(directory, modalities)
    return load_dataset(data_arg, modalities)


def _setup_logging(launch: Launch) -> None:
    """INFO on rank 0 (the only rank of a single-process run), warnings only on the other ranks."""
    rank = f" [rank {launch.rank}/{launch.world_size}]" if launch.distributed else ""
    logging.basicConfig(
        level=logging.INFO if launch.is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s %(name)s{rank}: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    model_name = _chosen_model(argv)
    args = build_parser(model_name).parse_args(argv)
    try:
        launch = distributed.from_env()
    except LaunchError as exc:
        print(f"ld4mrec-train: error: torchrun environment: {exc}", file=sys.stderr)
        return 2
    _setup_logging(launch)
    model_class = get_model(model_name)
    try:
        run = _config(RunConfig, args)
        model_config = _config(model_class.config_class, args)
    except ConfigError as exc:
        print(f"ld4mrec-train: error: {exc}", file=sys.stderr)
        return 2
    extra_training: dict[str, Any] = {}
    if launch.distributed and not model_class.iterative:
        if not launch.is_main:
            return 0  # rank 0 fits the closed form alone (logged there)
        log.warning(
            "%s is fitted in closed form, by one process: rank 0 fits it, the other %d rank(s) exit",
            model_name,
            launch.world_size - 1,
        )
        extra_training["launched_world_size"] = launch.world_size
        launch = distributed.SINGLE_PROCESS
    elif launch.distributed and not model_class.distributed:
        print(
            f"ld4mrec-train: error: {model_name} does not support distributed training (torchrun with "
            f"{launch.world_size} processes); run it in one process: python -m training ...",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args, model_name, model_config, run, launch, extra_training)
    finally:
        distributed.stop()


def _run(
    args: argparse.Namespace,
    model_name: str,
    model_config: ModelConfig,
    run: RunConfig,
    launch: Launch,
    extra_training: dict[str, Any],
) -> int:
    """Load the data, train (joining the process group first under torchrun), export on rank 0."""
    model_class = get_model(model_name)
    modalities = [m for m in args.modalities.split(",") if m] if args.modalities else None
    with tempfile.TemporaryDirectory(prefix="ld4mrec-") as tmp:
        try:
            data = load_data(args.data, modalities, Path(tmp))
        except DatasetError as exc:
            print(f"ld4mrec-train: dataset error: {exc}", file=sys.stderr)
            return 2
        log.info("dataset %s", data.summary())
        log.info("model %s %s", model_name, json.dumps(model_config.to_dict(), sort_keys=True))
        log.info("run %s", json.dumps(run.to_dict(), sort_keys=True))
        try:
            launch = distributed.start(launch, distributed.device_for(run.device, launch))
            result = train(data, model_name, model_config, run, progress=not args.quiet, launch=launch)
        except (ConfigError, LaunchError, MemoryError) as exc:
            print(f"ld4mrec-train: cannot train {model_name}: {exc}", file=sys.stderr)
            return 2
        if not launch.is_main:
            return 0
        try:
            extra_files = curve_files(result, data.name)
            path = export_artifact(
                result, data, run, args.out, extra_training=extra_training, extra_files=extra_files
            )
        except ArtifactError as exc:
            print(f"ld4mrec-train: cannot write artifact: {exc}", file=sys.stderr)
            return 2
    if CURVE_FILE in extra_files:
        log.info("training curve: %s", path / CURVE_FILE)
    test = result.metrics["test"]
    log.info(
        "done: %s, test recall@20 %.4f ndcg@20 %.4f; artifact at %s (manifest: %s)",
        f"best epoch {result.best_epoch}" if model_class.iterative else "closed form",
        test["recall@20"],
        test["ndcg@20"],
        path,
        path / "manifest.json",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
