"""A model's limit on this machine: batched scoring + history masking + top-20, no service around it.

One *request* of B users is what the service does per micro-batch, under ``torch.inference_mode()``:

1. ``UserBatch.from_csr`` of the B users' histories, internal ids and stored states (host -> device),
2. scores (B, n_items): ``model.score`` (the service's path; for LD4MRec the sparse first layer, an
   embedding bag) or, for LD4MRec only, the dense first layer (a (B, n_items) multi-hot through
   ``model.net.cnet.forward``),
3. ``mask_items`` on each user's history items, ``top_k(scores, 20)``, and the ids back on the host.

Any registered model can be measured (``--artifact DIR`` of any model; the model class comes from the
artifact through ``model.registry``). Configurations, measured side by side in one run (interleaved in
rounds so background load hits all alike), for batch sizes 1, 8, 32, 128, 256:

- LD4MRec: sparse fp32 (the service path), dense fp32, sparse bf16 (a bfloat16 copy of the network,
  inputs too) and sparse int8 (``model.with_precision("int8")``, what the service runs with
  ``LD4MREC_PRECISION=int8``: ``quantize_dynamic`` of every ``nn.Linear``; the first layer ``item_in`` is a
  Parameter read by the embedding bag and stays fp32).
- any other model: ``score_fp32`` (``model.score``, the service path) and ``score_<p>`` for every other
  precision the model serves (``Recommender.precisions``); the sparse/dense first-layer comparison and
  bf16 are LD4MRec's and are skipped, with a note in the output.
- ``--compare-artifact DIR`` (repeatable): the fp32 service path of other artifacts trained on the same
  data (same users, same training histories), e.g. EASE next to LD4MRec, as ``<model>_fp32``, timed on the
  same requests, interleaved with the rest: serving-cost ratios between models from one run.

Reported per configuration: median, p95 and p99 latency per batch and throughput = B / median latency
(users/s). Other precisions are compared with the model's fp32 by the mean top-20 overlap |A and B| / 20
over a fixed set of users; LD4MRec's sparse and dense scores are compared on the same batch (max abs diff).

Without ``--artifact`` the model is LD4MRec at the ``sports`` shape (18,357 items, hidden 1000, d_svd 100,
no modalities) with random-init weights, and requests are real sports train histories (x_label 0) when
``/work/shared/datasets/sports`` is there, else synthetic histories of the same size and length
distribution. ``--artifact DIR`` uses a trained artifact instead (weights, stored states, histories).

    python bench/model_forward.py            # full run -> bench/results/model_forward.json
    python bench/model_forward.py --quick    # < 3 min -> bench/results/model_forward_quick.json
    python bench/model_forward.py --artifact LD4MREC_DIR --compare-artifact EASE_DIR  # models side by side

The last line of stdout is one JSON object with the headline figures (``model``, ``users_per_s_batch1``,
...: the service path at fp32).
"""

from __future__ import annotations

import argparse
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
from torch import nn

from _machine import display_path, loadavg, machine_info, write_json
from model.artifact import read_artifact
from model.base import FitContext, PrecisionError, Recommender, TrainingData, UserBatch
from model.ld4mrec.network import LD4MRecNet
from model.precision import quantised_layers
from model.ranking import mask_items, top_k
from model.registry import get_model

SPORTS_DIR = Path("/work/shared/datasets/sports")
SPORTS_USERS = 35_598
SPORTS_ITEMS = 18_357
RANDOM_INIT_MODEL = "ld4mrec"
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
        model: any registered model, in eval mode (fp32).
        histories: (n_users, n_items) binary CSR, the request histories (train split).
        states: (n_users, S) float32 stored user states of those histories (``model.fold_in``).
        users: internal ids of users with a non-empty history (the request pool).
        source: where the histories come from; weights: "random-init" or "trained (...)".
        user_ids: external user ids (position = internal id); empty for synthetic histories.
    """

    model: Recommender
    histories: sp.csr_matrix
    states: np.ndarray
    users: np.ndarray
    source: str
    weights: str
    user_ids: tuple[str, ...] = ()


def ld4mrec_net(model: Recommender) -> LD4MRecNet | None:
    """LD4MRec's network (``model.net``) when ``model`` is an LD4MRec, else None."""
    net = getattr(model, "net", None)
    return net if isinstance(net, LD4MRecNet) else None


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


