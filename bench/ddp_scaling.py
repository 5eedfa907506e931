"""Seconds per epoch of LD4MRec on 1 and 2 processes (torchrun, gloo), side by side, and what limits the
speed-up: the gradient all-reduce of every step, measured alone on the same processes' transport.

Runs, interleaved in rounds so that background load hits every configuration alike:

* ``1x1``: ``python -m training ... --threads 1`` (one process, one thread);
* ``2x1``: ``torchrun --standalone --nproc_per_node=2 -m training ... --threads 1`` (DDP, gloo);
* ``1x2``: ``python -m training ... --threads 2`` (one process, two intra-op threads: the other way to
  use two cores).

Each run trains ``--epochs`` epochs with evaluation only after the last one; seconds per epoch are the
median of the per-epoch times of ``training_log.json`` (epoch 1 excluded: warm-up). Then two gloo ranks
all-reduce a float32 buffer of the model's gradient size (median of ``--allreduce-repeats``) to measure
the communication per step. The model of the step time is ``t(W) = t_compute(1) / W + t_allreduce(W)``;
with the measured figures it projects epochs on more processes (same transport) and, from an assumed
throughput and bus bandwidth (stated in the output), on GPUs with NCCL. The trainer runs from this
checkout (``PYTHONPATH`` is set to it for the runs).

    python bench/ddp_scaling.py            # lastfm2k -> bench/results/ddp_scaling_lastfm2k.json
    python bench/ddp_scaling.py --quick    # 2 rounds of 3 epochs

The last line of stdout is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _machine import display_path, loadavg, machine_info, write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/work/shared/datasets/lastfm2k")
CONFIGS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}  # name -> (processes, threads per process)
# Assumptions of the GPU projection (not measured here): effective fp32/TF32 matmul throughput for these
# shapes and NCCL ring bus bandwidth.
GPU_ASSUMED = {
    "pcie4": {"tflop_s": 50.0, "bus_gb_s": 20.0},
    "nvlink_h100": {"tflop_s": 50.0, "bus_gb_s": 300.0},
}


def _command(config: str, data: Path, out: Path, epochs: int, extra: list[str]) -> list[str]:
    processes, threads = CONFIGS[config]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    return [
        *launcher,
        "-m",
        "training",
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--threads",
        str(threads),
        "--epochs",
        str(epochs),
        "--eval-every",
        str(epochs),
        *extra,
    ]


def run_training(config: str, data: Path, workdir: Path, epochs: int, extra: list[str]) -> dict[str, Any]:
    """One training run; per-epoch seconds from its training log, sizes from its manifest."""
    out = workdir / f"art-{config}"
    command = _command(config, data, out, epochs, extra)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    log = json.loads((out / "training_log.json").read_text())
    seconds = [row["seconds"] for row in log[1:]] or [log[0]["seconds"]]
    return {
        "config": config,
        "seconds_per_epoch": statistics.median(seconds),
        "epoch_seconds": [round(s, 4) for s in seconds],
        "wall_s": round(wall, 2),
        "n_items": manifest["n_items"],
        "world_size": manifest["training"]["world_size"],
        "backend": manifest["training"]["backend"],
        "loadavg_after": loadavg(),
        "manifest": manifest,
    }


def trainable_floats(manifest: dict[str, Any]) -> int:
    """Floats of LD4MRec's trainable parameters (what DDP all-reduces each step): C-Net (without the fixed
    signal standardisation) and z_in."""
    total = 0
    for name, entry in manifest["files"].items():
        if name.startswith("model.cnet.") and "signal_" not in name or name == "model.z_in.npy":
            total += math.prod(entry["shape"])
    return total


def _allreduce_worker(rank: int, world: int, port: int, floats: int, repeats: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    buffer = torch.ones(floats)
    times = []
    for _ in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps(times[1:]))
    dist.destroy_process_group()


def measure_allreduce(floats: int, repeats: int, world: int = 2) -> list[float]:
    """Seconds of each gloo all-reduce of ``floats`` float32 among ``world`` local processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        mp.start_processes(
            _allreduce_worker,
            args=(world, port, floats, repeats, str(out)),
            nprocs=world,
            start_method="spawn",
        )
        return list(json.loads(out.read_text()))


def step_flops(global_batch: int, floats: int) -> float:
    """FLOPs of one training step: every dense parameter is one multiply-add per user forward (2 FLOPs)
    and two backward (4 FLOPs): 6 x B x P (LD4MRec's noisy input is dense, so item_in counts in full)."""
    return 6.0 * global_batch * floats


