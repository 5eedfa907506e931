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


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


QUICK = ["--quick", "--batch-sizes", "1,8", "--budget-s", "0.02", "--eval-users", "32", "--threads", "1"]


def test_another_model_is_measured_on_its_own_score(
    tiny_ease_artifact: Path, tiny_artifact: Path, tmp_path: Path
) -> None:
    """EASE: its score path (the first-layer comparison skipped, with a note) and, side by side on the
    same requests, LD4MRec's service path from another artifact of the same data."""
    out = tmp_path / "ease.json"
    args = [*QUICK, "--artifact", str(tiny_ease_artifact), "--compare-artifact", str(tiny_artifact)]
    proc = _run([*args, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline["model"] == "ease" and headline["variant"] == "score_fp32"
    assert headline["users_per_s_batch1"] > 0 and headline["ld4mrec_fp32_users_per_s_batch8"] > 0
    assert headline["ld4mrec_fp32_vs_score_fp32_batch1"] > 0

    payload = json.loads(out.read_text(encoding="utf-8"))
    assert {(r["variant"], r["batch"]) for r in payload["results"]} == {
        (v, b) for v in ("score_fp32", "ld4mrec_fp32") for b in (1, 8)
    }
    assert "skipped" in payload["sparse_vs_dense"] and "LD4MRec" in payload["sparse_vs_dense"]["skipped"]
    assert payload["workload"]["model"] == "ease" and "hidden_dim" not in payload["workload"]
    assert payload["precision_vs_fp32"]["users"] == 32  # EASE serves fp32 only: nothing to compare
    (compared,) = payload["compared"]
    assert compared["model"] == "ld4mrec" and compared["model_config"]["hidden_dim"] == 64
    assert "sparse vs dense: skipped" in proc.stdout


def test_compare_artifact_of_other_data_is_refused(
    tiny_artifact: Path, other_data_popularity_artifact: Path, tmp_path: Path
) -> None:
    args = [
        *QUICK,
        "--artifact",
        str(tiny_artifact),
        "--compare-artifact",
        str(other_data_popularity_artifact),
    ]
    proc = _run([*args, "--out", str(tmp_path / "x.json")])
    assert proc.returncode != 0 and "same users and training histories" in proc.stderr
    assert not (tmp_path / "x.json").exists()
