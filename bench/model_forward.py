"""The model's limit on this machine: batched scoring + history masking + top-20, no service around it.

One *request* of B users is what the service does per micro-batch, under ``torch.inference_mode()``:

1. ``HistoryBatch.from_csr`` of the B users' histories, internal ids and stored signals (host -> device),
2. scores (B, n_items): the sparse first layer (``model.score``, an embedding bag) or the dense one
   (a (B, n_items) multi-hot through ``model.cnet.forward``),
3. ``mask_items`` on each user's history items, ``top_k(scores, 20)``, and the ids back on the host.

Configurations, measured side by side in one run (interleaved in rounds so background load hits all alike):
sparse fp32 (the service path), dense fp32, sparse bf16 (a bfloat16 copy of the model, inputs too) and
sparse int8 (``model.precision.quantise_int8``, what the service runs with ``LD4MREC_PRECISION=int8``:
``quantize_dynamic`` of every ``nn.Linear``; the first layer ``item_in`` is a Parameter read by the
embedding bag and stays fp32), for batch sizes 1, 8, 32, 128, 256. Reported per configuration: median,
p95 and p99 latency per batch and throughput = B / median latency (users/s). Reduced precision is compared
with fp32 by the mean top-20 overlap |A and B| / 20 over a fixed set of users; sparse and dense scores are
compared on the same batch (max abs diff).

The model is, by default, LD4MRec at the ``sports`` shape (18,357 items, hidden 1000, d_svd 100, no
modalities) with random-init weights, and requests are real sports train histories (x_label 0) when
``/work/shared/datasets/sports`` is there, else synthetic histories of the same size and length
distribution. ``--artifact DIR`` uses a trained artifact instead (weights, stored signals, histories).

    python bench/model_forward.py            # full run -> bench/results/model_forward.json
    python bench/model_forward.py --quick    # < 3 min -> bench/results/model_forward_quick.json

The last line of stdout is one JSON object with the headline figures (``users_per_s_batch1``, ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from _machine import display_path, loadavg, machine_info, write_json
from model.artifact import build_model, read_artifact
from model.ld4mrec import HistoryBatch, LD4MRec
from model.precision import quantised_layers, to_precision
from model.ranking import mask_items, top_k

SPORTS_DIR = Path("/work/shared/datasets/sports")
SPORTS_USERS = 35_598
SPORTS_ITEMS = 18_357
HIDDEN_DIM = 1000
SVD_RANK = 100
TOP_K = 20
BATCH_SIZES = (1, 8, 32, 128, 256)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- workload ------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """The fp32 model and the requests' data.

    Attributes:
        histories: (n_users, n_items) binary CSR, the request histories (train split).
        signals: (n_users, width) float32 stored signals of those histories.
        users: internal ids of users with a non-empty history (the request pool).
        source: where the histories come from; weights: "random-init" or "trained (...)".
    """

    model: LD4MRec
    histories: sp.csr_matrix
    signals: np.ndarray
    users: np.ndarray
    source: str
    weights: str


def synthetic_histories(n_users: int, n_items: int, rng: np.random.Generator) -> sp.csr_matrix:
    """(n_users, n_items) binary CSR with lengths like the sports train split (min 3, mean ~6, median ~4)
    and Zipf-like item popularity. Duplicated draws are merged, so a few rows are slightly shorter."""
    lengths = 2 + rng.geometric(1.0 / 4.1, size=n_users)
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    items = rng.permutation(n_items)[
        rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum())
    ]
    rows = np.repeat(np.arange(n_users), lengths)
    matrix = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def build_workload(artifact: Path | None, data_dir: Path, seed: int) -> Workload:
    """A trained artifact if given; else a random-init LD4MRec at the sports shape (see module docstring)."""
    if artifact is not None:
        art = read_artifact(artifact)
        histories = art.train_histories
        return Workload(
            model=build_model(art, "cpu"),
            histories=histories,
            signals=art.signals,
            users=np.nonzero(np.diff(histories.indptr) > 0)[0],
            source=f"artifact {art.path} (dataset {art.dataset}, train histories)",
            weights=f"trained (artifact {art.model_version})",
        )
    # Training code is imported only here, to build the signal basis the way the trainer does.
    from training.config import TrainConfig
    from training.dataset import InteractionData, load_dataset
    from training.trainer import prepare_model

    if (data_dir / f"{data_dir.name}.inter").is_file():
        data = load_dataset(data_dir)
        source = f"{data_dir} train split (x_label 0)"
    else:
        train = synthetic_histories(SPORTS_USERS, SPORTS_ITEMS, np.random.default_rng(seed))
        empty = sp.csr_matrix(train.shape, dtype=np.float32)
        data = InteractionData(
            name="synthetic-sports-shape",
            train=train,
            valid=empty,
            test=empty,
            modality_names=(),
            modality_features=(),
            user_ids=tuple(str(u) for u in range(train.shape[0])),
            item_ids=tuple(str(i) for i in range(train.shape[1])),
        )
        source = f"synthetic histories at the sports shape ({data_dir} not found)"
    torch.manual_seed(seed)
    model, _, signals = prepare_model(data, TrainConfig(hidden_dim=HIDDEN_DIM, svd_rank=SVD_RANK, seed=seed))
    return Workload(
        model=model.eval(),
        histories=data.train,
        signals=signals,
        users=np.nonzero(np.diff(data.train.indptr) > 0)[0],
        source=source,
        weights="random-init",
    )


# -- variants and one request --------------------------------------------------------------------------------
@dataclass
class Variant:
    """One model configuration: first layer "sparse" or "dense", and the weights' precision."""

    name: str
    first_layer: str
    precision: str
    model: LD4MRec
    input_dtype: torch.dtype


