"""One run of the accuracy search: train on a real dataset with overrides, append the result to a JSONL log.

    python bench/accuracy_search.py lastfm2k '{"use_cg": false, "signal_source": "visible"}'
    python bench/accuracy_search.py lastfm2k '{"l2_grid": [100, 500]}' --model ease

The overrides are one flat JSON object: each key is an option of the model's config (``--model``, default
LD4MRec: ``LD4MRecConfig``) or of the run (``RunConfig``: seed, device, threads, epochs, patience,
eval_every, eval_batch_size); an unknown or out-of-range option is refused before anything is trained.
Every run of the hyperparameter search recorded in BENCHMARKS.md was made this way; each JSONL line holds
the model, the overrides, the best-valid epoch, seconds per epoch, valid Recall@20 and all test metrics at
that epoch, both full configurations and the equivalent ``ld4mrec-train`` command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from _configs import split_overrides
from model.base import ConfigError
from model.registry import DEFAULT_MODEL, model_names
from training.dataset import load_dataset
from training.trainer import train

DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = Path(os.environ.get("LD4MREC_DATASETS", DEFAULT_DATASETS))
LOG = Path(__file__).resolve().parent / "results" / "accuracy_search.jsonl"


def cli_command(name: str, overrides: dict[str, Any], model: str = DEFAULT_MODEL) -> str:
    """The ``ld4mrec-train`` command line equivalent to ``overrides`` of ``model`` on dataset ``name``."""
    parts = [f"ld4mrec-train --model {model} --data ../shared/datasets/{name} --out /tmp/{name}"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            parts.append(" ".join([flag, *(str(v) for v in value)]))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument(
        "overrides", nargs="?", default="{}", help="JSON object of model-config and RunConfig overrides"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=model_names(), help="which model to train")
    parser.add_argument("--log", type=Path, default=LOG)
    parser.add_argument("--out", default=None, help="also export the artifact here")
    parser.add_argument("--candidate", default=None, help="name of the candidate this run measures (logged)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training.trainer").setLevel(logging.DEBUG)
    try:
        overrides = json.loads(args.overrides)
        if not isinstance(overrides, dict):
            raise ConfigError("the overrides must be a JSON object")
        model_config, run = split_overrides(args.model, overrides)
    except (json.JSONDecodeError, ConfigError) as exc:
        sys.exit(f"accuracy_search: {exc}")
    data = load_dataset(DATASETS / args.dataset)
    start = time.time()
    result = train(data, args.model, model_config, run, progress=False)
    row = {
        **({"candidate": args.candidate} if args.candidate else {}),
        "dataset": args.dataset,
        "model": args.model,
        "overrides": overrides,
        "best_epoch": result.best_epoch,
        "epochs": len(result.log),
        "s_epoch": round(result.seconds_per_epoch, 2),
        "valid": {k: round(v, 4) for k, v in result.metrics["valid"].items()},
        "test": {k: round(v, 4) for k, v in result.metrics["test"].items()},
        "wall_s": round(time.time() - start),
        "fitted": result.model.fitted(),
        "command": cli_command(args.dataset, overrides, args.model),
        # the overrides are relative to the defaults of the commit that ran
        "model_config": model_config.to_dict(),
        "run_config": run.to_dict(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(row), flush=True)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if args.out:
        from training.export import export_artifact

        export_artifact(result, data, run, args.out)


if __name__ == "__main__":
    main()
