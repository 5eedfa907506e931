"""DiffMM's training epoch on a dataset, phase by phase: wall and CPU seconds (1 thread by default).

An epoch is the three phases of ``DiffMM.fit_epoch`` (denoisers, graph rebuild, BPR + contrastive) plus the
refresh of the final embeddings and fold-in map, then one valid evaluation (what the trainer adds). CPU
seconds (``time.process_time``) are what a quiet machine would take as wall time at 1 thread; the wall
seconds of a shared machine are larger. Compare with the official code's 95 s/epoch on tiktok (1 thread).

    PYTHONPATH=. python bench/diffmm_epoch_time.py --data /work/shared/datasets/tiktok --epochs 1

The last line of stdout is one JSON object with the per-epoch totals.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from _machine import machine_info, write_json
from model.base import FitContext, make_score_fn
from model.registry import get_model
from training.dataset import load_dataset
from training.evaluate import evaluate
from training.trainer import training_data


def _valid(model: Any, data: Any) -> dict[str, float]:
    score = make_score_fn(model, data.train, model.user_states())
    return evaluate(score, data.train, data.valid, batch_size=2048)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    fit_data = training_data(data)
    cls: Any = get_model("diffmm")
    model = cls.create(cls.config_class(), fit_data, FitContext(seed=args.seed))
    fit = model._fit
    epochs: list[dict[str, Any]] = []

    def timed(phases: dict[str, Any], name: str, f: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = f()
        phases[name] = {
            "wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
        }
        return out

    for epoch in range(1, args.epochs + 1):
        phases: dict[str, Any] = {}
        timed(phases, "denoisers", lambda: model._train_denoisers(fit))
        fit.generated = timed(phases, "rebuild", lambda: model._rebuild(fit))
        timed(phases, "bpr_contrastive", lambda: model._train_recommender(fit))
        timed(phases, "refresh", model._refresh)
        valid = timed(phases, "valid_eval", lambda: _valid(model, data))
        total = {k: round(sum(v[k] for v in phases.values()), 2) for k in ("wall_s", "cpu_s")}
        row = {"epoch": epoch, "phases": phases, "total": total, "valid_recall@20": valid["recall@20"]}
        epochs.append(row)
        print(json.dumps(epochs[-1]), flush=True)
    result = {
        "dataset": data.name,
        "threads": args.threads,
        "epochs": epochs,
        "cpu_s_per_epoch": round(sum(e["total"]["cpu_s"] for e in epochs) / len(epochs), 2),
        "wall_s_per_epoch": round(sum(e["total"]["wall_s"] for e in epochs) / len(epochs), 2),
        "official_s_per_epoch_1_thread": 95.0 if data.name == "tiktok" else None,
    }
    if args.out is not None:
        payload = {
            "script": "bench/diffmm_epoch_time.py",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(torch.device("cpu")),
            "result": result,
        }
        write_json(payload, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}))
    return result


if __name__ == "__main__":
    main()