INT8_NOTE = (
    "torch.ao.quantization.quantize_dynamic on every nn.Linear (the CG blocks' hidden/condition/gate layers, "
    "the PG blocks' MLPs if any, and FC_out, 1000 x n_items); the first layer item_in (n_items x 1000 "
    "Parameter read by embedding_bag), biases, z_in and the signal standardisation stay fp32"
)


def sparse_variant(model: LD4MRec, precision: str) -> Variant:
    """The service's path (sparse first layer) in a serving precision, as ``LD4MREC_PRECISION`` serves it:
    ``sparse_fp32`` is ``model`` itself, ``sparse_int8`` a ``to_precision`` (``quantise_int8``) copy of it
    (CPU only: raises ``PrecisionError`` for a model on a GPU)."""
    return Variant(f"sparse_{precision}", "sparse", precision, to_precision(model, precision), torch.float32)


def make_variants(model: LD4MRec, device: torch.device) -> tuple[list[Variant], dict[str, str]]:
    """The configurations to measure, and a note per skipped one."""
    fp32 = model.to(device).eval()
    variants = [
        sparse_variant(fp32, "fp32"),
        Variant("dense_fp32", "dense", "fp32", fp32, torch.float32),
        Variant("sparse_bf16", "sparse", "bf16", copy.deepcopy(fp32).to(torch.bfloat16), torch.bfloat16),
    ]
    skipped: dict[str, str] = {}
    if device.type == "cpu":
        variants.append(sparse_variant(fp32, "int8"))
    else:
        skipped["sparse_int8"] = "dynamic int8 quantisation runs on CPU only"
    return variants, skipped


def make_batch(
    histories: sp.csr_matrix, users: np.ndarray, signals: np.ndarray, device: torch.device, dtype: torch.dtype
) -> HistoryBatch:
    """HistoryBatch on ``device``, signals in ``dtype``. histories (B, n) CSR, users (B,), signals (B, w)."""
    batch = HistoryBatch.from_csr(histories, users, signals, device)
    if dtype != torch.float32:
        batch.signals = batch.signals.to(dtype)
    return batch


def scores_of(variant: Variant, batch: HistoryBatch) -> torch.Tensor:
    """(B, n_items) scores of the variant's first layer."""
    model = variant.model
    if variant.first_layer == "sparse":
        return model.score(batch)
    x = batch.dense(model.n_items).to(variant.input_dtype)
    return model.cnet(x, model.inference_step_embedding(batch.user_index), batch.signals)


def history_rows(batch: HistoryBatch) -> torch.Tensor:
    """(total,) row of every entry of ``batch.item_ids``."""
    total = torch.tensor([batch.item_ids.shape[0]], device=batch.offsets.device)
    lengths = torch.diff(batch.offsets, append=total)
    return torch.repeat_interleave(torch.arange(batch.size, device=batch.offsets.device), lengths)


