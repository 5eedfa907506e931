"""Smoke test of bench/model_forward.py: one short run on the tiny artifact; checks the output contract
(last stdout line is a JSON object with the headline keys; the JSON file has every configuration).
Speed is not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "model_forward.py"


def test_quick_run_on_tiny_artifact_writes_headline_and_json(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "model_forward.json"
    args = [
        "--quick",
        "--artifact",
        str(tiny_artifact),
        "--batch-sizes",
        "1,32",
        "--budget-s",
        "0.02",
        "--eval-users",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["users_per_s_batch1"] > 0
    assert headline["users_per_s_batch32"] > 0
    assert headline["weights"].startswith("trained")

    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["headline"] == headline
    assert {(r["variant"], r["batch"]) for r in payload["results"]} == {
        (v, b) for v in ("sparse_fp32", "dense_fp32", "sparse_bf16", "sparse_int8") for b in (1, 32)
    }
    assert all(r["median_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in payload["results"])
    assert payload["sparse_vs_dense"]["max_abs_diff"] < 1e-4
    assert payload["precision_vs_fp32"]["dense_fp32"]["top20_overlap_vs_fp32"] >= 0.99
    assert 0.0 < payload["precision_vs_fp32"]["sparse_int8"]["top20_overlap_vs_fp32"] <= 1.0
    for key in ("cpu_model", "cpus_usable", "memory_gib", "torch", "torch_threads"):
        assert key in payload["machine"]
    assert payload["machine"]["torch_threads"] == 1
    assert payload["command"].startswith("python ")