def random_init_model(
    name: str, overrides: dict[str, Any], data: TrainingData, seed: int, device: torch.device
) -> Recommender:
    """A freshly created (untrained) model as an artifact would load it: ``create`` (which fixes what
    training fixes first, e.g. LD4MRec's signal basis), then ``from_arrays`` of its arrays on ``device``
    (eval mode)."""
    cls = get_model(name)
    config = cls.config_class.from_dict(overrides)
    created = cls.create(config, data, FitContext(seed=seed))
    return cls.from_arrays(config, data.n_users, data.n_items, created.dims(), created.arrays(), device)


def artifact_workload(artifact: Path, device: torch.device) -> Workload:
    """The model (on ``device``), stored states and training histories of an artifact of any model."""
    art = read_artifact(artifact, device)
    histories = art.train_histories
    return Workload(
        model=art.model,
        histories=histories,
        states=art.user_states,
        users=np.nonzero(np.diff(histories.indptr) > 0)[0],
        source=f"artifact {art.path} (dataset {art.dataset}, train histories)",
        weights=f"trained (artifact {art.model_version})",
        user_ids=art.user_ids,
    )


def build_workload(artifact: Path | None, data_dir: Path, seed: int, device: torch.device) -> Workload:
    """A trained artifact if given; else a random-init LD4MRec at the sports shape (see module docstring),
    its model on ``device``."""
    if artifact is not None:
        return artifact_workload(artifact, device)
    # Training code is imported only here, to read the dataset the way the trainer does.
    from training.dataset import load_dataset

    if (data_dir / f"{data_dir.name}.inter").is_file():
        data = load_dataset(data_dir)
        train, modality_names, features = data.train, data.modality_names, data.modality_features
        user_ids = data.user_ids
        source = f"{data_dir} train split (x_label 0)"
    else:
        train = synthetic_histories(SPORTS_USERS, SPORTS_ITEMS, np.random.default_rng(seed))
        modality_names, features, user_ids = (), (), ()
        source = f"synthetic histories at the sports shape ({data_dir} not found)"
    fit_data = TrainingData(train, modality_names, features)
    shape = {"hidden_dim": HIDDEN_DIM, "svd_rank": SVD_RANK}
    model = random_init_model(RANDOM_INIT_MODEL, shape, fit_data, seed, device)
    return Workload(
        model=model,
        histories=train,
        states=model.fold_in(train),
        users=np.nonzero(np.diff(train.indptr) > 0)[0],
        source=source,
        weights="random-init",
        user_ids=user_ids,
    )


# -- variants and one request --------------------------------------------------------------------------------
@dataclass
class Variant:
    """One configuration to time: a name, its first layer ("sparse": LD4MRec's embedding bag; "dense":
    LD4MRec's multi-hot; "model": another model's own ``score``), precision, the scoring function of a
    :class:`UserBatch`, the dtype its states take and the states (n_users, S) of its model.

    ``module`` is the network that runs (for the list of quantised layers), None for non-network models."""

    name: str
    first_layer: str
    precision: str
    score: Callable[[UserBatch], torch.Tensor]
    states: np.ndarray
    input_dtype: torch.dtype = torch.float32
    module: nn.Module | None = None


INT8_NOTE = (
    "torch.ao.quantization.quantize_dynamic on every nn.Linear (the CG blocks' hidden/condition/gate layers, "
    "the PG blocks' MLPs if any, and FC_out, 1000 x n_items); the first layer item_in (n_items x 1000 "
    "Parameter read by embedding_bag), biases, z_in and the signal standardisation stay fp32"
)
NO_FIRST_LAYER_NOTE = (
    "the sparse vs dense first-layer comparison and bf16 are LD4MRec's (its C-Net); model {name} is "
    "measured on its own score (the service path) at the precisions it serves"
)


def service_variant_name(model: Recommender, precision: str) -> str:
    """``sparse_<precision>`` for LD4MRec (its sparse first layer), ``score_<precision>`` for others."""
    return f"sparse_{precision}" if ld4mrec_net(model) is not None else f"score_{precision}"


def service_variant(
    model: Recommender, states: np.ndarray, precision: str, name: str | None = None
) -> Variant:
    """The service's path (``model.with_precision(precision).score``, as ``LD4MREC_PRECISION`` serves it),
    named ``name`` or :func:`service_variant_name`. Raises ``PrecisionError`` where the model (or its
    device) does not serve ``precision``."""
    served = model.with_precision(precision)
    net = ld4mrec_net(served)
    return Variant(
        name or service_variant_name(model, precision),
        "sparse" if net is not None else "model",
        precision,
        served.score,
        states,
        module=net,
    )