def recommend(variant: Variant, batch: HistoryBatch, k: int = TOP_K) -> np.ndarray:
    """One request: scores -> mask history items -> top-k -> (B, k) item ids on the host."""
    scores = scores_of(variant, batch)
    mask_items(scores, history_rows(batch), batch.item_ids)
    _, ids = top_k(scores, k)
    return ids.cpu().numpy()


# -- timing --------------------------------------------------------------------------------------------------
@dataclass
class TimingPlan:
    """Warm-up iterations, time budget per configuration (split over interleaved rounds), repeat bounds."""

    warmup: int
    budget_s: float
    rounds: int
    min_repeats: int
    max_repeats: int = 100_000


@dataclass
class Measurement:
    variant: str
    batch: int
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {
            "variant": self.variant,
            "batch": self.batch,
            "repeats": int(lat.size),
            "median_ms": round(float(p50) * 1e3, 4),
            "p95_ms": round(float(p95) * 1e3, 4),
            "p99_ms": round(float(p99) * 1e3, 4),
            "mean_ms": round(float(lat.mean()) * 1e3, 4),
            "users_per_s": round(self.batch / float(p50), 1),
        }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def request_pool(
    work: Workload, batch: int, n_batches: int, rng: np.random.Generator
) -> list[tuple[sp.csr_matrix, np.ndarray, np.ndarray]]:
    """``n_batches`` host-side requests of ``batch`` random users: (histories CSR, user ids, signals)."""
    pool = []
    for _ in range(n_batches):
        users = rng.choice(work.users, size=batch, replace=False)
        pool.append((work.histories[users], users, work.signals[users]))
    return pool


