"""Cost of LD4MRec's structural switches, side by side in one run: scoring throughput at batch 32 (the
service path, ``model.score``, sparse first layer) and seconds per training epoch, each switch against the
defaults, interleaved in rounds so that background load hits all alike.

    PYTHONPATH=. python bench/structural_cost.py lastfm2k --epochs 2 --rounds 30
    PYTHONPATH=. python bench/structural_cost.py tiktok --epochs 0

Writes ``bench/results/structural_cost_<dataset>.json``; the last stdout line is its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.base import FitContext, UserBatch
from model.ld4mrec.config import LD4MRecConfig
from model.registry import get_model
from training.dataset import load_dataset
from training.trainer import training_data

DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = Path(os.environ.get("LD4MREC_DATASETS", DEFAULT_DATASETS))
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "item_graph": {"item_graph": 1.0},
    "feature_output": {"feature_output": True},
    "gfcf_prior": {"gfcf_prior": True},
    "rank_loss": {"rank_loss": 0.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs timed per variant (0: none)")
    parser.add_argument("--rounds", type=int, default=30, help="scoring rounds (one batch-32 call each)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(DATASETS / args.dataset)
    fit_data = training_data(data)
    ctx = FitContext(seed=2026, device=torch.device("cpu"))
    cls = get_model("ld4mrec")
    models = {name: cls.create(LD4MRecConfig.from_dict(v), fit_data, ctx) for name, v in VARIANTS.items()}
    epoch_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for epoch in range(1, args.epochs + 1):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.fit_epoch(fit_data, epoch, ctx)
            epoch_s[name].append(time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    active = np.nonzero(np.diff(data.train.indptr) > 0)[0]
    latency: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        users = rng.choice(active, 32, replace=False)
        for name, model in models.items():
            batch = UserBatch.from_csr(data.train[users], users, model.user_states()[users], model.device)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model.score(batch)
                latency[name].append(time.perf_counter() - t0)
    rows: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        med = float(np.median(latency[name]))
        rows[name] = {
            "score_ms_batch32": round(med * 1e3, 3),
            "users_per_s_batch32": round(32 / med, 1),
            "s_per_epoch": round(float(np.median(epoch_s[name])), 2) if epoch_s[name] else None,
        }
    base = rows["default"]
    for row in rows.values():
        row["throughput_vs_default"] = round(row["users_per_s_batch32"] / base["users_per_s_batch32"], 3)
        if row["s_per_epoch"] is not None and base["s_per_epoch"]:
            row["epoch_time_vs_default"] = round(row["s_per_epoch"] / base["s_per_epoch"], 3)
    out = {
        "dataset": args.dataset,
        "threads": args.threads,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"PYTHONPATH=. python bench/structural_cost.py {args.dataset} --epochs {args.epochs} "
        f"--rounds {args.rounds} --threads {args.threads}",
        "variants": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"structural_cost_{args.dataset}.json").write_text(json.dumps(out, indent=2) + "\n")
    for name, row in rows.items():
        print(name, row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