def make_variants(work: Workload) -> tuple[list[Variant], dict[str, str]]:
    """The configurations to measure (the service path at fp32 first), and a note per skipped one."""
    model = work.model
    fp32 = service_variant(model, work.states, "fp32")
    variants = [fp32]
    skipped: dict[str, str] = {}
    net = ld4mrec_net(model)
    if net is not None:

        def dense(batch: UserBatch) -> torch.Tensor:
            x = batch.dense(net.n_items)
            return net.cnet(x, net.inference_step_embedding(batch.user_index), batch.states)

        # bf16 (what LD4MREC_PRECISION=bf16 serves) comes with the model's precisions below
        variants.append(Variant("dense_fp32", "dense", "fp32", dense, work.states, module=net))
    else:
        skipped["sparse_vs_dense_and_bf16"] = NO_FIRST_LAYER_NOTE.format(name=model.name)
    for precision in model.precisions:
        if precision == "fp32":
            continue
        try:
            variants.append(service_variant(model, work.states, precision))
        except PrecisionError as exc:
            skipped[service_variant_name(model, precision)] = str(exc)
    return variants, skipped


def comparison_variants(
    main: Workload, artifacts: Sequence[Path], device: torch.device, taken: Sequence[str]
) -> tuple[list[Variant], list[dict[str, Any]]]:
    """The fp32 service path of each artifact (``<model>_fp32``, ``<model>_fp32_2`` if taken), and what
    they are. SystemExit for an artifact not trained on the same users and training histories as ``main``."""
    variants: list[Variant] = []
    described: list[dict[str, Any]] = []
    names = set(taken)
    for path in artifacts:
        other = artifact_workload(path, device)
        same = other.histories.shape == main.histories.shape
        same = same and (not main.user_ids or other.user_ids == main.user_ids)
        if not same or (other.histories != main.histories).nnz:
            raise SystemExit(
                f"--compare-artifact {path}: not trained on the same users and training histories as the "
                "measured model (compare artifacts of one dataset)"
            )
        name, k = f"{other.model.name}_fp32", 2
        while name in names:
            name, k = f"{other.model.name}_fp32_{k}", k + 1
        names.add(name)
        variants.append(service_variant(other.model, other.states, "fp32", name))
        described.append(
            {
                "variant": name,
                "model": other.model.name,
                "artifact": display_path(path),
                "weights": other.weights,
                "model_config": other.model.config.to_dict(),
            }
        )
    return variants, described


def make_batch(
    histories: sp.csr_matrix, users: np.ndarray, states: np.ndarray, device: torch.device, dtype: torch.dtype
) -> UserBatch:
    """UserBatch on ``device``, states in ``dtype``. histories (B, n) CSR, users (B,), states (B, S)."""
    batch = UserBatch.from_csr(histories, users, states, device)
    if dtype != torch.float32:
        batch.states = batch.states.to(dtype)
    return batch


def history_rows(batch: UserBatch) -> torch.Tensor:
    """(total,) row of every entry of ``batch.item_ids``."""
    return torch.repeat_interleave(torch.arange(batch.size, device=batch.offsets.device), batch.lengths())


def recommend(variant: Variant, batch: UserBatch, k: int = TOP_K) -> np.ndarray:
    """One request: scores -> mask history items -> top-k -> (B, k) item ids on the host."""
    scores = variant.score(batch)
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


Request = tuple[sp.csr_matrix, np.ndarray]
"""Host-side request: (B, n) CSR histories and (B,) internal user ids (each variant adds its states)."""


def request_pool(work: Workload, batch: int, n_batches: int, rng: np.random.Generator) -> list[Request]:
    """``n_batches`` host-side requests of ``batch`` random users with a history."""
    pool = []
    for _ in range(n_batches):
        users = rng.choice(work.users, size=batch, replace=False)
        pool.append((work.histories[users], users))
    return pool