def project(
    global_batch: int, floats: int, steps: int, flop_s: float, bus_bytes_s: float, world: int
) -> float:
    """Seconds per epoch at ``world`` ranks: each computes B / W users of every step at ``flop_s``, then
    a ring all-reduce moves 2 (W - 1) / W x the gradient (4 P bytes) at ``bus_bytes_s``. The ratio of the
    two terms, 0.75 B / (W - 1) FLOPs per byte, does not depend on the model's size: a catalogue 10x larger
    makes both 10x larger."""
    compute = step_flops(global_batch, floats) / world / flop_s
    allreduce = 2 * (world - 1) / world * 4 * floats / bus_bytes_s
    return steps * (compute + allreduce)


def _ratio(per_epoch: dict[str, float], base: str, other: str) -> float | None:
    return round(per_epoch[base] / per_epoch[other], 3) if {base, other} <= set(per_epoch) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three configurations")
    parser.add_argument("--configs", default="1x1,2x1,1x2", help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--allreduce-repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 epochs, 5 all-reduces")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("train_args", nargs="*", help="extra ld4mrec-train options after --")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds, args.allreduce_repeats = 3, 2, 5
    configs = [c for c in args.configs.split(",") if c]
    out_path = args.out or REPO / "bench" / "results" / f"ddp_scaling_{args.data.name}.json"
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    info = machine_info(torch.device("cpu"))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for config in order:
                result = run_training(config, args.data, Path(tmp), args.epochs, args.train_args)
                runs[config].append(result)
                print(
                    f"round {round_index + 1} {config}: {result['seconds_per_epoch']:.3f} s/epoch "
                    f"(world_size {result['world_size']}, load {result['loadavg_after']})",
                    flush=True,
                )
    manifest = runs[configs[0]][0]["manifest"]
    for results in runs.values():
        for r in results:
            r.pop("manifest")
    per_epoch = {c: statistics.median(r["seconds_per_epoch"] for r in rs) for c, rs in runs.items()}
    floats = trainable_floats(manifest)
    gradient_bytes = 4 * floats
    config = manifest["model"]["config"]
    users = manifest["n_users"]
    steps = math.ceil(users / config["batch_size"])  # upper bound: users with a training history
    allreduce_s = statistics.median(measure_allreduce(floats, args.allreduce_repeats))
    bus_bytes_s = gradient_bytes / allreduce_s  # the ring factor 2 (W - 1) / W is 1 at W = 2
    batch = int(config["batch_size"])
    cpu_flop_s = step_flops(batch, floats) * steps / per_epoch["1x1"] if "1x1" in per_epoch else 0.0
    worlds = (2, 4, 8, 16)
    projections: dict[str, dict[int, float]] = {}
    if cpu_flop_s:
        projections["cpu_cores_gloo_measured"] = {
            w: round(project(batch, floats, steps, cpu_flop_s, bus_bytes_s, w), 4) for w in (1, *worlds)
        }
    for name, gpu in GPU_ASSUMED.items():
        flop_s, bus = gpu["tflop_s"] * 1e12, gpu["bus_gb_s"] * 1e9
        projections[f"gpu_{name}_assumed"] = {
            w: round(project(batch, floats, steps, flop_s, bus, w), 5) for w in (1, *worlds)
        }
    summary: dict[str, Any] = {
        "seconds_per_epoch": {c: round(v, 4) for c, v in per_epoch.items()},
        "speedup_2x1_vs_1x1": _ratio(per_epoch, "1x1", "2x1"),
        "speedup_1x2_vs_1x1": _ratio(per_epoch, "1x1", "1x2"),
        "trainable_floats": floats,
        "allreduce_bytes_per_step": gradient_bytes,
        "steps_per_epoch": steps,
        "allreduce_s_median_2_ranks": round(allreduce_s, 4),
        "allreduce_share_of_2x1_epoch": round(steps * allreduce_s / per_epoch["2x1"], 3)
        if "2x1" in per_epoch
        else None,
        "allreduce_gb_s": round(bus_bytes_s / 1e9, 3),
        "cpu_gflop_s_1x1": round(cpu_flop_s / 1e9, 2),
        "model_2x1_s_per_epoch": round(project(batch, floats, steps, cpu_flop_s, bus_bytes_s, 2), 4)
        if cpu_flop_s
        else None,
        "projection_s_per_epoch": projections,
        "gpu_assumed": GPU_ASSUMED,
    }
    payload = {
        "bench": "ddp_scaling",
        "command": shlex.join(
            [sys.executable, "bench/ddp_scaling.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data),
        "epochs_per_run": args.epochs,
        "machine": info,
        "loadavg_at_end": loadavg(),
        "summary": summary,
        "runs": runs,
    }
    write_json(payload, out_path)
    print(f"results written to {display_path(out_path)}")
    headline = [k for k in summary if k not in ("projection_s_per_epoch", "gpu_assumed")]
    print(json.dumps({"bench": "ddp_scaling", **{k: summary[k] for k in headline}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
