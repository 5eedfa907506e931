"""How closely a model's fold-in reproduces the stored states of its training users (any registered model).

For every training user with a history, the stored state (what training fixed) and the fold-in of the same
history (what the service computes after a click) are each scored over the catalogue with ``model.score``,
training items masked (what the service recommends), and compared by the top-K overlap |A and B| / K; the
states themselves by their cosine (when the model has states). Also the fold-in time per user (batched).

    PYTHONPATH=. python bench/fold_in_fidelity.py --artifact /tmp/diffmm/A [--out bench/results/X.json]

The last line of stdout is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _machine import display_path, machine_info, write_json
from model.artifact import read_artifact
from model.base import UserBatch
from model.ranking import mask_items, top_k


def _top(model: Any, histories: Any, users: np.ndarray, states: np.ndarray, k: int) -> np.ndarray:
    with torch.inference_mode():
        scores = model.score(UserBatch.from_csr(histories, users, states, model.device)).float().clone()
        rows = torch.from_numpy(np.repeat(np.arange(histories.shape[0]), np.diff(histories.indptr)))
        mask_items(scores, rows, torch.from_numpy(histories.indices.astype(np.int64)))
        return top_k(scores, k, stable=True)[1].cpu().numpy()


def measure(artifact: Path, k: int = 20, batch: int = 1024) -> dict[str, Any]:
    art = read_artifact(artifact)
    model = art.model
    users = np.nonzero(np.diff(art.train_histories.indptr) > 0)[0]
    overlaps, cosines, fold_seconds = [], [], 0.0
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        histories = art.train_histories[chunk]
        t0 = time.perf_counter()
        folded = model.fold_in(histories)
        fold_seconds += time.perf_counter() - t0
        stored = art.user_states[chunk]
        a = _top(model, histories, chunk, stored, k)
        b = _top(model, histories, np.full(len(chunk), -1), folded, k)
        overlaps.extend(len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True))
        if stored.shape[1]:
            norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(folded, axis=1)
            cosines.extend(((stored * folded).sum(axis=1) / np.maximum(norms, 1e-12)).tolist())
    overlap = np.asarray(overlaps)
    return {
        "model": model.name,
        "dataset": art.dataset,
        "users": int(len(users)),
        "k": k,
        f"top{k}_overlap_mean": round(float(overlap.mean()), 4),
        f"top{k}_overlap_median": round(float(np.median(overlap)), 4),
        f"top{k}_overlap_p10": round(float(np.quantile(overlap, 0.1)), 4),
        "state_cosine_mean": round(float(np.mean(cosines)), 4) if cosines else None,
        "state_cosine_p10": round(float(np.quantile(cosines, 0.1)), 4) if cosines else None,
        "fold_in_us_per_user": round(1e6 * fold_seconds / max(len(users), 1), 2),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.artifact, args.k)
    payload = {
        "script": "bench/fold_in_fidelity.py",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": display_path(args.artifact),
        "machine": machine_info(torch.device("cpu")),
        "result": result,
    }
    if args.out is not None:
        write_json(payload, args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
