"""One run of the accuracy search: train on a real dataset with overrides, append the result to a JSONL log.

    python bench/accuracy_search.py lastfm2k '{"use_cg": false, "signal_source": "visible"}'

Every run of the hyperparameter search recorded in BENCHMARKS.md was made this way; each JSONL line holds
the overrides, the best-valid epoch, seconds per epoch, valid Recall@20 and all test metrics at that epoch,
and the equivalent ``ld4mrec-train`` command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from training.config import TrainConfig
from training.dataset import load_dataset
from training.trainer import train

DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = Path(os.environ.get("LD4MREC_DATASETS", DEFAULT_DATASETS))
LOG = Path(__file__).resolve().parent / "results" / "accuracy_search.jsonl"


def cli_command(name: str, overrides: dict) -> str:
    """The ``ld4mrec-train`` command line equivalent to ``overrides`` on dataset ``name``."""
    parts = [f"ld4mrec-train --data ../shared/datasets/{name} --out /tmp/{name}"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON object of TrainConfig overrides")
    parser.add_argument("--log", type=Path, default=LOG)
    parser.add_argument("--out", default=None, help="also export the artifact here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training.trainer").setLevel(logging.DEBUG)
    overrides = json.loads(args.overrides)
    data = load_dataset(DATASETS / args.dataset)
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **overrides})
    start = time.time()
    result = train(data, cfg, progress=False)
    row = {
        "dataset": args.dataset,
        "overrides": overrides,
        "best_epoch": result.best_epoch,
        "epochs": len(result.log),
        "s_epoch": round(result.seconds_per_epoch, 2),
        "valid": {k: round(v, 4) for k, v in result.metrics["valid"].items()},
        "test": {k: round(v, 4) for k, v in result.metrics["test"].items()},
        "wall_s": round(time.time() - start),
        "command": cli_command(args.dataset, overrides),
        "config": cfg.to_dict(),  # the overrides are relative to the defaults of the commit that ran
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(row), flush=True)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if args.out:
        from training.export import export_artifact

        export_artifact(result, data, cfg, args.out)


if __name__ == "__main__":
    main()