def measure_batch_size(
    variants: Sequence[Variant],
    pool: Sequence[tuple[sp.csr_matrix, np.ndarray, np.ndarray]],
    batch: int,
    plan: TimingPlan,
    device: torch.device,
) -> list[Measurement]:
    """Time every variant on the same requests, interleaved: ``plan.rounds`` rounds of budget/rounds each."""
    results = [Measurement(v.name, batch) for v in variants]

    def run_once(variant: Variant, i: int) -> float:
        histories, users, signals = pool[i % len(pool)]
        synchronise(device)
        t0 = time.perf_counter()
        recommend(variant, make_batch(histories, users, signals, device, variant.input_dtype))
        synchronise(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        for v in variants:
            for i in range(plan.warmup):
                run_once(v, i)
        slice_s = plan.budget_s / plan.rounds
        min_per_round = -(-plan.min_repeats // plan.rounds)
        max_per_round = plan.max_repeats // plan.rounds
        for _ in range(plan.rounds):
            for v, m in zip(variants, results, strict=True):
                start, n = time.perf_counter(), 0
                while n < max_per_round and (n < min_per_round or time.perf_counter() - start < slice_s):
                    m.latencies_s.append(run_once(v, len(m.latencies_s)))
                    n += 1
    return results


# -- numerical checks ----------------------------------------------------------------------------------------
def top_k_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) |A_u and B_u| / k of two (B, k) id arrays."""
    k = a.shape[1]
    return np.asarray([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True)])


def compare_precisions(
    variants: Sequence[Variant],
    work: Workload,
    eval_users: np.ndarray,
    device: torch.device,
    batch: int = 256,
) -> dict[str, dict[str, float]]:
    """Per variant vs sparse fp32 over ``eval_users``: mean top-20 overlap, share of identical top-20 sets,
    max abs score difference (unmasked scores)."""
    reference = next(v for v in variants if v.name == "sparse_fp32")
    overlaps: dict[str, list[np.ndarray]] = {v.name: [] for v in variants if v is not reference}
    max_diff = dict.fromkeys(overlaps, 0.0)
    with torch.inference_mode():
        for start in range(0, len(eval_users), batch):
            users = eval_users[start : start + batch]
            h, s = work.histories[users], work.signals[users]
            ref_batch = make_batch(h, users, s, device, torch.float32)
            ref_scores = scores_of(reference, ref_batch).float()
            ref_ids = recommend(reference, ref_batch)
            for v in variants:
                if v is reference:
                    continue
                b = make_batch(h, users, s, device, v.input_dtype)
                diff = (scores_of(v, b).float() - ref_scores).abs().max()
                max_diff[v.name] = max(max_diff[v.name], float(diff))
                overlaps[v.name].append(top_k_overlap(recommend(v, b), ref_ids))
    out = {}
    for name, parts in overlaps.items():
        o = np.concatenate(parts)
        out[name] = {
            "top20_overlap_vs_fp32": round(float(o.mean()), 4),
            "min_top20_overlap": round(float(o.min()), 4),
            "identical_top20_share": round(float((o == 1.0).mean()), 4),
            "max_abs_score_diff": float(f"{max_diff[name]:.3g}"),
        }
    return out


def sparse_vs_dense(
    variants: Sequence[Variant], work: Workload, users: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Max abs difference of sparse and dense fp32 scores on one batch, and the scores' max magnitude."""
    sparse = next(v for v in variants if v.name == "sparse_fp32")
    dense = next(v for v in variants if v.name == "dense_fp32")
    with torch.inference_mode():
        batch = make_batch(work.histories[users], users, work.signals[users], device, torch.float32)
        a, b = scores_of(sparse, batch), scores_of(dense, batch)
    return {
        "batch": int(len(users)),
        "max_abs_diff": float(f"{float((a - b).abs().max()):.3g}"),
        "max_abs_score": float(f"{float(a.abs().max()):.4g}"),
    }


# -- output ----------------------------------------------------------------------------------------------
def print_table(
    rows: Sequence[dict[str, Any]], variants: Sequence[str], log: Callable[[str], None] = print
) -> None:
    log(
        f"\n{'batch':>5} {'variant':<12} {'median ms':>10} {'p95 ms':>9} {'p99 ms':>9} {'users/s':>10} "
        f"{'vs sparse_fp32':>14} {'n':>6}"
    )
    base = {r["batch"]: r["users_per_s"] for r in rows if r["variant"] == "sparse_fp32"}
    for r in sorted(rows, key=lambda r: (r["batch"], variants.index(r["variant"]))):
        ratio = r["users_per_s"] / base[r["batch"]] if base.get(r["batch"]) else float("nan")
        log(
            f"{r['batch']:>5} {r['variant']:<12} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} "
            f"{r['p99_ms']:>9.3f} {r['users_per_s']:>10.1f} {ratio:>13.2f}x {r['repeats']:>6}"
        )


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--quick", action="store_true", help="short run (< 3 min): small time budget, fewer repeats"
    )
    p.add_argument(
        "--artifact",
        type=Path,
        default=None,
        help="a trained artifact directory (default: random-init LD4MRec at the sports shape)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=SPORTS_DIR,
        help="sports dataset directory for request histories (synthetic histories when missing)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: timings synchronise the device)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated batch sizes"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="timed seconds per configuration (default: 0.4 quick, 3 full)",
    )
    p.add_argument(
        "--eval-users",
        type=int,
        default=None,
        help="users for the top-20 overlap (default: 512 quick, 4096 full)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default: bench/results/model_forward.json, model_forward_quick.json with --quick)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build / on this machine")
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    plan = (
        TimingPlan(warmup=3, budget_s=0.4, rounds=2, min_repeats=5)
        if args.quick
        else TimingPlan(warmup=5, budget_s=3.0, rounds=3, min_repeats=20)
    )
    if args.budget_s is not None:
        plan.budget_s = args.budget_s
    eval_n = args.eval_users or (512 if args.quick else 4096)
    out = args.out or RESULTS_DIR / ("model_forward_quick.json" if args.quick else "model_forward.json")
    command = "python " + " ".join(
        shlex.quote(a) for a in (sys.argv if argv is None else ["bench/model_forward.py", *argv])
    )
    machine = machine_info(device)
    started = datetime.now(UTC)

    t0 = time.perf_counter()
    work = build_workload(args.artifact, args.data, args.seed)
    setup_s = time.perf_counter() - t0
    cfg = work.model.cnet.cfg
    variants, skipped = make_variants(work.model, device)
    names = [v.name for v in variants]
    rng = np.random.default_rng(args.seed)
    lengths = np.diff(work.histories.indptr)[work.users]
    log(
        f"model: LD4MRec n_items={cfg.n_items} hidden={cfg.hidden_dim} d_svd={cfg.collab_dim // 2} "
        f"modalities={len(cfg.modality_dims)} weights={work.weights}"
    )
    log(
        f"requests: {work.source}; {len(work.users)} users, history length mean {lengths.mean():.2f} "
        f"median {np.median(lengths):.0f} max {lengths.max()}; setup {setup_s:.1f}s"
    )
    log(
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']} cpus, torch {machine['torch']} "
        f"threads={machine['torch_threads']}, device={device}, load avg {machine['loadavg_1_5_15_at_start']}"
    )

    check_users = rng.choice(work.users, size=min(256, len(work.users)), replace=False)
    dense_check = sparse_vs_dense(variants, work, check_users, device)
    log(
        f"sparse vs dense fp32 scores on {dense_check['batch']} users: "
        f"max abs diff {dense_check['max_abs_diff']:.3g} (max |score| {dense_check['max_abs_score']:.4g})"
    )

    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        if batch > len(work.users):
            log(f"batch {batch}: skipped (only {len(work.users)} users with a history)")
            continue
        pool = request_pool(work, batch, n_batches=max(2, min(16, 4096 // batch)), rng=rng)
        rows += [m.summary() for m in measure_batch_size(variants, pool, batch, plan, device)]
        done = {r["variant"]: r for r in rows if r["batch"] == batch}
        log(f"batch {batch:>3}: " + "  ".join(f"{n} {done[n]['users_per_s']:.0f} u/s" for n in names))
    print_table(rows, names, log)

    eval_users = rng.permutation(work.users)[:eval_n]
    precision = compare_precisions(variants, work, eval_users, device)
    log(f"\ntop-{TOP_K} vs sparse fp32 over {len(eval_users)} users ({work.weights} weights):")
    for name, p in precision.items():
        log(
            f"  {name:<12} mean overlap {p['top20_overlap_vs_fp32']:.4f}  min {p['min_top20_overlap']:.2f}  "
            f"identical {p['identical_top20_share']:.3f}  max |score diff| {p['max_abs_score_diff']:.3g}"
        )
    if work.weights == "random-init":
        log(
            "  (random-init scores lie close together: overlaps understate a trained model's; see --artifact)"
        )
    for name, why in skipped.items():
        log(f"  {name:<12} skipped: {why}")

    sparse_rows = {r["batch"]: r for r in rows if r["variant"] == "sparse_fp32"}
    headline: dict[str, Any] = {f"users_per_s_batch{b}": r["users_per_s"] for b, r in sparse_rows.items()}
    for b in (1, 32):
        if b in sparse_rows:
            headline[f"latency_ms_batch{b}_p50"] = sparse_rows[b]["median_ms"]
            headline[f"latency_ms_batch{b}_p99"] = sparse_rows[b]["p99_ms"]
    headline |= {f"top20_overlap_{n}": p["top20_overlap_vs_fp32"] for n, p in precision.items()}
    headline |= {
        "variant": "sparse_fp32",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "weights": work.weights,
        "json": display_path(out),
    }

    machine["loadavg_1_5_15_at_end"] = loadavg()
    payload = {
        "benchmark": "model_forward",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "workload": {
            "source": work.source,
            "weights": work.weights,
            "n_users": int(work.histories.shape[0]),
            "n_items": cfg.n_items,
            "hidden_dim": cfg.hidden_dim,
            "d_svd": cfg.collab_dim // 2,
            "modality_dims": list(cfg.modality_dims),
            "history_length": {
                "mean": round(float(lengths.mean()), 3),
                "median": float(np.median(lengths)),
                "p99": float(np.percentile(lengths, 99)),
                "max": int(lengths.max()),
            },
            "request": "HistoryBatch.from_csr + scores (sparse: model.score; dense: multi-hot, cnet.forward) "
            f"+ mask_items(history) + top_k({TOP_K}) + ids to host, in torch.inference_mode()",
        },
        "timing": {
            "warmup": plan.warmup,
            "budget_s_per_config": plan.budget_s,
            "rounds": plan.rounds,
            "min_repeats": plan.min_repeats,
            "throughput": "batch / median latency",
        },
        "int8": {
            "what": INT8_NOTE,
            "quantised_layers": next(
                (quantised_layers(v.model) for v in variants if v.precision == "int8"), []
            ),
        },
        "bf16": "copy of the model cast to bfloat16 (all weights and buffers), signals cast to bfloat16",
        "skipped": skipped,
        "sparse_vs_dense": dense_check,
        "results": rows,
        "precision_vs_fp32": {"users": int(len(eval_users)), "weights": work.weights, **precision},
        "headline": headline,
    }
    write_json(payload, out)
    log(f"\nwrote {display_path(out)}")
    log(json.dumps(headline))
    return payload


if __name__ == "__main__":
    main()