def measure_batch_size(
    variants: Sequence[Variant],
    pool: Sequence[Request],
    batch: int,
    plan: TimingPlan,
    device: torch.device,
) -> list[Measurement]:
    """Time every variant on the same requests, interleaved: ``plan.rounds`` rounds of budget/rounds each.
    A request's time includes building its UserBatch (the variant's stored states of the users)."""
    results = [Measurement(v.name, batch) for v in variants]

    def run_once(variant: Variant, i: int) -> float:
        histories, users = pool[i % len(pool)]
        synchronise(device)
        t0 = time.perf_counter()
        recommend(variant, make_batch(histories, users, variant.states[users], device, variant.input_dtype))
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
    """Per variant vs the first (the service path at fp32) over ``eval_users``: mean top-20 overlap, share
    of identical top-20 sets, max abs score difference (unmasked scores). All variants score one model."""
    reference = variants[0]
    overlaps: dict[str, list[np.ndarray]] = {v.name: [] for v in variants[1:]}
    max_diff = dict.fromkeys(overlaps, 0.0)
    with torch.inference_mode():
        for start in range(0, len(eval_users), batch):
            users = eval_users[start : start + batch]
            h, s = work.histories[users], work.states[users]
            ref_batch = make_batch(h, users, s, device, torch.float32)
            ref_scores = reference.score(ref_batch).float()
            ref_ids = recommend(reference, ref_batch)
            for v in variants[1:]:
                b = make_batch(h, users, s, device, v.input_dtype)
                diff = (v.score(b).float() - ref_scores).abs().max()
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
) -> dict[str, Any]:
    """Max abs difference of LD4MRec's sparse and dense fp32 scores on one batch, and the scores' max
    magnitude; ``{"skipped": why}`` for a model without the two first layers."""
    by_name = {v.name: v for v in variants}
    if "sparse_fp32" not in by_name or "dense_fp32" not in by_name:
        return {"skipped": NO_FIRST_LAYER_NOTE.format(name=work.model.name)}
    sparse, dense = by_name["sparse_fp32"], by_name["dense_fp32"]
    with torch.inference_mode():
        batch = make_batch(work.histories[users], users, work.states[users], device, torch.float32)
        a, b = sparse.score(batch), dense.score(batch)
    return {
        "batch": int(len(users)),
        "max_abs_diff": float(f"{float((a - b).abs().max()):.3g}"),
        "max_abs_score": float(f"{float(a.abs().max()):.4g}"),
    }


# -- output ----------------------------------------------------------------------------------------------
def print_table(
    rows: Sequence[dict[str, Any]], variants: Sequence[str], log: Callable[[str], None] = print
) -> None:
    """One line per (batch, variant); the ratio column is against the first variant (the service path)."""
    reference = variants[0]
    log(
        f"\n{'batch':>5} {'variant':<14} {'median ms':>10} {'p95 ms':>9} {'p99 ms':>9} {'users/s':>10} "
        f"{'vs ' + reference:>14} {'n':>6}"
    )
    base = {r["batch"]: r["users_per_s"] for r in rows if r["variant"] == reference}
    for r in sorted(rows, key=lambda r: (r["batch"], variants.index(r["variant"]))):
        ratio = r["users_per_s"] / base[r["batch"]] if base.get(r["batch"]) else float("nan")
        log(
            f"{r['batch']:>5} {r['variant']:<14} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} "
            f"{r['p99_ms']:>9.3f} {r['users_per_s']:>10.1f} {ratio:>13.2f}x {r['repeats']:>6}"
        )


def model_description(model: Recommender) -> str:
    """One line: the model's name and shape (LD4MRec: hidden, d_svd, modalities)."""
    net = ld4mrec_net(model)
    if net is None:
        return f"{model.name} n_items={model.n_items} config={json.dumps(model.config.to_dict())}"
    cfg = net.cnet.cfg
    return (
        f"{model.name} n_items={cfg.n_items} hidden={cfg.hidden_dim} d_svd={cfg.collab_dim // 2} "
        f"modalities={len(cfg.modality_dims)}"
    )


