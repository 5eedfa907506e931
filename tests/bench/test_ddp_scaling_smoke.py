"""Smoke test of bench/ddp_scaling.py on the tiny synthetic data: one round of one process and of two
torchrun processes, the all-reduce measurement and the projections; the output contract only (speed is
not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import TINY_LD4MREC

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "ddp_scaling.py"


def test_one_round_of_one_and_two_processes(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.json"
    tiny = [part for k, v in TINY_LD4MREC.items() for part in (f"--{k.replace('_', '-')}", str(v))]
    args = ["--data", str(synthetic_dir), "--configs", "1x1,2x1", "--epochs", "2", "--rounds", "1"]
    args += ["--allreduce-repeats", "2", "--out", str(out), "--", *tiny]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(headline["seconds_per_epoch"]) == {"1x1", "2x1"}
    assert headline["speedup_2x1_vs_1x1"] > 0
    payload = json.loads(out.read_text())
    assert [r["world_size"] for r in payload["runs"]["2x1"]] == [2]
    assert [r["backend"] for r in payload["runs"]["2x1"]] == ["gloo"]
    summary = payload["summary"]
    hidden, items = TINY_LD4MREC["hidden_dim"], payload["runs"]["1x1"][0]["n_items"]
    assert summary["trainable_floats"] > 2 * hidden * items  # item_in and FC_out at least
    assert summary["allreduce_bytes_per_step"] == 4 * summary["trainable_floats"]
    assert summary["allreduce_s_median_2_ranks"] > 0
    projection = summary["projection_s_per_epoch"]["cpu_cores_gloo_measured"]
    assert projection["1"] > 0 and set(projection) == {"1", "2", "4", "8", "16"}