def workload_record(work: Workload, lengths: np.ndarray) -> dict[str, Any]:
    """The JSON ``workload`` section: the model and its shape, the requests' histories, what a request is."""
    model = work.model
    record: dict[str, Any] = {
        "model": model.name,
        "source": work.source,
        "weights": work.weights,
        "n_users": int(work.histories.shape[0]),
        "n_items": model.n_items,
    }
    net = ld4mrec_net(model)
    if net is not None:
        cfg = net.cnet.cfg
        record |= {
            "hidden_dim": cfg.hidden_dim,
            "d_svd": cfg.collab_dim // 2,
            "modality_dims": list(cfg.modality_dims),
        }
    record |= {
        "model_config": model.config.to_dict(),
        "history_length": {
            "mean": round(float(lengths.mean()), 3),
            "median": float(np.median(lengths)),
            "p99": float(np.percentile(lengths, 99)),
            "max": int(lengths.max()),
        },
        "request": "UserBatch.from_csr + scores (sparse / score: model.score, the service path; dense: "
        f"multi-hot, net.cnet.forward) + mask_items(history) + top_k({TOP_K}) + ids to host, in "
        "torch.inference_mode()",
    }
    return record


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
        help="a trained artifact directory of any model (default: random-init LD4MRec at the sports shape)",
    )
    p.add_argument(
        "--compare-artifact",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also time this artifact's fp32 service path on the same requests (same users and training "
        "histories; repeatable), e.g. EASE next to LD4MRec",
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
    work = build_workload(args.artifact, args.data, args.seed, device)
    variants, skipped = make_variants(work)
    others, compared = comparison_variants(work, args.compare_artifact, device, [v.name for v in variants])
    setup_s = time.perf_counter() - t0
    timed = [*variants, *others]
    names = [v.name for v in timed]
    reference = variants[0]
    rng = np.random.default_rng(args.seed)
    lengths = np.diff(work.histories.indptr)[work.users]
    log(f"model: {model_description(work.model)} weights={work.weights}")
    for c in compared:
        log(f"compared: {c['variant']} = {c['model']} from {c['artifact']} ({c['weights']})")
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
    if "skipped" in dense_check:
        log(f"sparse vs dense: skipped ({dense_check['skipped']})")
    else:
        log(
            f"sparse vs dense fp32 scores on {dense_check['batch']} users: max abs diff "
            f"{dense_check['max_abs_diff']:.3g} (max |score| {dense_check['max_abs_score']:.4g})"
        )

    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        if batch > len(work.users):
            log(f"batch {batch}: skipped (only {len(work.users)} users with a history)")
            continue
        pool = request_pool(work, batch, n_batches=max(2, min(16, 4096 // batch)), rng=rng)
        rows += [m.summary() for m in measure_batch_size(timed, pool, batch, plan, device)]
        done = {r["variant"]: r for r in rows if r["batch"] == batch}
        log(f"batch {batch:>3}: " + "  ".join(f"{n} {done[n]['users_per_s']:.0f} u/s" for n in names))
    print_table(rows, names, log)

    eval_users = rng.permutation(work.users)[:eval_n]
    precision = compare_precisions(variants, work, eval_users, device)
    log(f"\ntop-{TOP_K} vs {reference.name} over {len(eval_users)} users ({work.weights} weights):")
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

    by_variant = {(r["variant"], r["batch"]): r for r in rows}
    service_rows = {b: r for (v, b), r in by_variant.items() if v == reference.name}
    headline: dict[str, Any] = {"model": work.model.name}
    headline |= {f"users_per_s_batch{b}": r["users_per_s"] for b, r in service_rows.items()}
    for b in (1, 32):
        if b in service_rows:
            headline[f"latency_ms_batch{b}_p50"] = service_rows[b]["median_ms"]
            headline[f"latency_ms_batch{b}_p99"] = service_rows[b]["p99_ms"]
    headline |= {f"top20_overlap_{n}": p["top20_overlap_vs_fp32"] for n, p in precision.items()}
    for other in others:  # serving cost of the compared models, measured on the same requests
        for b, r in service_rows.items():
            if (other.name, b) in by_variant:
                their = by_variant[other.name, b]["users_per_s"]
                headline[f"{other.name}_users_per_s_batch{b}"] = their
                headline[f"{other.name}_vs_{reference.name}_batch{b}"] = round(their / r["users_per_s"], 3)
    headline |= {
        "variant": reference.name,
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
        "workload": workload_record(work, lengths),
        "timing": {
            "warmup": plan.warmup,
            "budget_s_per_config": plan.budget_s,
            "rounds": plan.rounds,
            "min_repeats": plan.min_repeats,
            "throughput": "batch / median latency",
        },
        "int8": {
            "what": INT8_NOTE if ld4mrec_net(work.model) is not None else "model.with_precision('int8')",
            "quantised_layers": next(
                (quantised_layers(v.module) for v in variants if v.precision == "int8" and v.module), []
            ),
        },
        "bf16": "copy of the LD4MRec network cast to bfloat16 (all weights and buffers), states cast to "
        "bfloat16"
        if any(v.precision == "bf16" for v in variants)
        else None,
        "skipped": skipped,
        "sparse_vs_dense": dense_check,
        "compared": compared,
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
